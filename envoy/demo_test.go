package envoy_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/proxysession/proxysession/internal/config"
	"github.com/proxysession/proxysession/internal/demo"
	"github.com/proxysession/proxysession/processor"
	"github.com/proxysession/proxysession/processor/envoytest"
	"github.com/proxysession/proxysession/processor/extproctest"
	"github.com/proxysession/proxysession/sessions"
)

// composeDemo starts proxysession configured by docker-compose.yml's
// environment in front of the demo backend, and returns its engine and
// the Envoy stand-in that leads to it.
func composeDemo(t *testing.T) (*sessions.Cache, *envoytest.Filter) {
	t.Helper()
	p := loadCompose(t)
	cfg, err := config.Parse(nil, containerLookup(p.Services["proxysession"]), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Sessions.Logger = slog.New(slog.DiscardHandler)
	cache, err := sessions.New(cfg.Sessions)
	if err != nil {
		t.Fatal(err)
	}
	srv := extproctest.NewServer(cache, processor.Options{Logger: cfg.Sessions.Logger})
	t.Cleanup(srv.Close)
	return cache, srv.Filter(demo.New(lookupOr(p.Services["demo"].Environment, "DEMO_PROXY_COOKIE", "")))
}

// TestDemo runs the compose demo's story without Docker: proxysession
// configured by docker-compose.yml's environment, the demo backend, and a
// browser, with the Envoy stand-in between them.
func TestDemo(t *testing.T) {
	cache, filter := composeDemo(t)
	browser := envoytest.NewBrowser(filter)
	// Browsers treat http://localhost as secure; Go's cookie jar only
	// sends Secure cookies over https, so the test browser uses https.
	site := "https://localhost:8080"
	u, _ := url.Parse(site + "/")

	page := func(path string) string {
		t.Helper()
		resp, err := browser.Get(site + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	held := func() []string {
		var names []string
		for _, c := range browser.Jar.Cookies(u) {
			names = append(names, c.Name)
		}
		slices.Sort(names)
		return names
	}

	resp, err := browser.PostForm(site+"/login", url.Values{"user": {"alice"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := held(); !slices.Equal(got, []string{demo.CSRFCookie, sessions.DefaultCookieName}) {
		t.Errorf("after login the browser holds %v, want only the session cookie and the CSRF token", got)
	}
	home := page("/")
	for _, want := range []string{"Logged in as <b>alice</b>", "<td>sid</td>", "<td>remember_me</td><td>alice</td>", "<td>" + demo.CSRFCookie + "</td>"} {
		if !strings.Contains(home, want) {
			t.Errorf("home page lacks %q", want)
		}
	}
	if strings.Contains(home, "<td>account_tab</td>") {
		t.Error("the /account cookie reached /")
	}
	if !strings.Contains(page("/account/"), "<td>account_tab</td><td>profile</td>") {
		t.Error("the /account cookie did not reach /account/")
	}

	var csrf string
	for _, c := range browser.Jar.Cookies(u) {
		if c.Name == demo.CSRFCookie {
			csrf = c.Value
		}
	}
	resp, err = browser.PostForm(site+"/logout", url.Values{"csrf": {csrf}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := held(); slices.Contains(got, sessions.DefaultCookieName) {
		t.Errorf("after logout the browser holds %v", got)
	}
	if home := page("/"); strings.Contains(home, "Logged in") {
		t.Error("still logged in after logout")
	}
	if st := cache.Stats(); st.SessionsEnded[sessions.EndLogout] != 1 || st.CookiesStored < 3 {
		t.Errorf("engine stats %+v", st)
	}
	if st := filter.Stats(); st.LocalReplies != 0 || st.Spurious != 0 {
		t.Errorf("Envoy stand-in saw %+v", st)
	}
}

// TestDemoLogoutEverywhere: with the compose demo's configuration (its
// demo-only binding key), "Log out everywhere" in one of alice's browsers
// logs out both, through ext_proc; carol stays logged in.
func TestDemoLogoutEverywhere(t *testing.T) {
	cache, filter := composeDemo(t)
	site := "https://localhost:8080"
	u, _ := url.Parse(site + "/")
	page := func(b *http.Client) string {
		t.Helper()
		resp, err := b.Get(site + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}
	login := func(user string) *http.Client {
		t.Helper()
		b := envoytest.NewBrowser(filter)
		resp, err := b.PostForm(site+"/login", url.Values{"user": {user}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if !strings.Contains(page(b), "Logged in as <b>"+user+"</b>") {
			t.Fatalf("%s is not logged in", user)
		}
		return b
	}
	laptop, phone, carol := login("alice"), login("alice"), login("carol")
	var csrf string
	for _, c := range laptop.Jar.Cookies(u) {
		if c.Name == demo.CSRFCookie {
			csrf = c.Value
		}
	}
	resp, err := laptop.PostForm(site+"/logout-everywhere", url.Values{"csrf": {csrf}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for who, b := range map[string]*http.Client{"the laptop": laptop, "the phone": phone} {
		if home := page(b); strings.Contains(home, "Logged in") || strings.Contains(home, "<td>sid</td>") {
			t.Errorf("%s is still logged in as alice", who)
		}
	}
	if !strings.Contains(page(carol), "Logged in as <b>carol</b>") {
		t.Error("carol was logged out too")
	}
	if st := cache.Stats(); st.SessionsEnded[sessions.EndUserLogout] != 2 {
		t.Errorf("sessions ended: %v, want 2 by user logout", st.SessionsEnded)
	}
	if st := filter.Stats(); st.LocalReplies != 0 || st.Spurious != 0 {
		t.Errorf("Envoy stand-in saw %+v", st)
	}
}
