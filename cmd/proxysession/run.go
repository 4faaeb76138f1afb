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

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
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

// hooks let tests follow a running instance; main passes none. A nil
// hook is not called.
type hooks struct {
	// listening is told the bound addresses, before serving starts.
	listening func(grpcAddr, adminAddr net.Addr)
	// httpListening is told the reverse proxy's address (-http-addr),
	// after listening.
	httpListening func(net.Addr)
	// draining is told when draining starts.
	draining func()
}

// run is the whole program: it parses args (and PROXYSESSION_*
// variables), serves until ctx is done, then shuts down gracefully.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, h hooks) error {
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
	return serve(ctx, cfg, stderr, h)
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

// serve runs proxysession with cfg until ctx is done, then shuts down
// gracefully; logs go to logOut.
func serve(ctx context.Context, cfg *config.Config, logOut io.Writer, h hooks) error {
	log := newLogger(cfg, logOut)
	cfg.Sessions.Logger = log
	tracing, err := newTracing(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer tracing.shutdown()
	cfg.Sessions.TracerProvider = tracing.provider
	cache, closeStore, err := newCache(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer closeStore()
	state, err := loadState(cfg, cache, log)
	if err != nil {
		return err
	}
	defer state.halt()
	reg, metrics, err := newRegistry(cache)
	if err != nil {
		return err
	}
	if err := state.register(reg); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	grpcSrv, err := newGRPCServer(cfg, processor.New(cache, processor.Options{Logger: log, Metrics: metrics, TracerProvider: tracing.provider, ClearRouteCache: cfg.ClearRouteCache}), log, tracing.serverOptions()...)
	if err != nil {
		return err
	}
	var draining atomic.Bool
	routes, err := userRoutes(cfg, cache, reg, log)
	if err != nil {
		return err
	}
	admin := &adminServer{srv: &http.Server{Handler: adminHandler(cache, reg, &draining, routes...), ReadHeaderTimeout: 5 * time.Second}, log: log}
	proxy, err := newHTTPProxy(cfg, cache, reg, log)
	if err != nil {
		return err
	}
	if err := listenAll(cfg, grpcSrv, admin, proxy); err != nil {
		return err
	}
	if h.listening != nil {
		h.listening(listenerAddr(grpcSrv.lis), admin.lis.Addr())
	}
	if h.httpListening != nil && proxy != nil {
		h.httpListening(proxy.lis.Addr())
	}
	log.Info("proxysession serving",
		slog.String("grpc", addrOrOff(listenerAddr(grpcSrv.lis))), slog.String("admin", admin.lis.Addr().String()), slog.String("http", proxy.addr()),
		slog.Bool("tls", cfg.TLSCert != ""), slog.Bool("mtls", cfg.TLSClientCA != ""),
		slog.String("store", cfg.Store), slog.String("cookie", cache.CookieName()))

	// Drain: report not ready and not serving, so that Envoy's health
	// checks and Kubernetes stop sending streams, and keep accepting
	// them for the drain delay; then the servers stop, the gRPC server
	// letting the streams in flight finish. The admin server stops
	// last: /readyz answers "draining" until the gRPC server is done.
	err = runServers(ctx, func(failed bool) {
		draining.Store(true)
		grpcSrv.health.Shutdown()
		log.Info("shutting down", slog.Duration("drain_delay", cfg.DrainDelay), slog.Duration("grace", cfg.ShutdownGrace))
		if h.draining != nil {
			h.draining()
		}
		if cfg.DrainDelay > 0 && !failed {
			time.Sleep(cfg.DrainDelay)
		}
	}, frontends(grpcSrv, proxy), admin)
	// The servers have stopped: no exchange changes the sessions now.
	if serr := state.close(); err == nil && serr != nil {
		err = fmt.Errorf("writing the state file: %w", serr)
	}
	if err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// newCache returns the session engine on the configured store, and the
// function that closes the store.
func newCache(ctx context.Context, cfg *config.Config, log *slog.Logger) (*sessions.Cache, func(), error) {
	store, closeStore, err := newStore(ctx, cfg, log)
	if err != nil {
		return nil, nil, &usageError{err}
	}
	if store != nil {
		cfg.Sessions.Store = store
	}
	cache, err := sessions.New(cfg.Sessions)
	if err != nil {
		closeStore()
		return nil, nil, &usageError{err}
	}
	return cache, closeStore, nil
}

// newRegistry returns the registry /metrics serves, with the Go runtime's,
// the process's, the engine's and the processor's metrics.
func newRegistry(cache *sessions.Cache) (*prometheus.Registry, *processor.Metrics, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), newSessionsCollector(cache))
	metrics := processor.NewMetrics()
	if err := metrics.Register(reg); err != nil {
		return nil, nil, fmt.Errorf("registering metrics: %w", err)
	}
	return reg, metrics, nil
}

// A server is one of the servers serve runs together (see runServers).
type server interface {
	// serve serves until stop is called; then it returns nil.
	serve() error
	// stop stops the server gracefully, within the server's own time
	// limit.
	stop()
}

// runServers serves every server until ctx is done or one of them fails,
// then calls drain (told whether a server failed) and stops the servers
// one after the other, in order: a server listed later keeps serving
// while those before it stop. It returns the first failure.
func runServers(ctx context.Context, drain func(failed bool), servers ...server) error {
	errs := make(chan error, len(servers))
	for _, s := range servers {
		go func() {
			if err := s.serve(); err != nil {
				errs <- err
			}
		}()
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errs:
	}
	drain(serveErr != nil)
	for _, s := range servers {
		s.stop()
	}
	return serveErr
}

// listenAll opens the listeners of the gRPC (unless -grpc-addr is off),
// admin and reverse-proxy (with -http-addr) servers, or none.
func listenAll(cfg *config.Config, g *grpcServer, a *adminServer, p *httpProxy) error {
	var err error
	if cfg.GRPCAddr != "" {
		if g.lis, err = listen(cfg.GRPCAddr); err != nil {
			return err
		}
	}
	if a.lis, err = net.Listen("tcp", cfg.AdminAddr); err != nil {
		closeListener(g.lis)
		return fmt.Errorf("admin listener: %w", err)
	}
	if err := p.listen(); err != nil {
		closeListener(g.lis)
		a.lis.Close()
		return err
	}
	return nil
}

// grpcServer serves ext_proc and the gRPC health service.
type grpcServer struct {
	srv    *grpc.Server
	health *health.Server
	lis    net.Listener
	grace  time.Duration // how long stop lets streams in flight run
	log    *slog.Logger
}

// newGRPCServer returns the gRPC server of proc, over TLS when cfg has a
// certificate.
func newGRPCServer(cfg *config.Config, proc *processor.Server, log *slog.Logger, extra ...grpc.ServerOption) (*grpcServer, error) {
	// Envoy may send HTTP/2 keepalive pings (connection_keepalive); grpc-go
	// would answer pings more often than every 5 minutes with GOAWAY.
	opts := append([]grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}, extra...)
	if cfg.TLSCert != "" {
		certs, err := newCertReloader(cfg.TLSCert, cfg.TLSKey, cfg.TLSClientCA, log)
		if err != nil {
			return nil, &usageError{err}
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(certs.serverConfig())))
	}
	srv := grpc.NewServer(processor.ServerOptions(opts...)...)
	return &grpcServer{srv: srv, health: processor.Register(srv, proc), grace: cfg.ShutdownGrace, log: log}, nil
}

func (g *grpcServer) serve() error {
	if err := g.srv.Serve(g.lis); err != nil {
		return fmt.Errorf("gRPC server: %w", err)
	}
	return nil
}

// stop lets the streams in flight finish for the grace period at most,
// then closes those that remain.
func (g *grpcServer) stop() {
	stopped := make(chan struct{})
	go func() {
		g.srv.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(g.grace)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		g.log.Warn("shutdown grace period over; closing the remaining streams")
		g.srv.Stop()
		<-stopped
	}
}

// adminServer serves the admin handler over HTTP.
type adminServer struct {
	srv *http.Server
	lis net.Listener
	log *slog.Logger
}

func (a *adminServer) serve() error {
	if err := a.srv.Serve(a.lis); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin server: %w", err)
	}
	return nil
}

// stop lets the requests in flight finish for 5 seconds at most.
func (a *adminServer) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.srv.Shutdown(ctx); err != nil {
		a.log.Warn("admin server shutdown", slog.String("error", err.Error()))
	}
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
// draining), /metrics, and the routes given (users.go).
func adminHandler(cache *sessions.Cache, reg *prometheus.Registry, draining *atomic.Bool, routes ...adminRoute) http.Handler {
	mux := http.NewServeMux()
	for _, r := range routes {
		mux.Handle(r.pattern, r.handler)
	}
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
