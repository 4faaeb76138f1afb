package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/storage"
	"github.com/chromedp/chromedp"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/proxysession/proxysession/internal/demo"
	"github.com/proxysession/proxysession/processor/envoytest"
	"github.com/proxysession/proxysession/sessions"
)

// This file runs the demo story in a real browser: Chromium, headless,
// driven over the DevTools protocol, through both ways of running
// proxysession: the reverse-proxy mode, and ext_proc behind an HTTP front
// built from processor/envoytest (the stand-in for Envoy), which calls
// the real gRPC server as Envoy does.
//
// Without Chromium the test skips, except under CI=true, where it fails.
// $PROXYSESSION_CHROMIUM names the browser binary. On failure it saves a
// screenshot and the HTML of each browser context, the network log and the
// browser's output in $PROXYSESSION_ARTIFACTS (or a new temporary
// directory), and says where.

func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PROXYSESSION_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "Chromium not found (looked for chromium, chromium-browser, google-chrome in $PATH, and $PROXYSESSION_CHROMIUM); install Debian's chromium package to run the browser test"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

func TestDemoInBrowser(t *testing.T) {
	exe := chromiumPath(t)
	// Session binding on, for the demo's "Log out everywhere".
	keyFile := filepath.Join(t.TempDir(), "binding.key")
	if err := os.WriteFile(keyFile, []byte(rand.Text()+rand.Text()), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Run("reverse proxy", func(t *testing.T) {
		backend := httptest.NewServer(demo.New(sessions.DefaultCookieName))
		t.Cleanup(backend.Close)
		p := startProxy(t, backend.URL, "-pass-through-cookies", demo.CSRFCookie, "-binding-key-file", keyFile)
		runDemoStory(t, exe, localhostURL(t, p.httpAddr))
	})
	t.Run("ext_proc", func(t *testing.T) {
		inst := start(t, "-pass-through-cookies", demo.CSRFCookie, "-binding-key-file", keyFile)
		filter := &envoytest.Filter{
			Client:         extprocv3.NewExternalProcessorClient(dial(t, inst.grpcAddr, nil)),
			Backend:        demo.New(sessions.DefaultCookieName),
			MessageTimeout: 5 * time.Second,
		}
		// The front is what Envoy's listener and router are: it hands
		// each request to the ext_proc filter, which calls the backend.
		front := httptest.NewServer(&httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.Out.URL.Scheme, pr.Out.URL.Host, pr.Out.Host = "http", pr.In.Host, pr.In.Host
			},
			Transport: filter,
		})
		t.Cleanup(front.Close)
		runDemoStory(t, exe, localhostURL(t, strings.TrimPrefix(front.URL, "http://")))
		if s := filter.Stats(); s.InvalidReplies+s.LocalReplies+s.RejectedMutations > 0 {
			t.Errorf("the ext_proc filter saw %+v", s)
		}
	})
}

// localhostURL is http://localhost:PORT for a loopback address: browsers
// treat localhost as a secure context, so the Secure __Host- session
// cookie works over plain http.
func localhostURL(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return "http://localhost:" + port
}

// networkLog records every response the browser received, with its raw
// Set-Cookie lines, from the DevTools network events.
type networkLog struct {
	mu      sync.Mutex
	entries []netEntry
}

type netEntry struct {
	Context   string   `json:"context"`
	Event     string   `json:"event"`
	RequestID string   `json:"request_id"`
	URL       string   `json:"url,omitempty"`
	Status    int64    `json:"status"`
	SetCookie []string `json:"set_cookie,omitempty"`
	Blocked   []string `json:"blocked_cookies,omitempty"`
}

func (l *networkLog) listener(context string) func(any) {
	return func(ev any) {
		var e netEntry
		switch ev := ev.(type) {
		case *network.EventResponseReceivedExtraInfo:
			// The raw headers, as received: Set-Cookie lines joined by \n.
			e = netEntry{Event: "responseReceivedExtraInfo", RequestID: string(ev.RequestID), Status: ev.StatusCode, SetCookie: setCookieLines(ev.Headers)}
			for _, b := range ev.BlockedCookies {
				e.Blocked = append(e.Blocked, fmt.Sprintf("%v: %s", b.BlockedReasons, cookieName(b.CookieLine)))
			}
		case *network.EventResponseReceived:
			e = netEntry{Event: "responseReceived", RequestID: string(ev.RequestID), URL: ev.Response.URL, Status: ev.Response.Status, SetCookie: setCookieLines(ev.Response.Headers)}
		default:
			return
		}
		e.Context = context
		l.mu.Lock()
		l.entries = append(l.entries, e)
		l.mu.Unlock()
	}
}

func (l *networkLog) snapshot() []netEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.entries)
}

func setCookieLines(h network.Headers) []string {
	var lines []string
	for k, v := range h {
		if s, ok := v.(string); ok && strings.EqualFold(k, "Set-Cookie") {
			lines = append(lines, strings.Split(s, "\n")...)
		}
	}
	return lines
}

func cookieName(line string) string {
	name, _, _ := strings.Cut(line, "=")
	return strings.TrimSpace(name)
}

// browserUser is one browser context: a user with a cookie store of its
// own.
type browserUser struct {
	name string
	ctx  context.Context
}

// runDemoStory drives the demo at base through the story of README's
// demo, asserting each step.
func runDemoStory(t *testing.T, exe, base string) {
	const sessionCookie = sessions.DefaultCookieName
	chromeOut := &syncWriter{w: &bytes.Buffer{}}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox, // as root, in containers
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1000, 800),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.CombinedOutput(chromeOut),
	)
	t.Cleanup(cancelAlloc)
	browser, cancelBrowser := chromedp.NewContext(alloc)
	t.Cleanup(cancelBrowser)
	if err := chromedp.Do(browser); err != nil {
		t.Fatalf("starting %s: %v\n%s", exe, err, chromeOut.bytes())
	}
	netlog := &networkLog{}
	newUser := func(name string) *browserUser {
		ctx, cancel := chromedp.NewContext(browser, chromedp.WithNewBrowserContext(), chromedp.WithListener(netlog.listener(name)))
		t.Cleanup(cancel)
		if err := chromedp.Do(ctx); err != nil {
			t.Fatalf("opening a browser context: %v", err)
		}
		return &browserUser{name: name, ctx: ctx}
	}
	alice, bob := newUser("alice"), newUser("bob")
	users := []*browserUser{alice, bob}
	step := "start"
	t.Cleanup(func() {
		if t.Failed() {
			saveArtifacts(t, step, users, netlog, chromeOut.bytes())
		}
	})
	// run runs actions with a time limit, failing the test at the step.
	run := func(u *browserUser, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		ctx, cancel := context.WithTimeout(u.ctx, 15*time.Second)
		defer cancel()
		if err := chromedp.Do(ctx, actions...); err != nil {
			t.Fatalf("step %q (%s): %v", step, u.name, err)
		}
	}
	// navigate runs actions that load a page and waits for it; it
	// returns the document's status.
	navigate := func(u *browserUser, actions ...chromedp.Action[chromedp.Void]) int64 {
		t.Helper()
		ctx, cancel := context.WithTimeout(u.ctx, 15*time.Second)
		defer cancel()
		resp, err := chromedp.RunResponse(ctx, actions...)
		if err != nil {
			t.Fatalf("step %q (%s): %v", step, u.name, err)
		}
		return resp.Status
	}
	eval := func(u *browserUser, js string) []string {
		t.Helper()
		ctx, cancel := context.WithTimeout(u.ctx, 15*time.Second)
		defer cancel()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](js))
		if err != nil {
			t.Fatalf("step %q (%s): evaluating %s: %v", step, u.name, js, err)
		}
		return v
	}
	// received is the names of the cookies the backend says it got.
	received := func(u *browserUser) []string {
		return eval(u, `[...document.querySelectorAll("#received td:first-child")].map(e => e.textContent)`)
	}
	text := func(u *browserUser, selector string) string {
		return strings.Join(eval(u, `[...document.querySelectorAll(`+jsString(selector)+`)].map(e => e.textContent)`), "")
	}
	documentCookie := func(u *browserUser) string { return eval(u, `[document.cookie]`)[0] }
	// store is the browser context's whole cookie store.
	store := func(u *browserUser) []*network.Cookie {
		t.Helper()
		ctx, cancel := context.WithTimeout(u.ctx, 15*time.Second)
		defer cancel()
		res, err := chromedp.CallBrowser(ctx, storage.GetCookies, storage.GetCookiesParams{BrowserContextID: chromedp.FromContext(u.ctx).BrowserContextID})
		if err != nil {
			t.Fatalf("step %q (%s): reading the cookie store: %v", step, u.name, err)
		}
		return res.Cookies
	}
	names := func(cookies []*network.Cookie) []string {
		var n []string
		for _, c := range cookies {
			n = append(n, c.Name)
		}
		slices.Sort(n)
		return n
	}
	noSession := func(u *browserUser) {
		t.Helper()
		if got := store(u); len(got) != 0 {
			t.Errorf("step %q (%s): the browser holds %v, want nothing", step, u.name, names(got))
		}
		if got := text(u, "#received"); got != "None." {
			t.Errorf("step %q (%s): the backend received %q, want none", step, u.name, got)
		}
		if got := text(u, "#session-note"); !strings.Contains(got, "carried no session") || strings.Contains(got, "so your browser holds") {
			t.Errorf("step %q (%s): the page says %q", step, u.name, got)
		}
		if got := documentCookie(u); got != "" {
			t.Errorf("step %q (%s): document.cookie = %q", step, u.name, got)
		}
	}
	login := func(u *browserUser, user string) {
		t.Helper()
		run(u, chromedp.SendKeys(chromedp.CSS(`input[name="user"]`), user))
		if status := navigate(u, chromedp.Click(chromedp.CSS(`form[action="/login"] button`))); status != http.StatusOK {
			t.Fatalf("step %q (%s): logging in: status %d", step, u.name, status)
		}
		run(u, chromedp.WaitVisible(chromedp.CSS(`form[action="/logout"]`)))
		if got := text(u, "b"); got != user {
			t.Errorf("step %q (%s): logged in as %q, want %q", step, u.name, got, user)
		}
	}

	step = "first visit sets nothing"
	if status := navigate(alice, chromedp.Navigate(base+"/")); status != http.StatusOK {
		t.Fatalf("first visit: status %d", status)
	}
	noSession(alice)

	step = "log in through the form"
	login(alice, "alice")

	step = "the browser holds the session cookie and XSRF-TOKEN only"
	cookies := store(alice)
	if got, want := names(cookies), []string{demo.CSRFCookie, sessionCookie}; !slices.Equal(got, want) {
		t.Fatalf("step %q: the browser holds %v, want %v", step, got, want)
	}
	var session *network.Cookie
	for _, c := range cookies {
		switch c.Name {
		case sessionCookie:
			session = c
			if !c.HTTPOnly || !c.Secure || c.SameSite != network.CookieSameSiteLax || c.Path != "/" || c.Domain != "localhost" || c.Session {
				t.Errorf("step %q: session cookie %+v: want HttpOnly, Secure, SameSite=Lax, Path=/, host-only (no Domain), persistent", step, *c)
			}
		case demo.CSRFCookie:
			if c.HTTPOnly {
				t.Errorf("step %q: %s is HttpOnly: the page's JavaScript cannot read it", step, c.Name)
			}
		}
	}

	step = "the backend received sid and remember_me"
	if got, want := received(alice), []string{demo.CSRFCookie, "remember_me", "sid"}; !slices.Equal(got, want) {
		t.Errorf("step %q: the backend received %v, want %v", step, got, want)
	}
	if got := text(alice, "#session-note"); !strings.Contains(got, "so your browser holds "+sessionCookie) {
		t.Errorf("step %q: the page says %q", step, got)
	}

	step = "account_tab reaches the backend under /account/ only"
	navigate(alice, chromedp.Click(chromedp.CSS(`a[href="/account/"]`)))
	if got, want := received(alice), []string{demo.CSRFCookie, "account_tab", "remember_me", "sid"}; !slices.Equal(got, want) {
		t.Errorf("step %q: on /account/ the backend received %v, want %v", step, got, want)
	}
	navigate(alice, chromedp.Click(chromedp.CSS(`a[href="/"]`)))
	if got := received(alice); slices.Contains(got, "account_tab") {
		t.Errorf("step %q: on / the backend received %v", step, got)
	}

	step = "document.cookie shows XSRF-TOKEN only"
	if got := documentCookie(alice); !strings.HasPrefix(got, demo.CSRFCookie+"=") || strings.Contains(got, ";") {
		t.Errorf("step %q: document.cookie = %q", step, got)
	}
	if got := text(alice, "#js-cookies"); got != documentCookie(alice) {
		t.Errorf("step %q: the page shows %q as the cookies JavaScript sees", step, got)
	}

	step = "a second browser context never sees the first user's cookies"
	navigate(bob, chromedp.Navigate(base+"/"))
	noSession(bob)
	login(bob, "bob")
	bobCookies := store(bob)
	for _, c := range bobCookies {
		if c.Name == sessionCookie && c.Value == session.Value {
			t.Errorf("step %q: both users hold the same session", step)
		}
	}
	navigate(alice, chromedp.Reload())
	if got := text(alice, "b"); got != "alice" {
		t.Errorf("step %q: after bob logged in, alice's page says %q", step, got)
	}

	step = "logout through the page's button ends the session"
	if status := navigate(alice, chromedp.Click(chromedp.CSS(`form[action="/logout"] button`))); status != http.StatusOK {
		t.Fatalf("step %q: status %d", step, status)
	}
	run(alice, chromedp.WaitVisible(chromedp.CSS(`form[action="/login"]`)))
	noSession(alice)
	navigate(bob, chromedp.Reload())
	if got := text(bob, "b"); got != "bob" {
		t.Errorf("step %q: alice's logout ended bob's session (bob's page says %q)", step, got)
	}

	step = "the old session cookie, replayed, gets no cookies"
	req, err := http.NewRequest(http.MethodGet, base+"/account/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.AddCookie(&http.Cookie{Name: sessionCookie, Value: session.Value})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), `<p id="received">None.</p>`) {
		t.Errorf("step %q: the backend received cookies for the ended session:\n%s", step, page)
	}
	for _, c := range resp.Cookies() {
		if c.Name != sessionCookie || c.MaxAge >= 0 {
			t.Errorf("step %q: the replayed cookie got Set-Cookie %s=…; MaxAge %d, want only the session cookie expired", step, c.Name, c.MaxAge)
		}
	}

	step = "log out everywhere ends the user's sessions in every browser"
	bobPhone := newUser("bob's phone")
	users = append(users, bobPhone)
	navigate(bobPhone, chromedp.Navigate(base+"/"))
	login(bobPhone, "bob")
	navigate(bob, chromedp.Reload())
	if got := text(bob, "b"); got != "bob" {
		t.Fatalf("step %q: before, bob's first browser says %q", step, got)
	}
	if status := navigate(bobPhone, chromedp.Click(chromedp.CSS(`form[action="/logout-everywhere"] button`))); status != http.StatusOK {
		t.Fatalf("step %q: status %d", step, status)
	}
	run(bobPhone, chromedp.WaitVisible(chromedp.CSS(`form[action="/login"]`)))
	noSession(bobPhone)
	navigate(bob, chromedp.Reload())
	if got := text(bob, "b"); got != "" {
		t.Errorf("step %q: bob's other browser is still logged in as %q", step, got)
	}
	// The other browser keeps its own CSRF token, nothing else.
	if got := received(bob); len(got) > 1 || len(got) == 1 && got[0] != demo.CSRFCookie {
		t.Errorf("step %q: bob's other browser: the backend received %v", step, got)
	}
	if got := text(bob, "#session-note"); !strings.Contains(got, "carried no session") {
		t.Errorf("step %q: bob's other browser: the page says %q", step, got)
	}
	if got := names(store(bob)); slices.Contains(got, sessionCookie) {
		t.Errorf("step %q: bob's other browser still holds %v", step, got)
	}

	step = "no backend Set-Cookie crossed the browser's network boundary"
	entries := netlog.snapshot()
	sawSession := false
	for _, e := range entries {
		for _, line := range e.SetCookie {
			switch name := cookieName(line); name {
			case sessionCookie:
				sawSession = true
			case demo.CSRFCookie:
			default:
				t.Errorf("step %q: %s response to %s (%s) carried Set-Cookie %s", step, e.Event, e.URL, e.RequestID, name)
			}
		}
	}
	if !sawSession {
		t.Errorf("step %q: the network log (%d entries) shows no session Set-Cookie: the DevTools events were not seen", step, len(entries))
	}
	if t.Failed() {
		return
	}
	t.Logf("the demo story passed in %s through %s (%d network events checked)", filepath.Base(exe), base, len(entries))
}

// saveArtifacts writes what a failed browser test saw, and says where.
func saveArtifacts(t *testing.T, step string, users []*browserUser, netlog *networkLog, chromeOut []byte) {
	dir := os.Getenv("PROXYSESSION_ARTIFACTS")
	if dir != "" {
		dir = filepath.Join(dir, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Logf("artifacts: %v", err)
			return
		}
	} else {
		var err error
		if dir, err = os.MkdirTemp("", "proxysession-browser-"); err != nil {
			t.Logf("artifacts: %v", err)
			return
		}
	}
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Logf("artifacts: %v", err)
		}
	}
	for _, u := range users {
		if u == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(u.ctx, 10*time.Second)
		if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
			write(u.name+".png", png)
		} else {
			t.Logf("artifacts: screenshot of %s: %v", u.name, err)
		}
		if html, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.documentElement.outerHTML`)); err == nil {
			write(u.name+".html", []byte(html))
		}
		cancel()
	}
	if b, err := json.MarshalIndent(netlog.snapshot(), "", "  "); err == nil {
		write("network.json", b)
	}
	write("chromium.log", chromeOut)
	t.Logf("browser test failed at step %q; screenshots, pages, network log and browser output are in %s", step, dir)
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// syncWriter serialises writes to w.
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.w.Bytes())
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
