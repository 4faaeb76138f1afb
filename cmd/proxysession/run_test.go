package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/proxysession/proxysession/internal/redistest"
	"github.com/proxysession/proxysession/processor/envoytest"
	"github.com/proxysession/proxysession/processor/extproctest"
)

func TestRunHelpAndUsageErrors(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"-help"}, &stdout, &stderr, hooks{}); err != nil {
		t.Fatalf("-help: %v", err)
	}
	for _, want := range []string{"-grpc-addr", "PROXYSESSION_GRPC_ADDR", "-tls-client-ca", "-shutdown-grace", "-pass-through-cookies"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("help lacks %q", want)
		}
	}
	err := run(context.Background(), []string{"-idle-timeout", "x", "-max-sessions", "y"}, &stdout, &stderr, hooks{})
	if _, ok := errors.AsType[*usageError](err); !ok || !strings.Contains(err.Error(), "invalid configuration:\n  ") {
		t.Errorf("err = %v, want a usage error listing both problems", err)
	}
}

// instance is a running proxysession started through run.
type instance struct {
	grpcAddr, adminAddr string
	draining            chan struct{}
	done                chan error
	cancel              context.CancelFunc
	logs                *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t *testing.T, args ...string) *instance {
	t.Helper()
	ready := make(chan [2]string, 1)
	inst := &instance{draining: make(chan struct{}), done: make(chan error, 1), logs: &syncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	h := hooks{
		listening: func(g, a net.Addr) {
			ready <- [2]string{g.Network() + "://" + g.String(), a.String()}
		},
		draining: func() { close(inst.draining) },
	}
	inst.cancel = cancel
	args = append([]string{"-admin-addr", "127.0.0.1:0", "-log-level", "debug"}, args...)
	if !strings.Contains(strings.Join(args, " "), "-grpc-addr") {
		args = append(args, "-grpc-addr", "127.0.0.1:0")
	}
	go func() { inst.done <- run(ctx, args, io.Discard, inst.logs, h) }()
	select {
	case addrs := <-ready:
		inst.grpcAddr, inst.adminAddr = strings.TrimPrefix(addrs[0], "tcp://"), addrs[1]
	case err := <-inst.done:
		t.Fatalf("run: %v\n%s", err, inst.logs)
	}
	t.Cleanup(func() {
		cancel()
		<-inst.done
		if t.Failed() {
			t.Logf("proxysession logs:\n%s", inst.logs)
		}
	})
	return inst
}

// stop sends the equivalent of SIGTERM and returns run's result.
func (i *instance) stop() error {
	i.cancel()
	err := <-i.done
	i.done <- err // for the cleanup
	return err
}

func dial(t *testing.T, target string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func loginBackend() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/login" {
			w.Header().Add("Set-Cookie", "sid=42; Path=/; HttpOnly")
			return
		}
		io.WriteString(w, r.Header.Get("Cookie"))
	})
}

// browse logs in through the instance and returns what the backend then
// sees, or an error.
func browse(conn *grpc.ClientConn) (string, error) {
	f := &envoytest.Filter{Client: extprocv3.NewExternalProcessorClient(conn), Backend: loginBackend(), MessageTimeout: 5 * time.Second}
	browser := envoytest.NewBrowser(f)
	resp, err := browser.Get("https://app.test/login")
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", errors.New(resp.Status + " " + resp.Header.Get("x-envoy-response-code-details"))
	}
	resp, err = browser.Get("https://app.test/page")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func httpGet(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServeEndToEnd(t *testing.T) {
	inst := start(t)
	conn := dial(t, inst.grpcAddr, nil)
	if got, err := browse(conn); err != nil || got != "sid=42" {
		t.Fatalf("backend saw %q, %v", got, err)
	}
	health := healthpb.NewHealthClient(conn)
	for _, service := range []string{"", "envoy.service.ext_proc.v3.ExternalProcessor"} {
		resp, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: service})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health of %q = %v, %v", service, resp, err)
		}
	}
	if code, body := httpGet(t, "http://"+inst.adminAddr+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, _ := httpGet(t, "http://"+inst.adminAddr+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d", code)
	}
	_, metrics := httpGet(t, "http://"+inst.adminAddr+"/metrics")
	for _, want := range []string{
		"proxysession_sessions_created_total 1",
		"proxysession_sessions_active 1",
		`proxysession_messages_total{outcome="modified",phase="request_headers"} 1`,
		`proxysession_messages_total{outcome="modified",phase="response_headers"} 1`,
		`proxysession_cookies_captured_total 1`,
		`proxysession_cookies_rejected_total{reason="public_suffix"} 0`,
		`proxysession_sessions_ended_total{reason="idle"} 0`,
		`proxysession_processing_seconds_count{phase="request_headers"} 2`,
		"proxysession_session_conflicts_total 0",
		"proxysession_store_refused_cookies_total 0",
		"proxysession_store_bytes ",
		"go_goroutines",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(inst.logs.String(), "sid=42") {
		t.Error("a cookie value reached the logs")
	}
	if err := run(context.Background(), []string{"healthcheck", "-admin-addr", inst.adminAddr}, io.Discard, io.Discard, hooks{}); err != nil {
		t.Errorf("healthcheck of a ready instance: %v", err)
	}
	if err := inst.stop(); err != nil {
		t.Errorf("run returned %v after shutdown", err)
	}
	if err := run(context.Background(), []string{"healthcheck", "-admin-addr", inst.adminAddr}, io.Discard, io.Discard, hooks{}); err == nil {
		t.Error("healthcheck of a stopped instance succeeded")
	}
}

func TestUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ps.sock")
	// A socket file left by a process that died is replaced.
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	inst := start(t, "-grpc-addr", "unix://"+sock)
	if inst.grpcAddr != "unix://"+sock {
		t.Fatalf("listening on %s", inst.grpcAddr)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, %v", fi.Mode(), err)
	}
	if got, err := browse(dial(t, "unix://"+sock, nil)); err != nil || got != "sid=42" {
		t.Fatalf("backend saw %q, %v", got, err)
	}
}

// TestGracefulShutdown: on SIGTERM the instance reports not ready at
// once, lets the stream in flight finish, then exits cleanly.
func TestGracefulShutdown(t *testing.T) {
	inst := start(t, "-shutdown-grace", "10s")
	conn := dial(t, inst.grpcAddr, nil)
	stream, err := extprocv3.NewExternalProcessorClient(conn).Process(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	extproctest.Send(t, stream, envoytest.RequestHeaders(":authority", "app.test", ":path", "/", ":scheme", "https", ":method", "GET"))

	inst.cancel()
	<-inst.draining
	if code, body := httpGet(t, "http://"+inst.adminAddr+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
		t.Errorf("/readyz while draining = %d %q", code, body)
	}
	select {
	case err := <-inst.done:
		t.Fatalf("run returned (%v) with a stream in flight", err)
	default:
	}
	resp := extproctest.Send(t, stream, envoytest.ResponseHeaders(":status", "200", "set-cookie", "sid=1"))
	if set := resp.GetResponseHeaders().GetResponse().GetHeaderMutation().GetSetHeaders(); len(set) == 0 ||
		!strings.HasPrefix(string(set[0].GetHeader().GetRawValue()), "__Host-proxysession=") {
		t.Errorf("in-flight stream not served: %v", resp)
	}
	stream.CloseSend()
	if _, err := stream.Recv(); err != io.EOF {
		t.Errorf("stream end: %v", err)
	}
	select {
	case err := <-inst.done:
		inst.done <- err
		if err != nil {
			t.Errorf("run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after the last stream ended")
	}
}

func TestTLSAndMTLS(t *testing.T) {
	pki := newTestPKI(t)
	t.Run("tls", func(t *testing.T) {
		inst := start(t, "-tls-cert", pki.serverCert, "-tls-key", pki.serverKey)
		if got, err := browse(dial(t, inst.grpcAddr, credentials.NewTLS(pki.clientConfig(false)))); err != nil || got != "sid=42" {
			t.Errorf("over TLS: %q, %v", got, err)
		}
		if _, err := browse(dial(t, inst.grpcAddr, nil)); err == nil {
			t.Error("plaintext client served by a TLS server")
		}
	})
	t.Run("mtls", func(t *testing.T) {
		inst := start(t, "-tls-cert", pki.serverCert, "-tls-key", pki.serverKey, "-tls-client-ca", pki.caCert)
		if got, err := browse(dial(t, inst.grpcAddr, credentials.NewTLS(pki.clientConfig(true)))); err != nil || got != "sid=42" {
			t.Errorf("with a client certificate: %q, %v", got, err)
		}
		if _, err := browse(dial(t, inst.grpcAddr, credentials.NewTLS(pki.clientConfig(false)))); err == nil {
			t.Error("client without a certificate was served")
		}
	})
	t.Run("bad files fail at start", func(t *testing.T) {
		err := run(context.Background(), []string{"-tls-cert", pki.caCert, "-tls-key", pki.serverKey, "-grpc-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0"}, io.Discard, io.Discard, hooks{})
		if err == nil || !strings.Contains(err.Error(), "tls") {
			t.Errorf("run = %v", err)
		}
	})
}

func TestCertificateReload(t *testing.T) {
	pki := newTestPKI(t)
	r, err := newCertReloader(pki.serverCert, pki.serverKey, "", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	r.interval = 0
	first := r.current().Certificates[0].Leaf.SerialNumber
	if got := r.current().Certificates[0].Leaf.SerialNumber; got.Cmp(first) != 0 {
		t.Fatal("unchanged files reloaded a different certificate")
	}
	pki.issueServer(t) // new files, new serial
	if got := r.current().Certificates[0].Leaf.SerialNumber; got.Cmp(first) == 0 {
		t.Error("changed certificate not reloaded")
	}
	if err := os.WriteFile(pki.serverCert, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r.current() == nil || r.current().Certificates[0].Leaf == nil {
		t.Error("a broken file replaced the working certificate")
	}
}

// testPKI is a CA with a server certificate for 127.0.0.1 and a client
// certificate, written as PEM files.
type testPKI struct {
	dir                           string
	ca                            *x509.Certificate
	caKey                         *ecdsa.PrivateKey
	caCert, serverCert, serverKey string
	clientCert                    tls.Certificate
	roots                         *x509.CertPool
	serial                        int64
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir()}
	p.caKey = mustKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &p.caKey.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	p.ca, _ = x509.ParseCertificate(der)
	p.roots = x509.NewCertPool()
	p.roots.AddCert(p.ca)
	p.caCert = p.write(t, "ca.pem", "CERTIFICATE", der)
	p.issueServer(t)
	key := mustKey(t)
	der = p.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "envoy"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, key)
	p.clientCert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	return p
}

func (p *testPKI) issueServer(t *testing.T) {
	key := mustKey(t)
	der := p.issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "proxysession"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, key)
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p.serverCert = p.write(t, "server.pem", "CERTIFICATE", der)
	p.serverKey = p.write(t, "server-key.pem", "EC PRIVATE KEY", keyDER)
}

func (p *testPKI) issue(t *testing.T, tmpl *x509.Certificate, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	p.serial++
	tmpl.SerialNumber = big.NewInt(100 + p.serial)
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func (p *testPKI) write(t *testing.T, name, kind string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (p *testPKI) clientConfig(withCert bool) *tls.Config {
	c := &tls.Config{RootCAs: p.roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if withCert {
		c.Certificates = []tls.Certificate{p.clientCert}
	}
	return c
}

func mustKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// TestRedisStore runs two instances on one real Redis: a browser whose
// requests alternate between them keeps its session, and an instance
// whose Redis password is wrong starts, reports not ready, and answers
// requests that need the store with 503.
func TestRedisStore(t *testing.T) {
	srv := redistest.Start(t, "--requirepass", "s3cret")
	t.Setenv("PROXYSESSION_REDIS_PASSWORD", "s3cret")
	a := start(t, "-store", "redis", "-redis-addr", srv.Addr)
	b := start(t, "-store", "redis", "-redis-addr", srv.Addr)
	f := &envoytest.Filter{Backend: loginBackend(), MessageTimeout: 5 * time.Second}
	clients := []extprocv3.ExternalProcessorClient{
		extprocv3.NewExternalProcessorClient(dial(t, a.grpcAddr, nil)),
		extprocv3.NewExternalProcessorClient(dial(t, b.grpcAddr, nil)),
	}
	browser := envoytest.NewBrowser(f)
	for i, path := range []string{"/login", "/page", "/page", "/page"} {
		f.Client = clients[i%2] // Envoy spreads streams over the replicas
		resp, err := browser.Get("https://app.test" + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if path == "/page" && string(body) != "sid=42" {
			t.Errorf("request %d through replica %d: backend saw %q", i, i%2, body)
		}
	}
	if code, _ := httpGet(t, "http://"+a.adminAddr+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d", code)
	}
	if _, metrics := httpGet(t, "http://"+b.adminAddr+"/metrics"); !strings.Contains(metrics, "proxysession_store_failures_total 0") {
		t.Error("/metrics lacks the store's counters")
	}

	// Redis dies: requests of the session get 503 with Retry-After, the
	// instance is not ready; Redis comes back: all is as before.
	srv.Kill()
	resp, err := browser.Get("https://app.test/page")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("while Redis is down: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if code, _ := httpGet(t, "http://"+a.adminAddr+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz while Redis is down = %d", code)
	}
	srv.Restart()
	if code, body := httpGet(t, "http://"+a.adminAddr+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after Redis came back = %d %q", code, body)
	}
	// Service resumes by itself. On a loaded machine the first operation
	// of the other replica's pool can still exceed the 100ms store
	// timeout (a 503, fail closed), so allow a few tries.
	var body []byte
	for try := 0; try < 20; try++ {
		resp, err = browser.Get("https://app.test/page")
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) == "sid=42" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if string(body) != "sid=42" {
		t.Errorf("after Redis came back the backend saw %q", body)
	}

	t.Setenv("PROXYSESSION_REDIS_PASSWORD", "wrong")
	bad := start(t, "-store", "redis", "-redis-addr", srv.Addr)
	if code, body := httpGet(t, "http://"+bad.adminAddr+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "WRONGPASS") {
		t.Errorf("/readyz with a wrong password = %d %q", code, body)
	}
	if !strings.Contains(bad.logs.String(), "WRONGPASS") {
		t.Error("the wrong password is not logged clearly")
	}
	f.Client = extprocv3.NewExternalProcessorClient(dial(t, bad.grpcAddr, nil))
	resp, err = browser.Get("https://app.test/page")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("request through the instance without its store: %d", resp.StatusCode)
	}
}
