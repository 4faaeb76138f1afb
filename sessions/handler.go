package sessions

import (
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strings"
)

// SessionHandler returns a handler that adds proxy-side sessions to
// wrapped: the session cookie is swapped for the session's cookies on the
// way in, and the backend's Set-Cookie headers are swapped for the session
// cookie on the way out. When the store fails, it answers 503 itself
// rather than forward a request without its cookies or leak a response's.
//
// No backend Set-Cookie reaches the browser, whatever path the response
// takes. The wrapped handler writes into a header map of its own, which
// is copied to the real one only after its cookies are captured, so a
// cookie set under any spelling of the name ("set-cookie"), a response
// abandoned by a panic, or an outer middleware's error page cannot carry
// one. Informational (1xx) responses go out without the handler's
// Set-Cookie fields, which stay for the final response. Trailers never
// carry Set-Cookie. On a hijacked connection the handler's response head
// is parsed before it is sent: a 101 Switching Protocols head has its
// cookies captured like a final response's, and a head that cannot be
// parsed, or whose framing the session layer could not follow (chunked,
// an upgrade to HTTP/2), closes the connection instead. A connection is
// not handed over once a final response other than a protocol switch
// has begun.
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
	sw := &sessionWriter{h: h, w: w, r: r, header: shallowClone(w.Header())}
	ctx, span := h.c.tracer.Start(r.Context(), PhaseRequest, &sw.x)
	err := h.c.Expand(ctx, &req, &sw.x)
	span.End(&sw.x, sw.x.RewriteCookie, err)
	if err != nil {
		sw.fail(err)
		return
	}
	if hh := h.c.binding.handleHeader; hh != "" {
		// The browser must not name a handle for the backend.
		deleteFold(r.Header, hh)
		if sw.x.Handle != "" {
			r.Header[hh] = []string{sw.x.Handle}
		}
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
	returned := false
	defer func() {
		if !returned {
			// The handler panicked (or called runtime.Goexit). An outer
			// recovery middleware may still answer with the real header
			// map: make sure it holds no cookie. The panic goes on as it
			// was, http.ErrAbortHandler included, since nothing recovers it.
			sw.scrub()
		}
	}()
	h.wrapped.ServeHTTP(sw, r)
	returned = true
	if !sw.wroteHeader && !sw.hijacked {
		// net/http would send the handler's headers after it returns:
		// capture their cookies first.
		sw.WriteHeader(http.StatusOK)
	}
	sw.exportTrailers()
}

func first(values []string) string {
	if len(values) == 0 {
		return ""
	}
	return values[0]
}

// shallowClone copies h's entries into a new map, sharing the values.
// The slices are clipped, so that an append through one map cannot write
// into the other's array.
func shallowClone(h http.Header) http.Header {
	c := make(http.Header, len(h))
	for k, v := range h {
		c[k] = slices.Clip(v)
	}
	return c
}

// sessionWriter gives the wrapped handler a header map of its own and
// copies it to the real writer only when the response header is written,
// after the backend's cookies are captured: until then nothing the
// handler set can reach the browser, by any path.
type sessionWriter struct {
	h *sessionHandler
	w http.ResponseWriter
	r *http.Request
	// header is the wrapped handler's header map. It starts as a copy of
	// the real one, so the handler sees what outer middleware set.
	header      http.Header
	x           Exchange
	status      int // the final status written, once wroteHeader
	wroteHeader bool
	hijacked    bool
	failed      bool
}

var errStoreFailed = errors.New("sessions: session store failed; response replaced by 503")

// Header returns the wrapped handler's own header map.
func (w *sessionWriter) Header() http.Header { return w.header }

// Write writes the header first, if the handler has not, so that its
// cookies are captured before anything is sent.
func (w *sessionWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader && !w.hijacked {
		if w.WriteHeader(http.StatusOK); !w.failed {
			w.recordMetric(http.StatusOK)
		}
	}
	if w.failed {
		return 0, errStoreFailed
	}
	return w.w.Write(b)
}

// WriteHeader captures the handler's cookies, then exports its header map
// to the real writer, edited, and writes the status. A 1xx status sends
// the map without cookies and leaves the final response to come.
func (w *sessionWriter) WriteHeader(code int) {
	switch {
	case w.wroteHeader || w.hijacked:
		// Superfluous calls, and calls on a hijacked connection, send
		// nothing: net/http ignores and logs them.
		w.w.WriteHeader(code)
		return
	case code >= 100 && code < 200 && code != http.StatusSwitchingProtocols:
		w.writeInformational(code)
		return
	}
	w.wroteHeader, w.status = true, code
	resp := w.response()
	ctx, span := w.h.c.tracer.Start(w.r.Context(), PhaseResponse, &w.x)
	edit, err := w.h.c.Capture(ctx, &w.x, &resp)
	span.End(&w.x, edit.modifies(), err)
	if err != nil {
		w.fail(err)
		return
	}
	w.exportHeader(&edit)
	w.w.WriteHeader(code)
}

// writeInformational sends a 1xx response. net/http sends the header map
// as it is with one (and does not clear it, RFC 8297), so the real map
// gets the handler's fields without Set-Cookie: informational responses
// set no cookies. The handler's Set-Cookie fields stay in its own map for
// the final response, which captures them.
func (w *sessionWriter) writeInformational(code int) {
	if n := w.exportHeader(nil); n > 0 {
		w.h.c.log.LogAttrs(w.r.Context(), slog.LevelInfo, "withheld backend Set-Cookie from an informational response",
			slog.Int("status", code), slog.Int("count", n))
	}
	w.w.WriteHeader(code)
}

// response collects the fields that Capture reads from the handler's
// header map. Keys are matched without regard to case: net/http writes a
// non-canonical key such as "set-cookie" as it is, and browsers honour it.
func (w *sessionWriter) response() Response {
	h := w.header
	resp := Response{
		SetCookie:     h["Set-Cookie"],
		ClearSiteData: h["Clear-Site-Data"],
		CacheControl:  h["Cache-Control"],
	}
	c := w.h.c
	bind := [...]*string{&resp.User, &resp.Sid, &resp.Logout, &resp.Rotate}
	for i, name := range c.binding.canonical {
		if v := h[name]; len(v) > 0 {
			*bind[i] = v[0]
		}
	}
	var odd []string
	for k := range h {
		if fieldIndex(k) >= 0 && k != "Set-Cookie" && k != "Clear-Site-Data" && k != "Cache-Control" {
			odd = append(odd, k)
		} else if i := c.bindingField(k); i >= 0 && k != c.binding.canonical[i] && *bind[i] == "" && len(h[k]) > 0 {
			*bind[i] = h[k][0]
		}
	}
	if odd == nil {
		return resp
	}
	// Rare: sort for a deterministic order; clip so that appending never
	// writes into the handler's arrays.
	slices.Sort(odd)
	fields := [...]*[]string{&resp.SetCookie, &resp.ClearSiteData, &resp.CacheControl}
	for _, k := range odd {
		f := fields[fieldIndex(k)]
		*f = append(slices.Clip(*f), h[k]...)
	}
	return resp
}

// fieldIndex says which of Response's fields a header key names, in any
// case: 0 Set-Cookie, 1 Clear-Site-Data, 2 Cache-Control, or -1. (Keys
// that net/http would not send, such as "Set-Cookie " with a space, are
// not captured; isSetCookieKey keeps them from the browser all the same.)
func fieldIndex(k string) int {
	switch {
	case len(k) == len("Set-Cookie") && strings.EqualFold(k, "Set-Cookie"):
		return 0
	case len(k) == len("Clear-Site-Data") && strings.EqualFold(k, "Clear-Site-Data"):
		return 1
	case len(k) == len("Cache-Control") && strings.EqualFold(k, "Cache-Control"):
		return 2
	}
	return -1
}

// isSetCookieKey reports whether a header map key could put a Set-Cookie
// field on the wire, as a header or a trailer: "Set-Cookie" in any case,
// padded with SP or HTAB, or behind http.TrailerPrefix in any case.
// net/http drops keys that are not tokens, but other writers may not.
func isSetCookieKey(k string) bool {
	if len(k) < len("Set-Cookie") {
		return false
	}
	const prefix = http.TrailerPrefix
	for len(k) > len(prefix) && strings.EqualFold(k[:len(prefix)], prefix) {
		k = trimWSP(k[len(prefix):])
	}
	return strings.EqualFold(trimWSP(k), "Set-Cookie")
}

// exportHeader makes the real header map a copy of the handler's, less
// every Set-Cookie field and the declaration of a Set-Cookie trailer,
// with edit applied when it is not nil. The values are moved, not copied.
// It returns the number of Set-Cookie values left out.
func (w *sessionWriter) exportHeader(edit *ResponseEdit) (withheld int) {
	dst := w.w.Header()
	clear(dst)
	replaceCacheControl := edit != nil && edit.CacheControl != ""
	for k, v := range w.header {
		switch {
		case isSetCookieKey(k):
			withheld += len(v)
			continue
		case w.h.c.isBindingKey(k):
			continue
		case replaceCacheControl && fieldIndex(k) == 2:
			continue
		case len(k) == len("Trailer") && strings.EqualFold(k, "Trailer"):
			if v = withoutSetCookieTrailer(v, w.h.c); len(v) == 0 {
				continue
			}
		}
		dst[k] = v
	}
	if edit != nil {
		if len(edit.SetCookie) > 0 {
			dst["Set-Cookie"] = edit.SetCookie
		}
		if replaceCacheControl {
			dst["Cache-Control"] = []string{edit.CacheControl}
		}
	}
	return withheld
}

// withoutSetCookieTrailer removes "Set-Cookie" from Trailer field values,
// allocating only when there is one.
func withoutSetCookieTrailer(values []string, c ...*Cache) []string {
	drop := func(name string) bool {
		return isSetCookieKey(name) || len(c) > 0 && c[0].isBindingKey(name)
	}
	found := false
	for _, v := range values {
		for name := range trailerNames(v) {
			found = found || drop(name)
		}
	}
	if !found {
		return values
	}
	var out []string
	for _, v := range values {
		var kept []string
		for name := range trailerNames(v) {
			if !drop(name) {
				kept = append(kept, name)
			}
		}
		if len(kept) > 0 {
			out = append(out, strings.Join(kept, ", "))
		}
	}
	return out
}

// trailerNames yields the field names of a Trailer field value, split as
// net/http splits it: at commas, trimmed, empty elements skipped.
func trailerNames(v string) func(yield func(string) bool) {
	return func(yield func(string) bool) {
		for v != "" {
			var name string
			name, v, _ = strings.Cut(v, ",")
			if name = strings.TrimSpace(name); name != "" && !yield(name) {
				return
			}
		}
	}
}

// exportTrailers copies the handler's trailers to the real header map
// once it has returned, which is when net/http reads them: the fields
// declared in the (exported) Trailer header and the http.TrailerPrefix
// keys. Set-Cookie is never among them.
func (w *sessionWriter) exportTrailers() {
	if !w.wroteHeader || w.failed || w.hijacked {
		return
	}
	dst := w.w.Header()
	for k, v := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) && !isSetCookieKey(k) && !w.h.c.isBindingKey(k) {
			dst[k] = v
		}
	}
	for _, line := range dst["Trailer"] {
		for name := range trailerNames(line) {
			if name = http.CanonicalHeaderKey(name); isSetCookieKey(name) || w.h.c.isBindingKey(name) {
				continue
			}
			if v, ok := w.header[name]; ok {
				dst[name] = v
			} else {
				delete(dst, name)
			}
		}
	}
}

// scrub removes anything that could set a cookie from the real header
// map, for a response that an outer middleware finishes after a panic.
// The handler's fields never reached that map unless exported, which
// leaves Set-Cookie out; this covers fields that outer middleware set
// before the panic too.
func (w *sessionWriter) scrub() {
	h := w.w.Header()
	for k := range h {
		if isSetCookieKey(k) || w.h.c.isBindingKey(k) {
			delete(h, k)
		}
	}
	for k, v := range h {
		if len(k) == len("Trailer") && strings.EqualFold(k, "Trailer") {
			if v = withoutSetCookieTrailer(v, w.h.c); len(v) == 0 {
				delete(h, k)
			} else {
				h[k] = v
			}
		}
	}
}

// fail answers 503 in place of the handler's response, dropping every
// header the handler set (its cookies among them).
func (w *sessionWriter) fail(err error) {
	w.h.c.log.LogAttrs(w.r.Context(), slog.LevelError, "session store failed; answering 503",
		slog.String("error", err.Error()))
	w.wroteHeader, w.failed = true, true
	w.status = http.StatusServiceUnavailable
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
	if w.hijacked {
		return http.ErrHijacked
	}
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

// Unwrap gives http.ResponseController access to the other features of
// the underlying writer (deadlines, full duplex).
func (w *sessionWriter) Unwrap() http.ResponseWriter { return w.w }

// isBindingKey reports whether a header map key could put a binding
// header (Config.UserHeader and the others) on the wire, in any case,
// padded, or as a trailer.
func (c *Cache) isBindingKey(k string) bool {
	const prefix = http.TrailerPrefix
	for len(k) > len(prefix) && strings.EqualFold(k[:len(prefix)], prefix) {
		k = trimWSP(k[len(prefix):])
	}
	return c.bindingField(trimWSP(k)) >= 0
}

// deleteFold deletes key from h in any case.
func deleteFold(h http.Header, key string) {
	delete(h, key)
	for k := range h {
		if len(k) == len(key) && strings.EqualFold(k, key) {
			delete(h, k)
		}
	}
}
