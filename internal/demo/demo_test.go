package demo

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

func post(h http.Handler, path string, form url.Values, cookies ...*http.Cookie) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for _, c := range cookies {
		r.AddCookie(c)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestLoginSetsTheDemoCookies(t *testing.T) {
	h := New("__Host-proxysession")
	w := post(h, "/login", url.Values{"user": {"alice"}})
	if w.Code != http.StatusSeeOther {
		t.Fatalf("status %d", w.Code)
	}
	got := map[string]*http.Cookie{}
	for _, c := range w.Result().Cookies() {
		got[c.Name] = c
	}
	if c := got["sid"]; c == nil || !c.HttpOnly || !strings.HasPrefix(c.Value, "alice.") {
		t.Errorf("sid = %v", c)
	}
	if c := got["account_tab"]; c == nil || c.Path != "/account" {
		t.Errorf("account_tab = %v", c)
	}
	if c := got["remember_me"]; c == nil || c.MaxAge != 30*24*3600 {
		t.Errorf("remember_me = %v", c)
	}
	if c := got[CSRFCookie]; c == nil || c.HttpOnly || c.Value == "" {
		t.Errorf("%s = %v, want a cookie JavaScript can read", CSRFCookie, c)
	}
	if w := post(h, "/login", url.Values{"user": {"a b"}}); w.Code != http.StatusBadRequest {
		t.Errorf("bad user name: status %d", w.Code)
	}
}

func TestPageShowsReceivedCookies(t *testing.T) {
	h := New("__Host-proxysession")
	r := httptest.NewRequest(http.MethodGet, "/account/", nil)
	r.Header.Set("Cookie", "sid=alice.x; account_tab=profile; XSRF-TOKEN=tok")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	body := w.Body.String()
	for _, want := range []string{"Logged in as <b>alice</b>", "<td>account_tab</td><td>profile</td>", "__Host-proxysession", `value="tok"`} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if w.Header().Get("Cache-Control") != "no-store" {
		t.Error("page may be cached")
	}
}

func TestLogoutNeedsTheCSRFToken(t *testing.T) {
	h := New("__Host-proxysession")
	token := &http.Cookie{Name: CSRFCookie, Value: "tok"}
	if w := post(h, "/logout", url.Values{"csrf": {"wrong"}}, token); w.Code != http.StatusForbidden {
		t.Errorf("wrong token: status %d", w.Code)
	}
	if w := post(h, "/logout", url.Values{"csrf": {"tok"}}); w.Code != http.StatusForbidden {
		t.Errorf("no cookie: status %d", w.Code)
	}
	w := post(h, "/logout", url.Values{"csrf": {"tok"}}, token)
	if w.Code != http.StatusSeeOther || w.Header().Get("Clear-Site-Data") != `"cookies"` {
		t.Errorf("logout: status %d, Clear-Site-Data %q", w.Code, w.Header().Get("Clear-Site-Data"))
	}
}

// TestPageSaysWhetherTheBrowserHoldsASession: the page claims the
// session cookie only when proxysession added session cookies to the
// request; a CSRF token alone (the browser's own cookie) is no session.
func TestPageSaysWhetherTheBrowserHoldsASession(t *testing.T) {
	h := New("__Host-proxysession")
	for _, tt := range []struct {
		cookie string
		want   string
	}{
		{"sid=alice.x; XSRF-TOKEN=tok", "so your browser holds <code>__Host-proxysession</code>"},
		{"", "This request carried no session"},
		{"XSRF-TOKEN=tok", "This request carried no session"},
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		if tt.cookie != "" {
			r.Header.Set("Cookie", tt.cookie)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if body := w.Body.String(); !strings.Contains(body, tt.want) {
			t.Errorf("Cookie %q: page lacks %q", tt.cookie, tt.want)
		}
	}
}

// TestLoginNamesTheUser: login binds proxysession's session to the user
// (Proxysession-User), and the page offers "log out everywhere".
func TestLoginNamesTheUser(t *testing.T) {
	h := New("__Host-proxysession")
	if w := post(h, "/login", url.Values{"user": {"alice"}}); w.Header().Get(UserHeader) != "alice" {
		t.Errorf("%s = %q, want alice", UserHeader, w.Header().Get(UserHeader))
	}
	if w := post(h, "/login", url.Values{"user": {"a b"}}); w.Header().Get(UserHeader) != "" {
		t.Errorf("a refused login named the user %q", w.Header().Get(UserHeader))
	}
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("Cookie", "sid=alice.x; XSRF-TOKEN=tok")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	for _, want := range []string{`<form method="post" action="/logout-everywhere"><input type="hidden" name="csrf" value="tok">`, "-binding-key-file"} {
		if !strings.Contains(w.Body.String(), want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

// TestLogoutEverywhere: it needs the CSRF token, and answers like logout
// plus Proxysession-Logout: user; plain logout ends this session only.
func TestLogoutEverywhere(t *testing.T) {
	h := New("__Host-proxysession")
	token := &http.Cookie{Name: CSRFCookie, Value: "tok"}
	for _, w := range []*httptest.ResponseRecorder{
		post(h, "/logout-everywhere", url.Values{"csrf": {"wrong"}}, token),
		post(h, "/logout-everywhere", url.Values{"csrf": {"tok"}}),
	} {
		if w.Code != http.StatusForbidden || w.Header().Get(LogoutHeader) != "" {
			t.Errorf("bad CSRF token: status %d, %s %q", w.Code, LogoutHeader, w.Header().Get(LogoutHeader))
		}
	}
	w := post(h, "/logout-everywhere", url.Values{"csrf": {"tok"}}, token)
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/" {
		t.Errorf("status %d, Location %q", w.Code, w.Header().Get("Location"))
	}
	if got := w.Header().Get(LogoutHeader); got != "user" {
		t.Errorf("%s = %q, want user", LogoutHeader, got)
	}
	if got := w.Header().Get("Clear-Site-Data"); got != `"cookies"` {
		t.Errorf("Clear-Site-Data = %q", got)
	}
	deleted := map[string]bool{}
	for _, c := range w.Result().Cookies() {
		deleted[c.Name] = c.MaxAge < 0
	}
	for _, name := range []string{"sid", "remember_me", CSRFCookie} {
		if !deleted[name] {
			t.Errorf("%s not deleted", name)
		}
	}
	if w := post(h, "/logout", url.Values{"csrf": {"tok"}}, token); w.Header().Get(LogoutHeader) != "" {
		t.Errorf("plain logout sent %s", LogoutHeader)
	}
}
