package sessions

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestSeedDeploymentKeepsSecureCookies is the inverting proxy's own
// deployment: NewCache(name, ttl, n, false) behind a proxy that ends TLS,
// plain http on the last hop. The session cookie is Secure, so the
// browser-facing origin is secure and Secure backend cookies are stored
// and sent.
func TestSeedDeploymentKeepsSecureCookies(t *testing.T) {
	c := NewCache("proxy-session", time.Hour, 100, false)
	c.log = testLogger(t)
	backend := http.NewServeMux()
	backend.HandleFunc("/login", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Set-Cookie", "sid=secret; Path=/; Secure; HttpOnly")
	})
	backend.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Header.Get("Cookie"))
	})
	plain := httptest.NewServer(c.SessionHandler(backend, nil))
	defer plain.Close()
	target, _ := url.Parse(plain.URL)
	// The public name the TLS proxy serves (not loopback, which browsers
	// would treat as secure anyway).
	front := httptest.NewTLSServer(&httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		pr.SetURL(target)
		pr.Out.Host = "app.example"
	}})
	defer front.Close()

	client := front.Client()
	client.Jar, _ = cookiejar.New(nil)
	for _, path := range []string{"/login", "/echo"} {
		resp, err := client.Get(front.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if path == "/echo" && string(body) != "sid=secret" {
			t.Errorf("backend saw Cookie %q, want sid=secret", body)
		}
	}
	if n := c.Stats().CookiesRejected[RejectSecureFromInsecure]; n != 0 {
		t.Errorf("secure_from_insecure = %d, want 0", n)
	}
}

// TestTwoValidSessionsUseNeither: a session cookie tossed from a sibling
// subdomain sits beside the victim's. Choosing either could let the
// attacker's session collect the victim's login, so neither is used and
// the response cannot create or feed a session.
func TestTwoValidSessionsUseNeither(t *testing.T) {
	c := newTestCache(t, Config{CookieName: "proxysession"})
	u := mustURL(t, "https://app.example.com/")
	victim := exchange(t, c, u, nil, []string{"v=1"})
	attacker := exchange(t, c, u, nil, []string{"a=1"})
	both := browserJar{}
	both["proxysession"] = attacker["proxysession"] + "; proxysession=" + victim["proxysession"]

	x := expand(t, c, u, both)
	if x.HasSession() || strings.Contains(x.Cookie, "v=1") || strings.Contains(x.Cookie, "a=1") || strings.Contains(x.Cookie, "proxysession") {
		t.Errorf("conflicting sessions: HasSession %v, Cookie %q", x.HasSession(), x.Cookie)
	}
	edit, err := c.Capture(t.Context(), x, &Response{SetCookie: []string{"login=token"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(edit.SetCookie) != 0 || !edit.RemoveSetCookie {
		t.Errorf("edit = %+v, want the backend cookie dropped and no session cookie", edit)
	}
	for name, jar := range map[string]browserJar{"victim": victim, "attacker": attacker} {
		if x := expand(t, c, u, jar); strings.Contains(x.Cookie, "login=") {
			t.Errorf("%s's session collected the login: %q", name, x.Cookie)
		}
	}
	st := c.Stats()
	if st.SessionConflicts != 1 || st.CookiesRejected[RejectSessionConflict] != 1 || st.SessionsCreated != 2 {
		t.Errorf("stats = %+v", st)
	}

	// The same session cookie twice is one session.
	twice := browserJar{"proxysession": victim["proxysession"] + "; proxysession=" + victim["proxysession"]}
	if x := expand(t, c, u, twice); !x.HasSession() || x.Cookie != "v=1" {
		t.Errorf("duplicate session cookie: HasSession %v, Cookie %q", x.HasSession(), x.Cookie)
	}
}

func TestSameSiteNoneNeedsSecure(t *testing.T) {
	c := newTestCache(t, Config{})
	u := mustURL(t, "https://example.com/")
	b := exchange(t, c, u, nil, []string{"ok=1; SameSite=None; Secure", "bad=1; SameSite=None"})
	if x := expand(t, c, u, b); x.Cookie != "ok=1" {
		t.Errorf("Cookie = %q, want ok=1", x.Cookie)
	}
	if n := c.Stats().CookiesRejected[RejectSameSiteNoneInsecure]; n != 1 {
		t.Errorf("samesite_none_insecure = %d, want 1", n)
	}
}

// TestRemovedSetCookieMakesResponsePrivate: a response whose cookies the
// proxy took is personalised even when it issues no session cookie.
func TestRemovedSetCookieMakesResponsePrivate(t *testing.T) {
	c := newTestCache(t, Config{})
	u := mustURL(t, "https://example.com/")
	b := exchange(t, c, u, nil, []string{"a=1"})
	x := expand(t, c, u, b)
	edit, err := c.Capture(t.Context(), x, &Response{SetCookie: []string{"b=2"}, CacheControl: []string{"public, max-age=60"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(edit.SetCookie) != 0 || edit.CacheControl != "max-age=60, private" {
		t.Errorf("edit = %+v, want Cache-Control \"max-age=60, private\"", edit)
	}
}

func TestWarnsAboutWeakSessionCookie(t *testing.T) {
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{}, ""},
		{Config{CookieName: "sess"}, "lacks the __Host- prefix"},
		{Config{CookieName: "__Secure-sess"}, "lacks the __Host- prefix"},
		{Config{InsecureCookie: true}, ""},
		{Config{TrustForwardedProto: true}, "TrustForwardedProto has no effect"},
		{Config{InsecureCookie: true, TrustForwardedProto: true}, ""},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		tt.cfg.Logger = slog.New(slog.NewTextHandler(&buf, nil))
		if _, err := New(tt.cfg); err != nil {
			t.Fatal(err)
		}
		if got := buf.String(); (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
			t.Errorf("New(%+v) logged %q, want %q", tt.cfg, got, tt.want)
		}
	}
}
