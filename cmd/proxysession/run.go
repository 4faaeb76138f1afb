package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/proxysession/proxysession/internal/config"
	"github.com/proxysession/proxysession/processor"
	"github.com/proxysession/proxysession/sessions"
)

// usageError is a configuration problem; the process exits with status 2.
type usageError struct{ err error }

func (e *usageError) Error() string {
	msg := e.err.Error()
	if strings.Contains(msg, "\n") {
		return "invalid configuration:\n  " + strings.ReplaceAll(msg, "\n", "\n  ")
	}
	return "invalid configuration: " + msg
}

func (e *usageError) Unwrap() error { return e.err }

// Test hooks, carried in the context: told the bound addresses, and told
// when draining starts.
type (
	listenHookKey struct{}
	drainHookKey  struct{}
)

// run is the whole program: it parses args (and PROXYSESSION_*
// variables), serves until ctx is done, then shuts down gracefully.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	healthcheck := len(args) > 0 && args[0] == "healthcheck"
	if healthcheck {
		args = args[1:]
	}
	var usage bytes.Buffer
	cfg, err := config.Parse(args, os.LookupEnv, &usage)
	switch {
	case errors.Is(err, flag.ErrHelp):
		_, err := stdout.Write(usage.Bytes())
		return err
	case err != nil:
		stderr.Write(usage.Bytes())
		return &usageError{err}
	}
	if healthcheck {
		return probe(ctx, cfg.AdminAddr)
	}
	return serve(ctx, cfg, stderr)
}

// probe is `proxysession healthcheck`: it asks the admin listener of a
// running instance (same flags and environment) whether it is ready. The
// container image has no shell or curl, so its HEALTHCHECK runs this.
func probe(ctx context.Context, adminAddr string) error {
	host, port, err := net.SplitHostPort(adminAddr)
	if err != nil {
		return fmt.Errorf("healthcheck: -admin-addr %q: %w", adminAddr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/readyz", nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("healthcheck: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func serve(ctx context.Context, cfg *config.Config, logOut io.Writer) error {
	log := newLogger(cfg, logOut)
	cfg.Sessions.Logger = log
	store, closeStore, err := newStore(ctx, cfg, log)
	if err != nil {
		return &usageError{err}
	}
	defer closeStore()
	if store != nil {
		cfg.Sessions.Store = store
	}
	cache, err := sessions.New(cfg.Sessions)
	if err != nil {
		return &usageError{err}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), newSessionsCollector(cache))
	metrics := processor.NewMetrics()
	if err := metrics.Register(reg); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}

	// Envoy may send HTTP/2 keepalive pings (connection_keepalive); grpc-go
	// would answer pings more often than every 5 minutes with GOAWAY.
	opts := []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.ForceServerCodecV2(processor.Codec()),
	}
	if cfg.TLSCert != "" {
		certs, err := newCertReloader(cfg.TLSCert, cfg.TLSKey, cfg.TLSClientCA, log)
		if err != nil {
			return &usageError{err}
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(certs.serverConfig())))
	}
	grpcServer := grpc.NewServer(opts...)
	extprocv3.RegisterExternalProcessorServer(grpcServer, processor.New(cache, processor.Options{
		Logger: log, Metrics: metrics,
	}))
	healthServer := health.NewServer()
	healthpb.RegisterHealthServer(grpcServer, healthServer)
	healthServer.SetServingStatus(processor.ServiceName, healthpb.HealthCheckResponse_SERVING)

	grpcListener, err := listen(cfg.GRPCAddr)
	if err != nil {
		return err
	}
	adminListener, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		grpcListener.Close()
		return fmt.Errorf("admin listener: %w", err)
	}
	var draining atomic.Bool
	admin := &http.Server{Handler: adminHandler(cache, reg, &draining), ReadHeaderTimeout: 5 * time.Second}
	if hook, ok := ctx.Value(listenHookKey{}).(func(grpcAddr, adminAddr net.Addr)); ok {
		hook(grpcListener.Addr(), adminListener.Addr())
	}

	errs := make(chan error, 2)
	go func() {
		if err := grpcServer.Serve(grpcListener); err != nil {
			errs <- fmt.Errorf("gRPC server: %w", err)
		}
	}()
	go func() {
		if err := admin.Serve(adminListener); !errors.Is(err, http.ErrServerClosed) {
			errs <- fmt.Errorf("admin server: %w", err)
		}
	}()
	log.Info("proxysession serving",
		slog.String("grpc", grpcListener.Addr().String()), slog.String("admin", adminListener.Addr().String()),
		slog.Bool("tls", cfg.TLSCert != ""), slog.Bool("mtls", cfg.TLSClientCA != ""),
		slog.String("store", cfg.Store), slog.String("cookie", cache.CookieName()))

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errs:
	}

	// Drain: report not ready and not serving, so that Envoy's health
	// checks and Kubernetes stop sending streams, let the streams in
	// flight finish, then stop.
	draining.Store(true)
	healthServer.Shutdown()
	log.Info("shutting down", slog.Duration("drain_delay", cfg.DrainDelay), slog.Duration("grace", cfg.ShutdownGrace))
	if hook, ok := ctx.Value(drainHookKey{}).(func()); ok {
		hook()
	}
	if cfg.DrainDelay > 0 && serveErr == nil {
		time.Sleep(cfg.DrainDelay)
	}
	stopped := make(chan struct{})
	go func() {
		grpcServer.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(cfg.ShutdownGrace)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		log.Warn("shutdown grace period over; closing the remaining streams")
		grpcServer.Stop()
		<-stopped
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := admin.Shutdown(shutdownCtx); err != nil {
		log.Warn("admin server shutdown", slog.String("error", err.Error()))
	}
	if serveErr != nil {
		return serveErr
	}
	log.Info("stopped")
	return nil
}

// listen opens the gRPC listener: TCP, or a Unix socket for unix: addresses
// (a stale socket file from a previous run is replaced).
func listen(addr string) (net.Listener, error) {
	if !strings.HasPrefix(addr, "unix:") {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("gRPC listener: %w", err)
		}
		return l, nil
	}
	path := config.SocketPath(addr)
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() == fs.ModeSocket {
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("gRPC listener: removing stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("gRPC listener: %w", err)
	}
	// Envoy (another user, in the same group) must be able to connect;
	// the socket's directory decides who else can.
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("gRPC listener: %w", err)
	}
	return l, nil
}

// adminHandler serves /healthz (alive), /readyz (store reachable and not
// draining) and /metrics.
func adminHandler(cache *sessions.Cache, reg *prometheus.Registry, draining *atomic.Bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		if err := cache.Check(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return mux
}
