package sessions

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxysession/proxysession/internal/browsertest"
)

// testClock is a settable clock for lifetime tests.
type testClock = browsertest.Clock

func newTestClock() *testClock {
	return browsertest.NewClock(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
}

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// roundTrip runs one full exchange with explicit request and response
// details and returns the request's Exchange and the response edit.
func roundTrip(t *testing.T, c *Cache, req *Request, resp *Response) (*Exchange, ResponseEdit) {
	t.Helper()
	var x Exchange
	if err := c.Expand(context.Background(), req, &x); err != nil {
		t.Fatalf("Expand: %v", err)
	}
	if resp == nil {
		resp = &Response{}
	}
	edit, err := c.Capture(context.Background(), &x, resp)
	if err != nil {
		t.Fatalf("Capture: %v", err)
	}
	return &x, edit
}

func parseSetCookies(t *testing.T, lines []string) []*http.Cookie {
	t.Helper()
	var cs []*http.Cookie
	for _, l := range lines {
		c, err := http.ParseSetCookie(l)
		if err != nil {
			t.Fatalf("invalid Set-Cookie %q: %v", l, err)
		}
		cs = append(cs, c)
	}
	return cs
}

func TestAnonymousTrafficCreatesNoSession(t *testing.T) {
	c := newTestCache(t, Config{})
	x, edit := roundTrip(t, c,
		&Request{Scheme: "https", Host: "example.com", Path: "/", Cookies: []string{"theme=dark"}},
		&Response{CacheControl: []string{"public, max-age=60"}})
	if x.RewriteCookie || x.HasSession() {
		t.Errorf("request changed: rewrite=%v session=%v", x.RewriteCookie, x.HasSession())
	}
	if edit.RemoveSetCookie || len(edit.SetCookie) != 0 || edit.CacheControl != "" {
		t.Errorf("response changed: %+v", edit)
	}
	if st := c.Stats(); st.SessionsCreated != 0 || st.SessionsActive != 0 {
		t.Errorf("stats = %+v, want no session", st)
	}
}

func TestNewSessionCookie(t *testing.T) {
	c := newTestCache(t, Config{})
	_, edit := roundTrip(t, c,
		&Request{Scheme: "https", Host: "example.com", Path: "/login"},
		&Response{SetCookie: []string{"sid=123; Path=/; HttpOnly", "pref=x"}, CacheControl: []string{"public, max-age=600"}})
	if !edit.RemoveSetCookie {
		t.Error("backend Set-Cookie not removed")
	}
	cs := parseSetCookies(t, edit.SetCookie)
	if len(cs) != 1 {
		t.Fatalf("browser gets %d cookies, want only the session cookie: %q", len(cs), edit.SetCookie)
	}
	sc := cs[0]
	if sc.Name != "__Host-proxysession" || sc.Path != "/" || !sc.HttpOnly || !sc.Secure ||
		sc.SameSite != http.SameSiteLaxMode || sc.MaxAge != int(DefaultLifetime/time.Second) || sc.Domain != "" {
		t.Errorf("session cookie = %q", edit.SetCookie[0])
	}
	if _, ok := ParseID(sc.Value); !ok {
		t.Errorf("session cookie value %q is not an id", sc.Value)
	}
	if edit.CacheControl != "max-age=600, private" {
		t.Errorf("Cache-Control = %q, want shared caches kept out", edit.CacheControl)
	}

	x, _ := roundTrip(t, c, &Request{Scheme: "https", Host: "example.com", Path: "/home",
		Cookies: []string{"theme=dark; " + sc.Name + "=" + sc.Value}}, nil)
	if !x.HasSession() || !x.RewriteCookie || x.Cookie != "sid=123; pref=x; theme=dark" {
		t.Errorf("backend Cookie = %q (rewrite %v, session %v), want jar cookies then browser cookies without the session cookie",
			x.Cookie, x.RewriteCookie, x.HasSession())
	}
	if st := c.Stats(); st.SessionsCreated != 1 || st.SessionsActive != 1 || st.CookiesStored != 2 {
		t.Errorf("stats = %+v", st)
	}
}

func TestInsecureCookieConfig(t *testing.T) {
	c := newTestCache(t, Config{InsecureCookie: true, SameSite: SameSiteStrict, Lifetime: time.Hour})
	_, edit := roundTrip(t, c, &Request{Scheme: "http", Host: "app.test", Path: "/"},
		&Response{SetCookie: []string{"a=b"}})
	cs := parseSetCookies(t, edit.SetCookie)
	if len(cs) != 1 || cs[0].Name != DefaultInsecureCookieName || cs[0].Secure || cs[0].SameSite != http.SameSiteStrictMode || cs[0].MaxAge != 3600 {
		t.Errorf("session cookie = %q", edit.SetCookie)
	}
}

// TestSessionFixation: only ids the cache issued are accepted; a stale or
// forged session cookie is expired, and a new session never reuses it.
func TestSessionFixation(t *testing.T) {
	c := newTestCache(t, Config{})
	forged := newID().CookieValue()
	_, edit := roundTrip(t, c, &Request{Scheme: "https", Host: "example.com", Path: "/"}, &Response{SetCookie: []string{"a=1"}})
	real := parseSetCookies(t, edit.SetCookie)[0]
	realID, _ := ParseID(real.Value)
	var sameKey ID // the real id's key with another secret
	copy(sameKey.b[:idKeyBytes], realID.b[:idKeyBytes])

	for _, tc := range []struct{ name, value string }{
		{"unknown id", forged},
		{"malformed id", "not-an-id"},
		{"right key, wrong secret", sameKey.CookieValue()},
		{"padded id", real.Value + "="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := &Request{Scheme: "https", Host: "example.com", Path: "/", Cookies: []string{"__Host-proxysession=" + tc.value + "; other=1"}}
			x, edit := roundTrip(t, c, req, nil)
			if x.HasSession() || x.Cookie != "other=1" {
				t.Errorf("got session %v, backend Cookie %q", x.HasSession(), x.Cookie)
			}
			if len(edit.SetCookie) != 1 || !strings.HasPrefix(edit.SetCookie[0], "__Host-proxysession=; Path=/; Max-Age=0") {
				t.Errorf("stale cookie not expired: %q", edit.SetCookie)
			}
			// When the backend sets a cookie, a new session gets a fresh id.
			_, edit = roundTrip(t, c, req, &Response{SetCookie: []string{"b=2"}})
			cs := parseSetCookies(t, edit.SetCookie)
			if len(cs) != 1 || cs[0].MaxAge <= 0 || cs[0].Value == tc.value || cs[0].Value == real.Value {
				t.Errorf("new session cookie = %q", edit.SetCookie)
			}
		})
	}
	if got := c.Stats().UnknownSessionIDs; got != 8 {
		t.Errorf("UnknownSessionIDs = %d, want 8", got)
	}
	// The real session is untouched.
	x := expand(t, c, mustURL(t, "https://example.com/"), browserJar{real.Name: real.Value})
	if x.Cookie != "a=1" {
		t.Errorf("real session Cookie = %q", x.Cookie)
	}
}

func TestSessionLifetimes(t *testing.T) {
	clock := newTestClock()
	c := newTestCache(t, Config{Lifetime: 10 * time.Hour, IdleTimeout: time.Hour, Now: clock.Now})
	u := mustURL(t, "https://example.com/")
	newSessionJar := func() browserJar { return exchange(t, c, u, nil, []string{"a=1"}) }

	t.Run("idle activity keeps the session", func(t *testing.T) {
		b := newSessionJar()
		for range 5 {
			clock.Advance(59 * time.Minute)
			if x := expand(t, c, u, b); x.Cookie != "a=1" {
				t.Fatalf("after activity Cookie = %q", x.Cookie)
			}
		}
	})
	t.Run("idle timeout ends it", func(t *testing.T) {
		b := newSessionJar()
		clock.Advance(time.Hour)
		x := expand(t, c, u, b)
		if x.HasSession() || x.Cookie != "" {
			t.Errorf("idle session still served: %q", x.Cookie)
		}
		if got := c.Stats().SessionsEnded[EndIdle]; got != 1 {
			t.Errorf("ended idle = %d", got)
		}
	})
	t.Run("absolute lifetime ends it", func(t *testing.T) {
		b := newSessionJar()
		for range 20 {
			clock.Advance(30 * time.Minute)
			expand(t, c, u, b)
		}
		if x := expand(t, c, u, b); x.HasSession() {
			t.Error("session outlived its absolute lifetime")
		}
		if got := c.Stats().SessionsEnded[EndExpired]; got != 1 {
			t.Errorf("ended expired = %d", got)
		}
	})
}

func TestBackendCannotSetSessionCookie(t *testing.T) {
	c := newTestCache(t, Config{})
	_, edit := roundTrip(t, c, &Request{Scheme: "https", Host: "example.com", Path: "/"},
		&Response{SetCookie: []string{"__Host-proxysession=evil; Secure; Path=/"}})
	if !edit.RemoveSetCookie || len(edit.SetCookie) != 0 {
		t.Errorf("edit = %+v, want the backend's cookie removed and nothing issued", edit)
	}
	if st := c.Stats(); st.CookiesRejected[RejectSessionName] != 1 || st.SessionsCreated != 0 {
		t.Errorf("stats = %+v", st)
	}
}

func TestStoredCookieWinsOverBrowserCookie(t *testing.T) {
	c := newTestCache(t, Config{})
	u := mustURL(t, "https://example.com/")
	b := exchange(t, c, u, nil, []string{"role=user"})
	b["role"] = "admin"
	b["lang"] = "en"
	x := expand(t, c, u, b)
	if !strings.HasPrefix(x.Cookie, "role=user; ") || strings.Contains(x.Cookie, "admin") || !strings.Contains(x.Cookie, "lang=en") {
		t.Errorf("Cookie = %q, want the stored role and the browser's lang", x.Cookie)
	}
}

func TestStripBrowserCookies(t *testing.T) {
	c := newTestCache(t, Config{StripBrowserCookies: true, PassThrough: []string{"XSRF-TOKEN"}})
	u := mustURL(t, "https://example.com/")
	x := expand(t, c, u, browserJar{"tracker": "1", "XSRF-TOKEN": "t"})
	if !x.RewriteCookie || x.Cookie != "XSRF-TOKEN=t" {
		t.Errorf("Cookie = %q (rewrite %v)", x.Cookie, x.RewriteCookie)
	}
	b := exchange(t, c, u, browserJar{"tracker": "1"}, []string{"sid=9"})
	if x := expand(t, c, u, b); x.Cookie != "sid=9" {
		t.Errorf("Cookie = %q, want only the jar's", x.Cookie)
	}
}

func TestPassThroughCookies(t *testing.T) {
	c := newTestCache(t, Config{PassThrough: []string{"XSRF-TOKEN", "_xsrf"}})
	lines := []string{"XSRF-TOKEN=abc;  Path=/; SameSite=Strict", "sid=1", "_xsrf=2|x"}
	_, edit := roundTrip(t, c, &Request{Scheme: "https", Host: "example.com", Path: "/"}, &Response{SetCookie: lines})
	if len(edit.SetCookie) != 3 || edit.SetCookie[0] != lines[0] || edit.SetCookie[1] != lines[2] ||
		!strings.HasPrefix(edit.SetCookie[2], "__Host-proxysession=") {
		t.Fatalf("browser gets %q, want the pass-through lines verbatim and the session cookie", edit.SetCookie)
	}
	b := browserJar{}
	b.Apply(t, edit.SetCookie)
	if x := expand(t, c, mustURL(t, "https://example.com/"), b); !strings.HasPrefix(x.Cookie, "sid=1; ") ||
		!strings.Contains(x.Cookie, "XSRF-TOKEN=abc") || !strings.Contains(x.Cookie, "_xsrf=2|x") {
		t.Errorf("Cookie = %q", x.Cookie)
	}
	if got := c.Stats().CookiesPassed; got != 2 {
		t.Errorf("CookiesPassed = %d", got)
	}
}

func TestLogoutClearSiteData(t *testing.T) {
	c := newTestCache(t, Config{PassThrough: []string{"flash"}})
	u := mustURL(t, "https://example.com/")
	b := exchange(t, c, u, nil, []string{"sid=1"})
	old := b["__Host-proxysession"]

	x, edit := roundTrip(t, c, requestFor(u, b), &Response{
		ClearSiteData: []string{`"cache", "cookies"`},
		SetCookie:     []string{"sid=2", "flash=bye"},
	})
	if x.HasSession() {
		t.Error("session survived logout")
	}
	if len(edit.SetCookie) != 2 || edit.SetCookie[0] != "flash=bye" ||
		!strings.HasPrefix(edit.SetCookie[1], "__Host-proxysession=; Path=/; Max-Age=0") || edit.CacheControl != "private" {
		t.Errorf("logout response edit = %+v", edit)
	}
	x = expand(t, c, u, browserJar{"__Host-proxysession": old})
	if x.HasSession() || x.Cookie != "" {
		t.Errorf("old session cookie still works: %q", x.Cookie)
	}
	st := c.Stats()
	if st.SessionsEnded[EndLogout] != 1 || st.CookiesRejected[RejectSessionEnded] != 1 || st.SessionsActive != 0 {
		t.Errorf("stats = %+v", st)
	}
}

// TestSecureOrigin: with a Secure session cookie every browser-facing
// origin is secure, whatever the last hop's scheme (TLS ended at a load
// balancer, the seed's plain-http deployment); only with an insecure
// session cookie does the request's own scheme decide.
func TestSecureOrigin(t *testing.T) {
	tests := []struct {
		name       string
		insecure   bool // InsecureCookie
		trust      bool
		scheme     string
		host       string
		fwd        string
		wantSecure bool
	}{
		{name: "secure cookie, https", scheme: "https", host: "example.com", wantSecure: true},
		{name: "secure cookie, http last hop", scheme: "http", host: "example.com", wantSecure: true},
		{name: "secure cookie, forwarded http", scheme: "http", host: "example.com", fwd: "http", wantSecure: true},
		{name: "secure cookie, trusted forwarded http", trust: true, scheme: "http", host: "example.com", fwd: "http", wantSecure: true},
		{name: "insecure cookie, https", insecure: true, scheme: "https", host: "example.com", wantSecure: true},
		{name: "insecure cookie, http", insecure: true, scheme: "http", host: "example.com"},
		{name: "insecure cookie, untrusted forwarded proto", insecure: true, scheme: "http", host: "example.com", fwd: "https"},
		{name: "insecure cookie, trusted forwarded proto", insecure: true, trust: true, scheme: "http", host: "example.com", fwd: "https", wantSecure: true},
		{name: "insecure cookie, first forwarded proto wins", insecure: true, trust: true, scheme: "https", host: "example.com", fwd: "http, https"},
		{name: "insecure cookie, localhost", insecure: true, scheme: "http", host: "localhost:8080", wantSecure: true},
		{name: "insecure cookie, loopback ip", insecure: true, scheme: "http", host: "127.0.0.1:8080", wantSecure: true},
		{name: "insecure cookie, loopback v6", insecure: true, scheme: "http", host: "[::1]:8080", wantSecure: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Config{InsecureCookie: tt.insecure, TrustForwardedProto: tt.trust})
			req := &Request{Scheme: tt.scheme, Host: tt.host, Path: "/", ForwardedProto: tt.fwd}
			_, edit := roundTrip(t, c, req, &Response{SetCookie: []string{"s=1; Secure", "p=2"}})
			b := browserJar{}
			b.Apply(t, edit.SetCookie)
			req.Cookies = b.Header()
			x, _ := roundTrip(t, c, req, nil)
			want := "p=2"
			if tt.wantSecure {
				want = "s=1; p=2"
			}
			if x.Cookie != want {
				t.Errorf("Cookie = %q, want %q", x.Cookie, want)
			}
			if rejected := c.Stats().CookiesRejected[RejectSecureFromInsecure]; rejected != 0 == tt.wantSecure {
				t.Errorf("secure_from_insecure rejections = %d, want secure origin %v", rejected, tt.wantSecure)
			}
		})
	}
}

func TestInsecureOriginCannotShadowSecureCookie(t *testing.T) {
	c := newTestCache(t, Config{InsecureCookie: true})
	b := exchange(t, c, mustURL(t, "https://example.com/login"), nil, []string{"a=1; Secure; Path=/login"})
	exchange(t, c, mustURL(t, "http://example.com/"), b, []string{"a=2; Path=/login/en", "a=3; Path=/"})
	if x := expand(t, c, mustURL(t, "https://example.com/login/en"), b); x.Cookie != "a=1; a=3" {
		t.Errorf("Cookie = %q, want the secure cookie kept and the / one added", x.Cookie)
	}
	if got := c.Stats().CookiesRejected[RejectOverwritesSecure]; got != 1 {
		t.Errorf("rejected overwrites_secure = %d", got)
	}
}

func TestSameSite(t *testing.T) {
	c := newTestCache(t, Config{})
	u := mustURL(t, "https://example.com/")
	b := exchange(t, c, u, nil, []string{"strict=1; SameSite=Strict", "lax=1; SameSite=Lax", "none=1; SameSite=None; Secure", "default=1"})
	tests := []struct {
		name                    string
		method, site, mode, dst string
		want                    string
	}{
		{"no fetch metadata", "POST", "", "", "", "strict=1; lax=1; none=1; default=1"},
		{"same-origin", "POST", "same-origin", "cors", "empty", "strict=1; lax=1; none=1; default=1"},
		{"same-site", "GET", "same-site", "no-cors", "image", "strict=1; lax=1; none=1; default=1"},
		{"user typed it", "GET", "none", "navigate", "document", "strict=1; lax=1; none=1; default=1"},
		{"cross-site top-level GET", "GET", "cross-site", "navigate", "document", "lax=1; none=1; default=1"},
		{"cross-site top-level HEAD", "HEAD", "cross-site", "navigate", "", "lax=1; none=1; default=1"},
		{"cross-site top-level POST", "POST", "cross-site", "navigate", "document", "none=1"},
		{"cross-site iframe", "GET", "cross-site", "navigate", "iframe", "none=1"},
		{"cross-site subresource", "GET", "cross-site", "no-cors", "image", "none=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := &Request{Scheme: "https", Host: "example.com", Path: "/", Method: tt.method, Cookies: b.Header(),
				FetchSite: tt.site, FetchMode: tt.mode, FetchDest: tt.dst}
			x, _ := roundTrip(t, c, req, nil)
			if x.Cookie != tt.want {
				t.Errorf("Cookie = %q, want %q", x.Cookie, tt.want)
			}
		})
	}

	// A cross-site subresource cannot plant SameSite cookies either.
	req := &Request{Scheme: "https", Host: "example.com", Path: "/", Cookies: b.Header(), FetchSite: "cross-site", FetchMode: "no-cors"}
	roundTrip(t, c, req, &Response{SetCookie: []string{"lax=2; SameSite=Lax", "none=2; SameSite=None; Secure"}})
	if x := expand(t, c, u, b); x.Cookie != "strict=1; lax=1; none=2; default=1" {
		t.Errorf("after a cross-site response Cookie = %q", x.Cookie)
	}
	if got := c.Stats().CookiesRejected[RejectCrossSite]; got != 1 {
		t.Errorf("rejected cross_site = %d", got)
	}
}

func TestCookieHeaderIsByteExact(t *testing.T) {
	c := newTestCache(t, Config{})
	u := mustURL(t, "https://example.com/")
	b := exchange(t, c, u, nil, []string{`q="a, b"`, "sp=a b", "utf=ü\xff", "e=", "nameless", `bs=\x`})
	req := requestFor(u, b)
	req.Cookies = append(req.Cookies, `br="x y"; br2=\u00e9,`)
	x, _ := roundTrip(t, c, req, nil)
	want := `q="a, b"; sp=a b; utf=ü` + "\xff" + `; e=; nameless; bs=\x; br="x y"; br2=\u00e9,`
	if x.Cookie != want {
		t.Errorf("Cookie =\n%q\nwant\n%q", x.Cookie, want)
	}
}

func TestControlCharactersAreNotForwarded(t *testing.T) {
	c := newTestCache(t, Config{})
	x, _ := roundTrip(t, c, &Request{Scheme: "https", Host: "example.com", Path: "/", Cookies: []string{"a=1; b=\x01; c=\t3"}}, nil)
	if !x.RewriteCookie || x.Cookie != "a=1; c=\t3" {
		t.Errorf("Cookie = %q (rewrite %v), want the pair with a control character dropped", x.Cookie, x.RewriteCookie)
	}
}

func TestCookieDeletionAndReplacement(t *testing.T) {
	clock := newTestClock()
	c := newTestCache(t, Config{Now: clock.Now, MaxCookieLifetime: 48 * time.Hour, Lifetime: 100 * time.Hour, IdleTimeout: 100 * time.Hour})
	u := mustURL(t, "https://example.com/")
	b := exchange(t, c, u, nil, []string{"a=1", "b=1", "c=1; Max-Age=999999999"})
	clock.Advance(time.Second)
	exchange(t, c, u, b, []string{"a=2", "b=; Max-Age=0"})
	if x := expand(t, c, u, b); x.Cookie != "a=2; c=1" {
		t.Errorf("Cookie = %q, want a replaced in place and b deleted", x.Cookie)
	}
	clock.Advance(48 * time.Hour)
	if x := expand(t, c, u, b); x.Cookie != "a=2" {
		t.Errorf("Cookie = %q, want c expired at the max cookie lifetime", x.Cookie)
	}
	if st := c.Stats(); st.CookiesDeleted != 1 || st.CookiesStored != 4 {
		t.Errorf("stats = %+v", st)
	}
}

func TestJarLimits(t *testing.T) {
	clock := newTestClock()
	c := newTestCache(t, Config{Now: clock.Now, MaxCookiesPerDomain: 50, MaxCookiesPerSession: 60, MaxBytesPerSession: 8192})
	u := mustURL(t, "https://www.example.com/")
	lines := []string{"c00=v; Path=/p0"}
	for i := 1; i < 50; i++ {
		lines = append(lines, fmt.Sprintf("c%02d=v; Path=/p1", i))
	}
	b := exchange(t, c, u, nil, lines)
	// A request to /p0 uses c00 again; c01 is now the least recently used
	// (c01…c49 were last used together; c01 is the oldest of them).
	clock.Advance(time.Second)
	expand(t, c, mustURL(t, "https://www.example.com/p0"), b)
	clock.Advance(time.Second)
	exchange(t, c, mustURL(t, "https://www.example.com/p2/x"), b, []string{"new=1"})
	names := jarNames(t, c, b)
	if strings.Contains(names, "c01=") || !strings.Contains(names, "c00=") || !strings.Contains(names, "new=") || !strings.Contains(names, "c02=") {
		t.Errorf("per-domain limit evicted the wrong cookie: %s", names)
	}
	if n := strings.Count(names, "="); n != 50 {
		t.Errorf("%d cookies kept, want 50", n)
	}

	// Another domain of the same site has its own per-domain budget, but
	// the session limit of 60 still holds.
	var more []string
	for i := range 15 {
		more = append(more, fmt.Sprintf("d%02d=v; Domain=example.com", i))
	}
	clock.Advance(time.Second)
	exchange(t, c, u, b, more)
	if n := strings.Count(jarNames(t, c, b), "="); n != 60 {
		t.Errorf("%d cookies kept, want the session limit of 60", n)
	}

	// Three 3000-byte cookies exceed 8192 bytes: the oldest goes.
	big := strings.Repeat("x", 3000)
	b2 := exchange(t, c, u, nil, []string{"b1=" + big, "b2=" + big, "b3=" + big})
	if x := expand(t, c, u, b2); strings.Contains(x.Cookie, "b1=") || !strings.Contains(x.Cookie, "b3=") {
		t.Errorf("byte limit evicted the wrong cookie")
	}
	if got := c.Stats().CookiesEvicted; got != 1+5+1 {
		t.Errorf("CookiesEvicted = %d, want 7", got)
	}
}

// jarNames lists the names in the jar of the browser's session.
func jarNames(t *testing.T, c *Cache, b browserJar) string {
	t.Helper()
	id, ok := ParseID(b[c.CookieName()])
	if !ok {
		t.Fatal("browser has no session cookie")
	}
	s, err := c.Store().Find(context.Background(), id)
	if err != nil || s == nil {
		t.Fatalf("session not found: %v", err)
	}
	var names []string
	for _, ck := range s.Cookies() {
		names = append(names, ck.Name()+"=")
	}
	return strings.Join(names, " ")
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string // substring of the error, "" for valid
	}{
		{"defaults", Config{}, ""},
		{"insecure default name", Config{InsecureCookie: true}, ""},
		{"bad name", Config{CookieName: "a b"}, "must be a non-empty HTTP token"},
		{"prefix without secure", Config{CookieName: "__Host-s", InsecureCookie: true}, "prefixes need a Secure cookie"},
		{"secure prefix any case", Config{CookieName: "__secure-s", InsecureCookie: true}, "prefixes need a Secure cookie"},
		{"samesite none insecure", Config{SameSite: SameSiteNone, InsecureCookie: true}, "SameSite=None needs a Secure"},
		{"short lifetime", Config{Lifetime: time.Millisecond}, "at least 1s"},
		{"idle longer than lifetime", Config{Lifetime: time.Hour, IdleTimeout: 2 * time.Hour}, "idle timeout"},
		{"cookie lifetime over 400 days", Config{MaxCookieLifetime: 401 * 24 * time.Hour}, "400 days"},
		{"pass-through is session name", Config{PassThrough: []string{DefaultCookieName}}, "is the session cookie's name"},
		{"per-domain below 50", Config{MaxCookiesPerDomain: 10}, "at least 50"},
		{"bytes too small", Config{MaxBytesPerSession: 100}, "at least 8192"},
		{"negative sessions", Config{MaxSessions: -1}, "max sessions"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("error = %v, want it to mention %q", err, tt.want)
			}
		})
	}
	// Every problem is reported at once.
	_, err := New(Config{CookieName: "a b", Lifetime: time.Millisecond, MaxCookiesPerDomain: 1})
	if err == nil || strings.Count(err.Error(), "\n") < 2 {
		t.Errorf("error = %v, want all three problems", err)
	}
}

// TestParallelExchangesInOneSession: a browser sends several requests at
// once; parallel captures and expands of one session lose no cookie.
func TestParallelExchangesInOneSession(t *testing.T) {
	c := newTestCache(t, Config{Logger: discardLogger()})
	u := mustURL(t, "https://example.com/")
	b := exchange(t, c, u, nil, []string{"start=1"})
	const workers, perWorker = 6, 20
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				var x Exchange
				req := &Request{Scheme: "https", Host: "example.com", Path: "/", Cookies: b.Header()}
				if err := c.Expand(context.Background(), req, &x); err != nil || !strings.Contains(x.Cookie, "start=1") {
					t.Errorf("Expand: %v, Cookie %q", err, x.Cookie)
					return
				}
				edit, err := c.Capture(context.Background(), &x, &Response{SetCookie: []string{fmt.Sprintf("w%di%d=v", w, i)}})
				if err != nil || len(edit.SetCookie) != 0 {
					t.Errorf("Capture: %v, %q", err, edit.SetCookie)
					return
				}
			}
		})
	}
	wg.Wait()
	x := expand(t, c, u, b)
	for w := range workers {
		for i := range perWorker {
			if !strings.Contains(x.Cookie, fmt.Sprintf("w%di%d=v", w, i)) {
				t.Errorf("cookie w%di%d lost", w, i)
			}
		}
	}
	if st := c.Stats(); st.SessionsCreated != 1 || st.CookiesStored != workers*perWorker+1 {
		t.Errorf("stats = %+v", st)
	}
}
