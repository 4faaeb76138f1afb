package processor_test

import (
	"bytes"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/proxysession/proxysession/sessions"

	"github.com/proxysession/proxysession/processor/envoytest"
	"github.com/proxysession/proxysession/processor/extproctest"
)

// wantRemoved is what every response reply removes: Set-Cookie and the
// binding headers.
var wantRemoved = []string{"set-cookie", "proxysession-user", "proxysession-sid", "proxysession-logout", "proxysession-rotate"}

// TestBindingHeadersNeverLeak: the binding headers are removed from
// every response, with or without a session, with binding off.
func TestBindingHeadersNeverLeak(t *testing.T) {
	h := newHarness(t, testConfig, demoBackend())
	for _, withSession := range []bool{false, true} {
		stream := openStream(t, h)
		extproctest.Send(t, stream, envoytest.RequestHeaders(":authority", "app.test", ":path", "/", ":method", "GET", ":scheme", "https"))
		kv := []string{":status", "200", "Proxysession-User", "alice", "proxysession-sid", "s1", "proxysession-logout", "user", "PROXYSESSION-ROTATE", "1"}
		if withSession {
			kv = append(kv, "set-cookie", "sid=1; Path=/")
		}
		resp := extproctest.Send(t, stream, envoytest.ResponseHeaders(kv...))
		m := resp.GetResponseHeaders().GetResponse().GetHeaderMutation()
		for _, name := range wantRemoved {
			if !slices.Contains(m.GetRemoveHeaders(), name) {
				t.Errorf("session %v: %q not removed: %v", withSession, name, m)
			}
		}
	}
}

// TestBindingThroughEnvoy: with binding on and custom header names, a
// login through the filter binds and rotates, the backend learns the
// session's handle (never the browser's), and the logout header ends
// the session; no binding header reaches the browser.
func TestBindingThroughEnvoy(t *testing.T) {
	var handles []string
	backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handles = append(handles, r.Header.Get("X-Handle"))
		switch r.URL.Path {
		case "/start":
			http.SetCookie(w, &http.Cookie{Name: "sid", Value: "1", Path: "/"})
		case "/login":
			w.Header().Set("X-User", "alice")
		case "/logout":
			w.Header().Set("X-Logout", "user")
		}
	})
	cfg := sessions.Config{BindingKey: bytes.Repeat([]byte("k"), 32), UserHeader: "X-User", SidHeader: "X-Sid",
		LogoutHeader: "X-Logout", RotateHeader: "X-Rotate", SessionHandleHeader: "X-Handle"}
	h := newHarness(t, cfg, backend)
	browser := envoytest.NewBrowser(h.filter)
	var cookies []string
	for _, path := range []string{"/start", "/login", "/page", "/logout", "/page"} {
		req, _ := http.NewRequest("GET", "https://app.test"+path, nil)
		req.Header.Set("X-Handle", "spoofed")
		resp, err := browser.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		for k := range resp.Header {
			if strings.EqualFold(k, "X-User") || strings.EqualFold(k, "X-Logout") {
				t.Errorf("%s: %s reached the browser", path, k)
			}
		}
		u, _ := url.Parse("https://app.test/")
		var v string
		for _, c := range browser.Jar.Cookies(u) {
			v += c.Value
		}
		cookies = append(cookies, v)
	}
	if cookies[1] == cookies[0] || cookies[1] == "" {
		t.Error("login did not rotate the session id")
	}
	if cookies[3] != "" {
		t.Error("logout header left the session cookie")
	}
	for i, hd := range handles {
		if hd == "spoofed" {
			t.Errorf("request %d: the browser's handle reached the backend", i)
		}
	}
	if handles[2] == "" {
		t.Errorf("no handle after login: %q", handles)
	}
	if got := h.cache.Stats().Rotations; got != 1 {
		t.Errorf("Rotations = %d", got)
	}
}
