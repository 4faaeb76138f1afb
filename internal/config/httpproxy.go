package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"
)

// HTTPProxy configures the reverse-proxy mode: proxysession serves HTTP
// itself and proxies every request to one upstream, through the session
// layer (sessions.Cache.SessionHandler).
type HTTPProxy struct {
	Addr     string   // listen address; "" disables the mode
	Upstream *url.URL // http or https URL of the upstream
	// UpstreamTimeout bounds the wait for the upstream's response
	// header (not the body, so that streams can last).
	UpstreamTimeout time.Duration
	// PreserveHost sends the client's Host header upstream instead of
	// the upstream URL's host.
	PreserveHost bool
	// TrustForwardedHeaders keeps the client's X-Forwarded-Host and
	// X-Forwarded-Proto and appends to its X-Forwarded-For, for a
	// proxysession behind a trusted load balancer.
	TrustForwardedHeaders bool
	// TLS files; reloaded when they change.
	TLSCert, TLSKey string
	// MaxHeaderBytes bounds a request's header; larger ones get 431.
	MaxHeaderBytes int64
	// AccessLog logs every request (no query, no cookie values).
	AccessLog   bool
	rawUpstream string
}

// Reverse-proxy mode defaults.
const (
	DefaultUpstreamTimeout    = 30 * time.Second
	DefaultHTTPMaxHeaderBytes = 64 << 10
)

// options declares the reverse-proxy mode's settings.
func (h *HTTPProxy) options(o *options) {
	o.str(&h.Addr, "http-addr", "", "reverse-proxy mode: serve HTTP on this address and proxy every request to -upstream through the session layer (empty: off)")
	o.str(&h.rawUpstream, "upstream", "", "with -http-addr: the upstream's http:// or https:// URL, like http://localhost:8081")
	o.duration(&h.UpstreamTimeout, "upstream-timeout", DefaultUpstreamTimeout, "with -http-addr: how long to wait for the upstream's response header (and to connect) before answering 504; bodies may stream longer")
	o.boolean(&h.PreserveHost, "preserve-host", false, "with -http-addr: send the client's Host header upstream instead of the -upstream URL's host")
	o.boolean(&h.TrustForwardedHeaders, "trust-forwarded-headers", false, "with -http-addr: keep the client's X-Forwarded-Host and X-Forwarded-Proto and append to its X-Forwarded-For (only behind a proxy that sets them); by default they are replaced")
	o.str(&h.TLSCert, "http-tls-cert", "", "with -http-addr: PEM certificate to serve HTTPS (and HTTP/2); reloaded when the file changes")
	o.str(&h.TLSKey, "http-tls-key", "", "PEM private key for -http-tls-cert")
	o.size(&h.MaxHeaderBytes, "http-max-header-bytes", DefaultHTTPMaxHeaderBytes, "with -http-addr: largest request header accepted (larger ones get 431)")
	o.boolean(&h.AccessLog, "http-access-log", true, "with -http-addr: log every request (method, path without query, status, bytes, duration; never cookies)")
}

// finishHTTP validates the reverse-proxy settings. -grpc-addr off (or
// empty) turns the ext_proc server off, which only -http-addr allows.
func (cfg *Config) finishHTTP() []error {
	h := &cfg.HTTP
	var errs []error
	if h.Addr == "" {
		if cfg.GRPCAddr == "off" {
			errs = append(errs, errors.New("-grpc-addr: off needs -http-addr (proxysession would serve nothing)"))
		}
		if h.rawUpstream != "" {
			errs = append(errs, errors.New("-upstream: needs -http-addr (the reverse-proxy mode)"))
		}
		if h.TLSCert != "" || h.TLSKey != "" {
			errs = append(errs, errors.New("-http-tls-cert and -http-tls-key: need -http-addr"))
		}
		return errs
	}
	if cfg.GRPCAddr == "off" {
		cfg.GRPCAddr = ""
	}
	if cfg.GRPCAddr == "" && (cfg.TLSCert != "" || cfg.TLSClientCA != "") {
		errs = append(errs, errors.New("-tls-cert, -tls-client-ca: are for the ext_proc gRPC server, which -grpc-addr off turns off (use -http-tls-cert and -http-tls-key)"))
	}
	if sameAddr(cfg.GRPCAddr, h.Addr) {
		errs = append(errs, fmt.Errorf("-http-addr: %q is -grpc-addr too", h.Addr))
	}
	if sameAddr(cfg.AdminAddr, h.Addr) {
		errs = append(errs, fmt.Errorf("-http-addr: %q is -admin-addr too", h.Addr))
	}
	switch u, err := url.Parse(h.rawUpstream); {
	case h.rawUpstream == "":
		errs = append(errs, errors.New("-upstream: -http-addr needs an upstream URL, like http://localhost:8081"))
	case err != nil:
		errs = append(errs, fmt.Errorf("-upstream: %q is not a URL", h.rawUpstream))
	case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
		errs = append(errs, fmt.Errorf("-upstream: %q: give an http:// or https:// URL with a host", h.rawUpstream))
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		errs = append(errs, fmt.Errorf("-upstream: %q: no user information, query or fragment", u.Redacted()))
	default:
		h.Upstream = u
	}
	if h.UpstreamTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-upstream-timeout: %v must be positive", h.UpstreamTimeout))
	}
	if (h.TLSCert == "") != (h.TLSKey == "") {
		errs = append(errs, errors.New("-http-tls-cert and -http-tls-key: give both or neither"))
	}
	if h.MaxHeaderBytes < 1<<10 || h.MaxHeaderBytes > 16<<20 {
		errs = append(errs, fmt.Errorf("-http-max-header-bytes: %s: must be between 1KiB and 16MiB", FormatSize(h.MaxHeaderBytes)))
	}
	return errs
}

// sameAddr reports whether two listen addresses are the same fixed one
// (port 0 picks a free port each time).
func sameAddr(a, b string) bool {
	_, port, err := net.SplitHostPort(a)
	return a == b && err == nil && port != "0"
}
