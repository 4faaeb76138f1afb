package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// certReloader serves the certificate (and client CA) from files, and
// loads them again when they change: cert-manager and Kubernetes secret
// volumes replace the files in place. Changes are looked for at most once
// per interval, on a handshake; a failed reload keeps the previous files'
// contents and is logged.
type certReloader struct {
	certFile, keyFile, caFile string
	interval                  time.Duration
	log                       *slog.Logger
	// flags names the files' flags in errors; nextProtos is the ALPN
	// list (gRPC: h2 only).
	flags      string
	nextProtos []string

	mu      sync.Mutex
	checked time.Time
	stamps  []fileStamp
	config  *tls.Config
}

// fileStamp identifies a version of a file.
type fileStamp struct {
	mod  time.Time
	size int64
}

func newCertReloader(certFile, keyFile, caFile string, log *slog.Logger) (*certReloader, error) {
	return newCertReloaderFor("-tls-cert/-tls-key", []string{"h2"}, certFile, keyFile, caFile, log)
}

// newCertReloaderFor is newCertReloader for the files of flags, served
// with the ALPN protocols nextProtos.
func newCertReloaderFor(flags string, nextProtos []string, certFile, keyFile, caFile string, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, caFile: caFile, interval: time.Second, log: log, flags: flags, nextProtos: nextProtos}
	stamps, err := r.stat()
	if err != nil {
		return nil, err
	}
	config, err := r.load()
	if err != nil {
		return nil, err
	}
	r.stamps, r.config, r.checked = stamps, config, time.Now()
	return r, nil
}

func (r *certReloader) files() []string {
	if r.caFile == "" {
		return []string{r.certFile, r.keyFile}
	}
	return []string{r.certFile, r.keyFile, r.caFile}
}

func (r *certReloader) stat() ([]fileStamp, error) {
	var stamps []fileStamp
	for _, f := range r.files() {
		fi, err := os.Stat(f)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		stamps = append(stamps, fileStamp{fi.ModTime(), fi.Size()})
	}
	return stamps, nil
}

// load reads the files into a server TLS configuration.
func (r *certReloader) load() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: loading %s: %w", r.flags, err)
	}
	config := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   r.nextProtos, // gRPC needs HTTP/2 by ALPN
	}
	if r.caFile != "" {
		pool, err := loadCertPool(r.caFile)
		if err != nil {
			return nil, fmt.Errorf("tls: -tls-client-ca: %w", err)
		}
		config.ClientCAs = pool
		config.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return config, nil
}

// serverConfig is the tls.Config to give the server: each handshake gets
// the current files' configuration.
func (r *certReloader) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: r.nextProtos,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return r.current(), nil
		},
	}
}

func (r *certReloader) current() *tls.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) < r.interval {
		return r.config
	}
	r.checked = time.Now()
	stamps, err := r.stat()
	if err != nil {
		r.log.Error("checking TLS files failed; keeping the loaded certificate", slog.String("error", err.Error()))
		return r.config
	}
	if equalStamps(stamps, r.stamps) {
		return r.config
	}
	config, err := r.load()
	if err != nil {
		r.log.Error("reloading TLS files failed; keeping the loaded certificate", slog.String("error", err.Error()))
		return r.config
	}
	r.stamps, r.config = stamps, config
	r.log.Info("reloaded TLS certificate", slog.String("cert", r.certFile))
	return config
}

func equalStamps(a, b []fileStamp) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].mod.Equal(b[i].mod) || a[i].size != b[i].size {
			return false
		}
	}
	return true
}

// loadCertPool reads a PEM CA bundle.
func loadCertPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("no PEM certificate in the file")
	}
	return pool, nil
}
