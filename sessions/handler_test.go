package sessions

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/publicsuffix"
)

const (
	backendCookie   = "backend-cookie"
	sessionCookie   = "proxy-sessions-cookie"
	sessionLifetime = 10 * time.Second
	sessionCount    = 100
)

// redirectingBackend sets a cookie and redirects when the request has
// none, as the inverting proxy's tests do; it records the cookie it sees.
func redirectingBackend(t *testing.T) (http.Handler, string) {
	value := rand.Text()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := r.Cookie(backendCookie)
		if err != nil {
			http.SetCookie(w, &http.Cookie{Name: backendCookie, Value: value, HttpOnly: true})
			http.Redirect(w, r, r.URL.String(), http.StatusTemporaryRedirect)
			return
		}
		if c.Value != value {
			t.Errorf("backend got cookie %q, want %q", c.Value, value)
		}
		if _, err := r.Cookie(sessionCookie); err == nil {
			t.Error("backend got the proxy's session cookie")
		}
		io.WriteString(w, "OK")
	}), value
}

// browserClient returns a client with a real cookie jar, the browser.
func browserClient(t *testing.T, server *httptest.Server) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(&cookiejar.Options{PublicSuffixList: publicsuffix.List})
	if err != nil {
		t.Fatal(err)
	}
	client := *server.Client()
	client.Jar = jar
	return &client
}

func get(t *testing.T, client *http.Client, u string) *http.Response {
	t.Helper()
	resp, err := client.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// TestSessionsEnabled is the inverting proxy's scenario: the backend sets
// a cookie and redirects; the browser ends up holding only the session
// cookie, and the backend sees its own cookie after the redirect.
func TestSessionsEnabled(t *testing.T) {
	backend, _ := redirectingBackend(t)
	c := NewCache(sessionCookie, sessionLifetime, sessionCount, true)
	server := httptest.NewServer(c.SessionHandler(backend, nil))
	defer server.Close()
	client := browserClient(t, server)

	if resp := get(t, client, server.URL); resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d", resp.StatusCode)
	}
	cookies := client.Jar.Cookies(mustURL(t, server.URL))
	if len(cookies) != 1 || cookies[0].Name != sessionCookie {
		t.Errorf("browser holds %v, want only the session cookie", cookies)
	}
}

// TestSessionsEnabledOverTLS: with the default (secure) settings the
// session cookie is Secure and works over https.
func TestSessionsEnabledOverTLS(t *testing.T) {
	backend, _ := redirectingBackend(t)
	c := newTestCache(t, Config{CookieName: sessionCookie})
	server := httptest.NewTLSServer(c.SessionHandler(backend, nil))
	defer server.Close()
	client := browserClient(t, server)
	if resp := get(t, client, server.URL+"/app"); resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d", resp.StatusCode)
	}
	cookies := client.Jar.Cookies(mustURL(t, server.URL))
	if len(cookies) != 1 || cookies[0].Name != sessionCookie {
		t.Errorf("browser holds %v", cookies)
	}
}

func TestSessionsDisabled(t *testing.T) {
	backend, _ := redirectingBackend(t)
	var c *Cache
	server := httptest.NewServer(c.SessionHandler(backend, nil))
	defer server.Close()
	client := browserClient(t, server)
	get(t, client, server.URL)
	cookies := client.Jar.Cookies(mustURL(t, server.URL))
	if len(cookies) != 1 || cookies[0].Name != backendCookie {
		t.Errorf("browser holds %v, want the backend's cookie", cookies)
	}
}

// TestNoSessionWithoutBackendCookies deliberately differs from the
// inverting proxy, which gave every visitor a session: sessions are
// created only when there is a cookie to keep.
func TestNoSessionWithoutBackendCookies(t *testing.T) {
	c := NewCache(sessionCookie, sessionLifetime, sessionCount, true)
	server := httptest.NewServer(c.SessionHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "OK")
	}), nil))
	defer server.Close()
	resp := get(t, server.Client(), server.URL)
	if len(resp.Cookies()) != 0 || c.Stats().SessionsActive != 0 {
		t.Errorf("anonymous request got cookies %v", resp.Cookies())
	}
}

func TestNewCachePanicsOnInvalidSettings(t *testing.T) {
	for _, name := range []string{"bad name", "__Host-s"} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewCache(%q, insecure) did not panic", name)
				}
			}()
			NewCache(name, time.Hour, 10, true)
		}()
	}
	if c := NewCache("ok", 0, 0, false); c.cfg.Lifetime != DefaultLifetime || c.cfg.MaxSessions != DefaultMaxSessions {
		t.Errorf("zero lifetime and limit did not take the defaults: %+v", c.cfg)
	}
}

// serve runs one request through a SessionHandler around h.
func serve(c *Cache, h http.HandlerFunc, metrics ResponseCodeMetrics, cookies ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, "https://example.com/", nil)
	for _, v := range cookies {
		r.Header.Add("Cookie", v)
	}
	w := httptest.NewRecorder()
	c.SessionHandler(h, metrics).ServeHTTP(w, r)
	return w
}

type recordedCodes struct {
	mu    sync.Mutex
	codes []int
}

func (r *recordedCodes) WriteResponseCodeMetric(code int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.codes = append(r.codes, code)
	return nil
}

func TestHandlerNeverLeaksBackendCookies(t *testing.T) {
	tests := []struct {
		name string
		h    http.HandlerFunc
	}{
		{"handler never writes", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Add("Set-Cookie", "sid=1")
		}},
		{"write without WriteHeader", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Add("Set-Cookie", "sid=1")
			io.WriteString(w, "body")
		}},
		{"flush first", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Add("Set-Cookie", "sid=1")
			if err := http.NewResponseController(w).Flush(); err != nil {
				t.Error(err)
			}
		}},
		{"legacy flusher", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Add("Set-Cookie", "sid=1")
			w.(http.Flusher).Flush()
		}},
		{"explicit status", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Add("Set-Cookie", "sid=1")
			w.WriteHeader(http.StatusCreated)
			w.WriteHeader(http.StatusTeapot) // superfluous, ignored by net/http
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Config{})
			w := serve(c, tt.h, nil)
			got := w.Result().Header.Values("Set-Cookie")
			if len(got) != 1 || !strings.HasPrefix(got[0], DefaultCookieName+"=") {
				t.Errorf("browser got Set-Cookie %q, want only the session cookie", got)
			}
		})
	}
}

func TestHandlerMetrics(t *testing.T) {
	c := newTestCache(t, Config{})
	var m recordedCodes
	serve(c, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "x") }, &m)
	serve(c, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNotFound) }, &m)
	if len(m.codes) != 1 || m.codes[0] != http.StatusOK {
		t.Errorf("metrics = %v, want the implicit 200 only", m.codes)
	}
}

// failingStore fails every operation, as an unreachable shared store does.
type failingStore struct{}

var errUnreachable = errors.New("store unreachable")

func (failingStore) Find(context.Context, ID) (*Session, error)       { return nil, errUnreachable }
func (failingStore) Commit(context.Context, *Session, *Changes) error { return errUnreachable }
func (failingStore) Delete(context.Context, ID) error                 { return errUnreachable }
func (failingStore) Ping(context.Context) error                       { return errUnreachable }

func TestHandlerFailsClosed(t *testing.T) {
	c := newTestCache(t, Config{Store: failingStore{}})
	var m recordedCodes
	called := false
	backend := func(w http.ResponseWriter, r *http.Request) {
		called = true
		w.Header().Set("Set-Cookie", "sid=1")
		w.Header().Set("X-Backend", "1")
		io.WriteString(w, "secret page")
	}

	// A request with a session cookie cannot be served without its jar.
	w := serve(c, backend, &m, DefaultCookieName+"="+newID().CookieValue())
	if called || w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Errorf("with session cookie: called=%v status=%d headers=%v", called, w.Code, w.Header())
	}
	// A response whose cookies cannot be stored must not reach the browser.
	w = serve(c, backend, &m)
	if !called || w.Code != http.StatusServiceUnavailable || w.Header().Get("Set-Cookie") != "" ||
		w.Header().Get("X-Backend") != "" || strings.Contains(w.Body.String(), "secret") {
		t.Errorf("new session: status=%d headers=%v body=%q", w.Code, w.Header(), w.Body.String())
	}
	if len(m.codes) != 2 || m.codes[0] != 503 || m.codes[1] != 503 {
		t.Errorf("metrics = %v", m.codes)
	}
	if err := c.Check(context.Background()); !errors.Is(err, errUnreachable) {
		t.Errorf("Check = %v", err)
	}
}

func TestHandlerForwardsRewrittenCookieHeader(t *testing.T) {
	c := newTestCache(t, Config{})
	w := serve(c, func(w http.ResponseWriter, r *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: "sid", Value: "1"})
	}, nil)
	session := w.Result().Cookies()[0]
	var seen []string
	serve(c, func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header.Values("Cookie")
	}, nil, "a=1", session.Name+"="+session.Value+"; b=2")
	if len(seen) != 1 || seen[0] != "sid=1; a=1; b=2" {
		t.Errorf("backend saw Cookie %q", seen)
	}
	serve(c, func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header.Values("Cookie")
	}, nil, DefaultCookieName+"=stale")
	if len(seen) != 0 {
		t.Errorf("backend saw Cookie %q, want none", seen)
	}
}

// TestHandlerUsesForwardedProto: with an insecure session cookie the
// request's scheme decides, and TrustForwardedProto takes it from the
// proxy in front.
func TestHandlerUsesForwardedProto(t *testing.T) {
	c := newTestCache(t, Config{InsecureCookie: true, TrustForwardedProto: true})
	r := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	r.Header.Set("X-Forwarded-Proto", "https")
	w := httptest.NewRecorder()
	c.SessionHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Set-Cookie", "s=1; Secure")
	}), nil).ServeHTTP(w, r)
	if got := w.Result().Cookies(); len(got) != 1 || got[0].Name != DefaultInsecureCookieName {
		t.Errorf("Secure cookie behind a TLS-terminating proxy: browser got %v", got)
	}
	if c.Stats().CookiesStored != 1 {
		t.Error("Secure cookie not stored")
	}
}
