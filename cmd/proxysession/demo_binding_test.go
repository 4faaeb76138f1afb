package main

import (
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/proxysession/proxysession/internal/demo"
	"github.com/proxysession/proxysession/sessions"
)

// demoUser is one browser of the demo, through proxysession's reverse
// proxy: it logs in through the page's form and reads the page.
type demoUser struct {
	*cookieBrowser
	t    *testing.T
	base string
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]*)"`)

func (u *demoUser) page(path string) string {
	u.t.Helper()
	resp, body := u.get(u.t, u.base+path)
	if resp.StatusCode != http.StatusOK {
		u.t.Fatalf("GET %s: status %d", path, resp.StatusCode)
	}
	return body
}

func (u *demoUser) post(path string, form url.Values) *http.Response {
	u.t.Helper()
	req, err := http.NewRequest(http.MethodPost, u.base+path, strings.NewReader(form.Encode()))
	if err != nil {
		u.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, _ := u.do(u.t, req)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		u.t.Fatalf("POST %s: status %d, Location %q", path, resp.StatusCode, resp.Header.Get("Location"))
	}
	for k := range resp.Header {
		if strings.HasPrefix(strings.ToLower(k), "proxysession-") {
			u.t.Errorf("POST %s: %s reached the browser", path, k)
		}
	}
	return resp
}

// login logs in as user through the form, as the page does, and checks
// that the backend then receives its cookies.
func (u *demoUser) login(user string) {
	u.t.Helper()
	u.page("/")
	u.post("/login", url.Values{"user": {user}})
	if u.cookies[sessions.DefaultCookieName] == "" {
		u.t.Fatalf("%s: no session cookie after login", user)
	}
	u.checkLoggedIn(user)
}

// csrf is the CSRF token of the page's forms.
func (u *demoUser) csrf() string {
	u.t.Helper()
	m := csrfField.FindStringSubmatch(u.page("/"))
	if m == nil || m[1] == "" {
		u.t.Fatal("the page has no CSRF token")
	}
	return m[1]
}

func (u *demoUser) checkLoggedIn(user string) {
	u.t.Helper()
	body := u.page("/")
	for _, want := range []string{"Logged in as <b>" + user + "</b>", "<td>sid</td><td>" + user + ".", "<td>remember_me</td><td>" + user + "</td>"} {
		if !strings.Contains(body, want) {
			u.t.Errorf("%s: the page lacks %q", user, want)
		}
	}
}

// checkLoggedOut: the backend received no session cookie (at most the
// browser's own pass-through CSRF token) and the page offers the login.
func (u *demoUser) checkLoggedOut(who string) {
	u.t.Helper()
	body := u.page("/")
	for _, bad := range []string{"<td>sid</td>", "<td>remember_me</td>", "Logged in as", `action="/logout`} {
		if strings.Contains(body, bad) {
			u.t.Errorf("%s: logged out, yet the page shows %q", who, bad)
		}
	}
	if !strings.Contains(body, `action="/login"`) || !strings.Contains(body, "This request carried no session") {
		u.t.Errorf("%s: the page offers no login or claims a session:\n%s", who, body)
	}
	if c := u.cookies[sessions.DefaultCookieName]; c != "" {
		u.t.Errorf("%s: the browser still holds a session cookie", who)
	}
}

// replay sends an old session cookie from a fresh client: it must get
// no backend cookies.
func replay(t *testing.T, base, who, session string) {
	t.Helper()
	u := &demoUser{cookieBrowser: newCookieBrowser(nil), t: t, base: base}
	u.cookies[sessions.DefaultCookieName] = session
	if body := u.page("/account/"); !strings.Contains(body, `<p id="received">None.</p>`) {
		t.Errorf("%s's old session cookie, replayed, still carries cookies:\n%s", who, body)
	}
}

// TestDemoLogoutEverywhere is the demo's story of user binding, through
// proxysession's reverse proxy with -binding-key-file: two browsers log
// in as alice, a third as carol; alice presses "Log out everywhere" in
// one, and both of alice's browsers are logged out (their old session
// cookies, replayed, carry nothing), while carol stays logged in.
// Without -binding-key-file the button logs out only its own browser.
func TestDemoLogoutEverywhere(t *testing.T) {
	if demo.UserHeader != sessions.DefaultUserHeader || demo.LogoutHeader != sessions.DefaultLogoutHeader {
		t.Fatalf("the demo's headers %q, %q are not proxysession's defaults", demo.UserHeader, demo.LogoutHeader)
	}
	key := make([]byte, 32)
	rand.Read(key)
	keyFile := filepath.Join(t.TempDir(), "binding.key")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	backend := httptest.NewServer(demo.New(sessions.DefaultCookieName))
	t.Cleanup(backend.Close)
	for _, binding := range []bool{true, false} {
		name := "binding"
		args := []string{"-pass-through-cookies", demo.CSRFCookie}
		if binding {
			args = append(args, "-binding-key-file", keyFile)
		} else {
			name = "no binding"
		}
		t.Run(name, func(t *testing.T) {
			p := startProxy(t, backend.URL, args...)
			base := "http://" + p.httpAddr
			newUser := func() *demoUser { return &demoUser{cookieBrowser: newCookieBrowser(nil), t: t, base: base} }
			laptop, phone, carol := newUser(), newUser(), newUser()
			laptop.login("alice")
			phone.login("alice")
			carol.login("carol")
			if laptop.cookies[sessions.DefaultCookieName] == phone.cookies[sessions.DefaultCookieName] {
				t.Fatal("alice's two browsers share a session")
			}
			if body := phone.page("/account/"); !strings.Contains(body, "<td>account_tab</td>") {
				t.Errorf("the phone's backend cookies are incomplete:\n%s", body)
			}
			oldLaptop, oldPhone := laptop.cookies[sessions.DefaultCookieName], phone.cookies[sessions.DefaultCookieName]

			laptop.post("/logout-everywhere", url.Values{"csrf": {laptop.csrf()}})
			laptop.checkLoggedOut("alice's laptop (pressed the button)")
			replay(t, base, "alice's laptop", oldLaptop)
			if binding {
				phone.checkLoggedOut("alice's phone")
				replay(t, base, "alice's phone", oldPhone)
			} else {
				// The header was removed, not acted on: the phone stays.
				phone.checkLoggedIn("alice")
			}
			carol.checkLoggedIn("carol")
			for _, u := range []*demoUser{laptop, phone, carol} {
				u.checkOnlySessionCookieOr(t, demo.CSRFCookie)
			}

			_, metrics := httpGet(t, "http://"+p.adminAddr+"/metrics")
			want := `proxysession_sessions_ended_total{reason="user_logout"} 2`
			if got := strings.Contains(metrics, want); got != binding {
				t.Errorf("/metrics contains %q: %v, want %v", want, got, binding)
			}
			if strings.Contains(p.logs.String(), "alice") || strings.Contains(metrics, "alice") {
				t.Error("the user id reached the logs or metrics")
			}
		})
	}
}

// checkOnlySessionCookieOr fails unless every Set-Cookie the browser got
// is the session cookie's or a pass-through cookie's.
func (b *cookieBrowser) checkOnlySessionCookieOr(t *testing.T, pass string) {
	t.Helper()
	for _, sc := range b.setCookies {
		if !strings.HasPrefix(sc, sessions.DefaultCookieName+"=") && !strings.HasPrefix(sc, pass+"=") {
			t.Errorf("a backend Set-Cookie reached the client: %q", sc)
		}
	}
}
