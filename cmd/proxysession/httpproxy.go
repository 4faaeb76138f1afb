package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/proxysession/proxysession/internal/config"
	"github.com/proxysession/proxysession/sessions"
)

// This file is the reverse-proxy mode (-http-addr): proxysession serves
// HTTP itself and proxies every request to -upstream through the session
// layer (sessions.Cache.SessionHandler) and httputil.ReverseProxy, beside
// the ext_proc server or alone (-grpc-addr off), on the same store.

// httpProxy serves the reverse proxy over HTTP, or HTTPS and HTTP/2 with
// -http-tls-cert.
type httpProxy struct {
	srv   *http.Server
	lis   net.Listener
	cfg   config.HTTPProxy
	tls   bool
	grace time.Duration
	log   *slog.Logger

	// upgraded holds the connections handed over for a protocol switch
	// (WebSocket), which http.Server.Shutdown does not track.
	mu       sync.Mutex
	upgraded map[*upgradedConn]struct{}
}

// Server timeouts that the flags do not set. No write timeout: responses
// may stream (server-sent events) as long as the upstream sends.
const (
	httpReadHeaderTimeout = 10 * time.Second
	httpIdleTimeout       = 2 * time.Minute
)

// newHTTPProxy returns the reverse proxy of cfg.HTTP, or nil without
// -http-addr. Its metrics are registered on reg.
func newHTTPProxy(cfg *config.Config, cache *sessions.Cache, reg prometheus.Registerer, log *slog.Logger) (*httpProxy, error) {
	hc := cfg.HTTP
	if hc.Addr == "" {
		return nil, nil
	}
	m := newProxyMetrics()
	if err := m.register(reg); err != nil {
		return nil, fmt.Errorf("registering metrics: %w", err)
	}
	p := &httpProxy{cfg: hc, grace: cfg.ShutdownGrace, log: log, upgraded: map[*upgradedConn]struct{}{}}
	rp := &httputil.ReverseProxy{
		Rewrite:      p.rewrite,
		Transport:    upstreamTransport(hc),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) { p.upstreamError(w, r, err, m) },
		ErrorLog:     slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		// FlushInterval 0: ReverseProxy flushes at once every write of
		// a response of unknown length and of text/event-stream.
	}
	p.srv = &http.Server{
		Handler:           p.accessLog(cache.SessionHandler(rp, nil), m),
		ReadHeaderTimeout: httpReadHeaderTimeout,
		IdleTimeout:       httpIdleTimeout,
		MaxHeaderBytes:    int(hc.MaxHeaderBytes),
		// Handshake errors of scanners and the like are noise.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	if hc.TLSCert != "" {
		certs, err := newCertReloaderFor("-http-tls-cert/-http-tls-key", []string{"h2", "http/1.1"}, hc.TLSCert, hc.TLSKey, "", log)
		if err != nil {
			return nil, &usageError{err}
		}
		p.srv.TLSConfig, p.tls = certs.serverConfig(), true
	}
	return p, nil
}

// upstreamTransport returns the transport to the upstream: the default
// transport's pools, without HTTP_PROXY (the upstream is a neighbour),
// with -upstream-timeout on connecting and on the response header.
func upstreamTransport(hc config.HTTPProxy) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	t.DialContext = (&net.Dialer{Timeout: hc.UpstreamTimeout, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = hc.UpstreamTimeout
	t.ResponseHeaderTimeout = hc.UpstreamTimeout
	t.MaxIdleConnsPerHost = 64
	return t
}

// rewrite builds the upstream request. ReverseProxy has removed the
// client's Forwarded and X-Forwarded-* headers from pr.Out; they are set
// from the client connection, or, with -trust-forwarded-headers, the
// client's are kept (X-Forwarded-For gets the client's address appended).
// The session layer has already swapped the session cookie for the
// session's cookies in the Cookie header.
func (p *httpProxy) rewrite(pr *httputil.ProxyRequest) {
	pr.SetURL(p.cfg.Upstream)
	trust := p.cfg.TrustForwardedHeaders
	if v := pr.In.Header["X-Forwarded-For"]; trust && len(v) > 0 {
		pr.Out.Header["X-Forwarded-For"] = slices.Clone(v)
	}
	pr.SetXForwarded()
	if trust {
		for _, k := range []string{"X-Forwarded-Host", "X-Forwarded-Proto"} {
			if v := pr.In.Header.Get(k); v != "" {
				pr.Out.Header.Set(k, v)
			}
		}
	}
	if p.cfg.PreserveHost {
		pr.Out.Host = pr.In.Host
	}
}

// upstreamError answers a request the upstream did not: 504 when it timed
// out, 502 otherwise. The body names no upstream address or error; the
// log does.
func (p *httpProxy) upstreamError(w http.ResponseWriter, r *http.Request, err error, m *proxyMetrics) {
	status, kind, level := http.StatusBadGateway, "unreachable", slog.LevelWarn
	var ne net.Error
	switch {
	case r.Context().Err() != nil:
		// The client went away: nobody reads the answer.
		kind, level = "client_gone", slog.LevelDebug
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		status, kind = http.StatusGatewayTimeout, "timeout"
	}
	m.upstreamErrors.WithLabelValues(kind).Inc()
	if rec, ok := r.Context().Value(accessKey{}).(*accessRecord); ok {
		rec.upstreamError = kind
	}
	p.log.LogAttrs(r.Context(), level, "upstream request failed",
		slog.String("kind", kind), slog.String("method", r.Method), slog.String("path", r.URL.Path),
		slog.String("error", err.Error()))
	h := w.Header()
	clear(h)
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintf(w, "%d %s\n", status, http.StatusText(status))
}

// listen opens the listener of -http-addr; a nil proxy has none.
func (p *httpProxy) listen() error {
	if p == nil {
		return nil
	}
	lis, err := net.Listen("tcp", p.cfg.Addr)
	if err != nil {
		return fmt.Errorf("HTTP listener: %w", err)
	}
	p.lis = lis
	return nil
}

// addr is the listening address, for the log; "off" for a nil proxy.
func (p *httpProxy) addr() string {
	if p == nil || p.lis == nil {
		return "off"
	}
	return p.lis.Addr().String()
}

func (p *httpProxy) serve() error {
	var err error
	if p.tls {
		err = p.srv.ServeTLS(p.lis, "", "")
	} else {
		err = p.srv.Serve(p.lis)
	}
	if !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("HTTP server: %w", err)
	}
	return nil
}

// stop stops accepting, lets the requests in flight finish for the grace
// period at most, then closes what remains, upgraded connections
// (WebSockets) included.
func (p *httpProxy) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), p.grace)
	defer cancel()
	if err := p.srv.Shutdown(ctx); err != nil {
		p.log.Warn("shutdown grace period over; closing the remaining HTTP connections")
		p.srv.Close()
	}
	p.mu.Lock()
	conns := make([]*upgradedConn, 0, len(p.upgraded))
	for c := range p.upgraded {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	if len(conns) > 0 {
		p.log.Info("closing upgraded connections", slog.Int("count", len(conns)))
	}
	for _, c := range conns {
		c.Close()
	}
}

// upgradedConn is a connection handed over for a protocol switch; it
// leaves the proxy's set when closed.
type upgradedConn struct {
	net.Conn
	p    *httpProxy
	once sync.Once
}

func (c *upgradedConn) Close() error {
	c.once.Do(func() {
		c.p.mu.Lock()
		delete(c.p.upgraded, c)
		c.p.mu.Unlock()
	})
	return c.Conn.Close()
}

// accessKey is the context key of a request's *accessRecord.
type accessKey struct{}

// accessRecord is what the access log says of a response.
type accessRecord struct {
	status        int
	bytes         int64
	upgraded      bool
	upstreamError string
}

// accessLog wraps h: it counts and times every response and, with
// -http-access-log, logs it: method, path without the query, protocol,
// status, bytes, duration, client address and upstream error. Never
// headers, cookies or query values.
func (p *httpProxy) accessLog(h http.Handler, m *proxyMetrics) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &accessRecord{}
		lw := &logWriter{ResponseWriter: w, rec: rec, p: p}
		completed := false
		defer func() {
			d := time.Since(start)
			status := strconv.Itoa(rec.status)
			switch {
			case !completed:
				status = "aborted"
			case rec.status == 0:
				status = "200"
			}
			m.requests.WithLabelValues(status).Inc()
			m.duration.Observe(d.Seconds())
			if !p.cfg.AccessLog {
				return
			}
			attrs := []slog.Attr{
				slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.String("proto", r.Proto),
				slog.String("status", status), slog.Int64("bytes", rec.bytes), slog.Duration("duration", d),
				slog.String("client", r.RemoteAddr),
			}
			if rec.upstreamError != "" {
				attrs = append(attrs, slog.String("upstream_error", rec.upstreamError))
			}
			p.log.LogAttrs(r.Context(), slog.LevelInfo, "http request", attrs...)
		}()
		h.ServeHTTP(lw, r.WithContext(context.WithValue(r.Context(), accessKey{}, rec)))
		completed = true
	})
}

// logWriter records the status and size of a response. Flushing and
// the other optional features reach the connection through Unwrap.
type logWriter struct {
	http.ResponseWriter
	rec *accessRecord
	p   *httpProxy
}

func (w *logWriter) WriteHeader(code int) {
	if w.rec.status == 0 && code >= 200 {
		w.rec.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *logWriter) Write(b []byte) (int, error) {
	if w.rec.status == 0 {
		w.rec.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.rec.bytes += int64(n)
	return n, err
}

func (w *logWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack hands the connection over (for a 101 Switching Protocols, which
// the session layer then filters) and tracks it until it is closed.
func (w *logWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if w.rec.status == 0 {
		w.rec.status = http.StatusSwitchingProtocols
	}
	w.rec.upgraded = true
	uc := &upgradedConn{Conn: conn, p: w.p}
	w.p.mu.Lock()
	w.p.upgraded[uc] = struct{}{}
	w.p.mu.Unlock()
	// Writes buffered in rw must go through uc, not around it: rw
	// writes to conn directly. The session layer wraps what it gets in
	// a writer of its own, so the buffered writer here is new.
	return uc, bufio.NewReadWriter(rw.Reader, bufio.NewWriter(uc)), nil
}

// proxyMetrics are the reverse proxy's metrics.
type proxyMetrics struct {
	requests       *prometheus.CounterVec
	duration       prometheus.Histogram
	upstreamErrors *prometheus.CounterVec
}

func newProxyMetrics() *proxyMetrics {
	m := &proxyMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "proxysession_http_requests_total",
			Help: "Requests the reverse proxy (-http-addr) answered, by status code (101 for upgrades, aborted when the response was cut off).",
		}, []string{"code"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "proxysession_http_request_duration_seconds",
			Help:    "Time the reverse proxy took to answer a request, to the end of the response body.",
			Buckets: prometheus.DefBuckets,
		}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "proxysession_upstream_errors_total",
			Help: "Requests the upstream did not answer, by kind: timeout (504), unreachable (502), client_gone.",
		}, []string{"kind"}),
	}
	for _, kind := range []string{"timeout", "unreachable", "client_gone"} {
		m.upstreamErrors.WithLabelValues(kind)
	}
	return m
}

func (m *proxyMetrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.upstreamErrors} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// frontends returns the servers that take traffic, as one server: the
// ext_proc gRPC server unless -grpc-addr is off, and the reverse proxy
// with -http-addr. They stop together, each with the whole grace period.
func frontends(g *grpcServer, p *httpProxy) server {
	var list parallelServers
	if g.lis != nil {
		list = append(list, g)
	}
	if p != nil {
		list = append(list, p)
	}
	if len(list) == 1 {
		return list[0]
	}
	return list
}

// parallelServers serve together and stop together.
type parallelServers []server

// serve returns the first failure, or nil once every server stopped.
func (ps parallelServers) serve() error {
	errs := make(chan error, len(ps))
	for _, s := range ps {
		go func() { errs <- s.serve() }()
	}
	for range ps {
		if err := <-errs; err != nil {
			return err
		}
	}
	return nil
}

func (ps parallelServers) stop() {
	var wg sync.WaitGroup
	for _, s := range ps {
		wg.Go(s.stop)
	}
	wg.Wait()
}

// listenerAddr is l's address, or nil for no listener.
func listenerAddr(l net.Listener) net.Addr {
	if l == nil {
		return nil
	}
	return l.Addr()
}

// closeListener closes l, if there is one.
func closeListener(l net.Listener) {
	if l != nil {
		l.Close()
	}
}

// addrOrOff is a's text, or "off" for no address.
func addrOrOff(a net.Addr) string {
	if a == nil {
		return "off"
	}
	return a.String()
}
