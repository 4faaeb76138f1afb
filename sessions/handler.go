package sessions

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// ResponseCodeMetrics records the status codes of responses. The inverting
// proxy's *metrics.MetricHandler satisfies it.
type ResponseCodeMetrics interface {
	WriteResponseCodeMetric(statusCode int) error
}

// NewCache returns a Cache with an in-memory store, configured as the
// inverting proxy's sessions package was: the session cookie's name, the
// session lifetime, the maximum number of sessions, and whether the
// session cookie may travel over plain http (disableSSLForTest). A
// non-positive lifetime or limit takes the default. For everything else
// use New.
//
// NewCache panics if the cookie name is invalid, or if disableSSLForTest
// is set with a __Host- or __Secure- name: a misconfigured session layer
// must not start, or backend cookies would reach browsers.
func NewCache(sessionCookieName string, sessionCookieTimeout time.Duration, cookieCacheLimit int, disableSSLForTest bool) *Cache {
	c, err := New(Config{
		CookieName:     sessionCookieName,
		InsecureCookie: disableSSLForTest,
		Lifetime:       max(sessionCookieTimeout, 0),
		MaxSessions:    max(cookieCacheLimit, 0),
	})
	if err != nil {
		panic(err)
	}
	return c
}

// SessionHandler returns a handler that adds proxy-side sessions to
// wrapped: the session cookie is swapped for the session's cookies on the
// way in, and the backend's Set-Cookie headers are swapped for the session
// cookie on the way out. When the store fails, it answers 503 itself
// rather than forward a request without its cookies or leak a response's.
//
// metricHandler, when not nil, records the status codes that the session
// layer decides: its own 503s, and the implicit 200 of a handler that
// writes a body without calling WriteHeader. A nil Cache returns wrapped
// unchanged.
func (c *Cache) SessionHandler(wrapped http.Handler, metricHandler ResponseCodeMetrics) http.Handler {
	if c == nil {
		return wrapped
	}
	return &sessionHandler{c: c, wrapped: wrapped, metrics: metricHandler}
}

type sessionHandler struct {
	c       *Cache
	wrapped http.Handler
	metrics ResponseCodeMetrics
}

func (h *sessionHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	// The header keys are canonical already: index the map directly
	// instead of paying for Header.Get's canonicalisation.
	req := Request{
		Scheme:    scheme,
		Host:      r.Host,
		Path:      r.URL.EscapedPath(),
		Method:    r.Method,
		Cookies:   r.Header["Cookie"],
		FetchSite: first(r.Header["Sec-Fetch-Site"]),
		FetchMode: first(r.Header["Sec-Fetch-Mode"]),
		FetchDest: first(r.Header["Sec-Fetch-Dest"]),
	}
	if h.c.cfg.TrustForwardedProto {
		req.ForwardedProto = first(r.Header["X-Forwarded-Proto"])
	}
	sw := &sessionWriter{h: h, w: w, r: r}
	if err := h.c.Expand(r.Context(), &req, &sw.x); err != nil {
		sw.fail(err)
		return
	}
	if sw.x.RewriteCookie {
		switch v := r.Header["Cookie"]; {
		case sw.x.Cookie == "":
			delete(r.Header, "Cookie")
		case len(v) > 0:
			v[0] = sw.x.Cookie
			r.Header["Cookie"] = v[:1]
		default:
			r.Header["Cookie"] = []string{sw.x.Cookie}
		}
	}
	h.wrapped.ServeHTTP(sw, r)
	if !sw.wroteHeader && !sw.hijacked {
		// net/http would send the handler's headers, Set-Cookie and all,
		// after it returns: capture them first.
		sw.WriteHeader(http.StatusOK)
	}
}

func first(values []string) string {
	if len(values) == 0 {
		return ""
	}
	return values[0]
}

// sessionWriter captures the backend's cookies just before the response
// header is written.
type sessionWriter struct {
	h           *sessionHandler
	w           http.ResponseWriter
	r           *http.Request
	x           Exchange
	wroteHeader bool
	hijacked    bool
	failed      bool
}

var errStoreFailed = errors.New("sessions: session store failed; response replaced by 503")

func (w *sessionWriter) Header() http.Header { return w.w.Header() }

func (w *sessionWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		if w.WriteHeader(http.StatusOK); !w.failed {
			w.recordMetric(http.StatusOK)
		}
	}
	if w.failed {
		return 0, errStoreFailed
	}
	return w.w.Write(b)
}

func (w *sessionWriter) WriteHeader(code int) {
	if w.wroteHeader || (code >= 100 && code < 200 && code != http.StatusSwitchingProtocols) {
		// Informational responses and superfluous calls pass through;
		// net/http handles them.
		w.w.WriteHeader(code)
		return
	}
	w.wroteHeader = true
	h := w.w.Header()
	edit, err := w.h.c.Capture(w.r.Context(), &w.x, &Response{
		SetCookie:     h["Set-Cookie"],
		ClearSiteData: h["Clear-Site-Data"],
		CacheControl:  h["Cache-Control"],
	})
	if err != nil {
		w.fail(err)
		return
	}
	if edit.RemoveSetCookie {
		delete(h, "Set-Cookie")
	}
	for _, v := range edit.SetCookie {
		h["Set-Cookie"] = append(h["Set-Cookie"], v)
	}
	if edit.CacheControl != "" {
		h["Cache-Control"] = []string{edit.CacheControl}
	}
	w.w.WriteHeader(code)
}

// fail answers 503 in place of the handler's response, dropping every
// header the handler set (its cookies among them).
func (w *sessionWriter) fail(err error) {
	w.h.c.log.LogAttrs(w.r.Context(), slog.LevelError, "session store failed; answering 503",
		slog.String("error", err.Error()))
	w.wroteHeader, w.failed = true, true
	h := w.w.Header()
	clear(h)
	h.Set("Retry-After", "1")
	h.Set("Cache-Control", "no-store")
	http.Error(w.w, "503 session store unavailable", http.StatusServiceUnavailable)
	w.recordMetric(http.StatusServiceUnavailable)
}

func (w *sessionWriter) recordMetric(code int) {
	if w.h.metrics != nil {
		if err := w.h.metrics.WriteResponseCodeMetric(code); err != nil {
			w.h.c.log.Warn("recording a response code metric failed", slog.String("error", err.Error()))
		}
	}
}

// FlushError implements the interface that http.ResponseController uses,
// so that a flush cannot send the header before the cookies are captured.
func (w *sessionWriter) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.failed {
		return errStoreFailed
	}
	return http.NewResponseController(w.w).Flush()
}

// Flush implements http.Flusher.
func (w *sessionWriter) Flush() { _ = w.FlushError() }

// Hijack implements http.Hijacker. A hijacked connection's bytes are the
// handler's own business.
func (w *sessionWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, rw, err := http.NewResponseController(w.w).Hijack()
	if err != nil {
		return nil, nil, fmt.Errorf("sessions: hijack: %w", err)
	}
	w.hijacked = true
	return conn, rw, nil
}

// Unwrap gives http.ResponseController access to the other features of
// the underlying writer (deadlines, full duplex).
func (w *sessionWriter) Unwrap() http.ResponseWriter { return w.w }
