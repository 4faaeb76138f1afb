package storetest

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxysession/proxysession/sessions"
)

// NewStoreFunc returns a new Store for one case of Run, holding no session
// that another case can see. cfg is the Cache's configuration with every
// default filled in (sessions.Config.WithDefaults) and without a Store: a
// store that expires sessions or bounds them itself takes cfg.Lifetime,
// cfg.IdleTimeout, cfg.MaxCookiesPerSession and cfg.MaxBytesPerSession
// from it, and reads the time from cfg.Now, the case's Clock.
type NewStoreFunc func(t *testing.T, cfg sessions.Config) sessions.Store

// The sessions of the suite's Caches live 10 hours at most, and end after
// an hour without a request.
const (
	suiteLifetime = 10 * time.Hour
	suiteIdle     = time.Hour
)

// Run runs the Store conformance suite against the stores newStore makes:
// the contract of sessions.Store, directly and through the session engine
// (sessions.Cache), which is how the proxy uses a store. Every store must
// pass it; a behaviour that only some stores have belongs in their own
// tests.
func Run(t *testing.T, newStore NewStoreFunc) {
	t.Run("FindMissing", func(t *testing.T) { testFindMissing(t, newStore) })
	t.Run("CommitNewThenFind", func(t *testing.T) { testCommitNewThenFind(t, newStore) })
	t.Run("WrongSecret", func(t *testing.T) { testWrongSecret(t, newStore) })
	t.Run("Delete", func(t *testing.T) { testDelete(t, newStore) })
	t.Run("LogoutIsNotUndone", func(t *testing.T) { testLogoutIsNotUndone(t, newStore) })
	t.Run("ChangesReachTheNextExchange", func(t *testing.T) { testChangesReachTheNextExchange(t, newStore) })
	t.Run("ParallelExchanges", func(t *testing.T) { testParallelExchanges(t, newStore) })
	t.Run("Lifetimes", func(t *testing.T) { testLifetimes(t, newStore) })
	t.Run("Check", func(t *testing.T) { testCheck(t, newStore) })
}

// env is one case's store, clock and engines.
type env struct {
	t     *testing.T
	clock *Clock
	cfg   sessions.Config
	store sessions.Store
	cache *sessions.Cache
}

func newEnv(t *testing.T, newStore NewStoreFunc) *env {
	t.Helper()
	// Milliseconds: a store may keep times no finer (Redis does).
	clock := NewClock(time.Now().Truncate(time.Millisecond))
	cfg, err := sessions.Config{
		Lifetime:    suiteLifetime,
		IdleTimeout: suiteIdle,
		Now:         clock.Now,
		Logger:      testLogger(t),
	}.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	store := newStore(t, cfg)
	if store == nil {
		t.Fatal("NewStoreFunc returned no store")
	}
	cfg.Store = store
	e := &env{t: t, clock: clock, cfg: cfg, store: store}
	e.cache = e.engine()
	return e
}

// engine returns a new Cache on the env's store: another replica of the
// proxy, sharing the sessions.
func (e *env) engine() *sessions.Cache {
	e.t.Helper()
	c, err := sessions.New(e.cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// request returns the browser's request to rawURL.
func (e *env) request(rawURL string, b BrowserJar) *sessions.Request {
	e.t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		e.t.Fatal(err)
	}
	return &sessions.Request{Scheme: u.Scheme, Host: u.Host, Path: u.RequestURI(), Method: http.MethodGet, Cookies: b.Header()}
}

// expand runs the request half of an exchange through c.
func (e *env) expand(c *sessions.Cache, rawURL string, b BrowserJar) *sessions.Exchange {
	e.t.Helper()
	var x sessions.Exchange
	if err := c.Expand(e.t.Context(), e.request(rawURL, b), &x); err != nil {
		e.t.Fatalf("Expand: %v", err)
	}
	return &x
}

// capture runs the response half of x through c and gives the browser
// what the proxy lets through.
func (e *env) capture(c *sessions.Cache, x *sessions.Exchange, b BrowserJar, resp *sessions.Response) {
	e.t.Helper()
	edit, err := c.Capture(e.t.Context(), x, resp)
	if err != nil {
		e.t.Fatalf("Capture: %v", err)
	}
	b.Apply(e.t, edit.SetCookie)
}

// exchange runs one request to rawURL through the env's Cache, the backend
// answering with setCookies, and returns the request's Exchange.
func (e *env) exchange(rawURL string, b BrowserJar, setCookies ...string) *sessions.Exchange {
	e.t.Helper()
	x := e.expand(e.cache, rawURL, b)
	e.capture(e.cache, x, b, &sessions.Response{SetCookie: setCookies})
	return x
}

// login starts a session whose backend set setCookies at
// https://example.com/login, and returns the browser's jar.
func (e *env) login(setCookies ...string) BrowserJar {
	e.t.Helper()
	b := BrowserJar{}
	e.exchange("https://example.com/login", b, setCookies...)
	if _, ok := b[e.cfg.CookieName]; !ok {
		e.t.Fatalf("the login set no session cookie: %v", b)
	}
	return b
}

// id returns the session id the browser holds.
func (e *env) id(b BrowserJar) sessions.ID {
	e.t.Helper()
	id, ok := sessions.ParseID(b[e.cfg.CookieName])
	if !ok {
		e.t.Fatalf("the browser holds no session cookie: %v", b)
	}
	return id
}

// jarFor returns a browser jar holding only the session cookie of id.
func (e *env) jarFor(id sessions.ID) BrowserJar {
	return BrowserJar{e.cfg.CookieName: id.CookieValue()}
}

// find looks id up in the store directly; a store error fails the test.
func (e *env) find(id sessions.ID) *sessions.Session {
	e.t.Helper()
	s, err := e.store.Find(e.t.Context(), id)
	if err != nil {
		e.t.Fatalf("Find: %v", err)
	}
	return s
}

// cookieList renders a session's cookies for messages and comparisons.
func cookieList(s *sessions.Session) string {
	if s == nil {
		return "<no session>"
	}
	var b strings.Builder
	for i, c := range s.Cookies() {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s=%s (%s%s)", c.Name(), c.Value(), c.Domain(), c.Path())
	}
	return b.String()
}

// testFindMissing: "not found" is not an error.
func testFindMissing(t *testing.T, newStore NewStoreFunc) {
	e := newEnv(t, newStore)
	if s, err := e.store.Find(t.Context(), NewID(t)); s != nil || err != nil {
		t.Errorf("Find of an id never stored = %v, %v; want nil, nil", cookieList(s), err)
	}
	// Nor is a session the store holds found under another id.
	e.login("sid=1; Path=/")
	if s, err := e.store.Find(t.Context(), NewID(t)); s != nil || err != nil {
		t.Errorf("Find of an unknown id beside a stored session = %v, %v; want nil, nil", cookieList(s), err)
	}
}

// sourceCookies returns real jar cookies, made by an engine on its own
// memory store: a Store takes its cookies from the jar, and outside
// package sessions they can come from nowhere else. They are in the order
// a session sends them (longest path first, then oldest).
func sourceCookies(t *testing.T, clock *Clock) []sessions.Cookie {
	t.Helper()
	src, err := sessions.New(sessions.Config{Now: clock.Now, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var x sessions.Exchange
	req := &sessions.Request{Scheme: "https", Host: "example.com", Path: "/app/", Method: http.MethodGet}
	if err := src.Expand(t.Context(), req, &x); err != nil {
		t.Fatal(err)
	}
	edit, err := src.Capture(t.Context(), &x, &sessions.Response{SetCookie: []string{
		"sid=1; Path=/; Secure; HttpOnly; SameSite=Strict",
		"app=2; Path=/app",
		"pref=3; Path=/; Domain=example.com; Max-Age=3600",
	}})
	if err != nil {
		t.Fatal(err)
	}
	b := BrowserJar{}
	b.Apply(t, edit.SetCookie)
	id, ok := sessions.ParseID(b[src.CookieName()])
	if !ok {
		t.Fatal("the source engine made no session")
	}
	s, err := src.Store().Find(t.Context(), id)
	if err != nil || s == nil {
		t.Fatalf("the source session: %v", err)
	}
	cookies := s.Cookies()
	if len(cookies) != 3 {
		t.Fatalf("the source session holds %d cookies, want 3", len(cookies))
	}
	return cookies
}

// testCommitNewThenFind: a committed new session is found with its id,
// times and cookies, in the order they are sent, and the engine serves it.
func testCommitNewThenFind(t *testing.T, newStore NewStoreFunc) {
	e := newEnv(t, newStore)
	cookies := sourceCookies(t, e.clock)
	// The journal lists cookies in no particular order; the store must
	// restore the order the jar sends them in.
	shuffled := slices.Clone(cookies)
	slices.Reverse(shuffled)

	id, created := NewID(t), e.clock.Now()
	s := sessions.RestoreSession(id, created, created, shuffled)
	if err := e.store.Commit(t.Context(), s, &sessions.Changes{New: true, Stored: shuffled}); err != nil {
		t.Fatalf("Commit of a new session: %v", err)
	}
	found := e.find(id)
	if found == nil {
		t.Fatal("a committed session is not found")
	}
	if !found.ID().Equal(id) {
		t.Error("the session found has another id")
	}
	if got := found.Created(); got.UnixMilli() != created.UnixMilli() {
		t.Errorf("Created = %v, want %v", got, created)
	}
	if got := found.LastSeen(); got.UnixMilli() != created.UnixMilli() {
		t.Errorf("LastSeen = %v, want %v", got, created)
	}
	if got := found.Cookies(); !slices.Equal(got, cookies) {
		t.Errorf("cookies found:\n  %v\nwant, in this order:\n  %v", got, cookies)
	}

	for _, tc := range []struct{ url, want string }{
		{"https://example.com/app/x", "app=2; sid=1; pref=3"},
		{"https://example.com/", "sid=1; pref=3"},
		{"https://www.example.com/", "pref=3"},
	} {
		if x := e.expand(e.cache, tc.url, e.jarFor(id)); !x.HasSession() || x.Cookie != tc.want {
			t.Errorf("request to %s: session %v, Cookie %q; want %q", tc.url, x.HasSession(), x.Cookie, tc.want)
		}
	}
}

// testWrongSecret: an id with a session's lookup half and a wrong secret
// finds, deletes, writes and keeps alive nothing.
func testWrongSecret(t *testing.T, newStore NewStoreFunc) {
	const want = "sid=1; prefs=2"
	for _, tc := range []struct {
		name string
		try  func(t *testing.T, e *env, right, wrong sessions.ID)
	}{
		{"Find finds nothing", func(t *testing.T, e *env, _, wrong sessions.ID) {
			if s, err := e.store.Find(t.Context(), wrong); s != nil || err != nil {
				t.Errorf("Find with a wrong secret = %v, %v; want nil, nil", cookieList(s), err)
			}
		}},
		{"Delete deletes nothing", func(t *testing.T, e *env, _, wrong sessions.ID) {
			if err := e.store.Delete(t.Context(), wrong); err != nil {
				t.Errorf("Delete with a wrong secret: %v", err)
			}
		}},
		{"Commit writes nothing", func(t *testing.T, e *env, right, wrong sessions.ID) {
			orig := e.find(right)
			if orig == nil {
				t.Fatal("the session is not found")
			}
			cookies := orig.Cookies()
			// A cookie of the attacker's own, written under the victim's id.
			other := e.login("planted=evil; Path=/")
			planted := e.find(e.id(other)).Cookies()
			forged := sessions.RestoreSession(wrong, orig.Created(), orig.LastSeen(), nil)
			err := e.store.Commit(t.Context(), forged, &sessions.Changes{
				Stored:  planted,
				Deleted: []sessions.Deletion{{Key: cookies[0].Key()}},
			})
			t.Logf("Commit with a wrong secret: %v", err) // refusing loudly is fine too
		}},
		{"the engine gives a forged cookie a session of its own", func(t *testing.T, e *env, right, wrong sessions.ID) {
			b := e.jarFor(wrong)
			x := e.expand(e.cache, "https://example.com/", b)
			if x.HasSession() || x.Cookie != "" {
				t.Errorf("a forged session cookie was served the session: %q", x.Cookie)
			}
			e.capture(e.cache, x, b, &sessions.Response{SetCookie: []string{"planted=evil; Path=/"}})
			id := e.id(b)
			if id.Key() == right.Key() || id.Equal(wrong) {
				t.Error("the new session reuses the forged id")
			}
			if x := e.expand(e.cache, "https://example.com/", b); x.Cookie != "planted=evil" {
				t.Errorf("the forged cookie's new session carries %q", x.Cookie)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, newStore)
			victim := e.login("sid=1; Path=/", "prefs=2; Path=/")
			right := e.id(victim)
			before := cookieList(e.find(right))
			tc.try(t, e, right, WrongSecret(t, right))
			if got := cookieList(e.find(right)); got != before {
				t.Errorf("the session changed:\n  %s\nwas\n  %s", got, before)
			}
			if x := e.expand(e.cache, "https://example.com/", victim); x.Cookie != want {
				t.Errorf("the victim's next request carries %q, want %q", x.Cookie, want)
			}
		})
	}
}

// testDelete: Delete ends exactly the session it names, and deleting what
// is not there is not an error.
func testDelete(t *testing.T, newStore NewStoreFunc) {
	for _, tc := range []struct {
		name     string
		del      func(e *env, victim sessions.ID) sessions.ID // returns the id to delete
		wantGone bool
	}{
		{"a missing session is not an error", func(e *env, _ sessions.ID) sessions.ID { return NewID(e.t) }, false},
		{"twice is not an error", func(e *env, victim sessions.ID) sessions.ID {
			if err := e.store.Delete(e.t.Context(), victim); err != nil {
				e.t.Fatalf("Delete: %v", err)
			}
			return victim
		}, true},
		{"ends the session", func(_ *env, victim sessions.ID) sessions.ID { return victim }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, newStore)
			victim := e.login("sid=1; Path=/")
			bystander := e.login("sid=2; Path=/")
			id := e.id(victim)
			if err := e.store.Delete(t.Context(), tc.del(e, id)); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if gone := e.find(id) == nil; gone != tc.wantGone {
				t.Errorf("after Delete the session is gone: %v, want %v", gone, tc.wantGone)
			}
			x := e.exchange("https://example.com/", victim)
			if x.HasSession() == tc.wantGone {
				t.Errorf("the next request has a session: %v, Cookie %q", x.HasSession(), x.Cookie)
			}
			if _, kept := victim[e.cfg.CookieName]; kept == tc.wantGone {
				t.Errorf("the browser keeps its session cookie: %v; want it expired exactly when the session is gone", kept)
			}
			if x := e.expand(e.cache, "https://example.com/", bystander); x.Cookie != "sid=2" {
				t.Errorf("another session was harmed: Cookie %q", x.Cookie)
			}
		})
	}
}

// testLogoutIsNotUndone: a session deleted while an exchange holds it (a
// parallel logout, on this replica or another) stays deleted when that
// exchange commits its changes.
func testLogoutIsNotUndone(t *testing.T, newStore NewStoreFunc) {
	t.Run("Commit after Delete", func(t *testing.T) {
		e := newEnv(t, newStore)
		id := e.id(e.login("sid=1; Path=/"))
		s := e.find(id)
		if s == nil {
			t.Fatal("the session is not found")
		}
		if err := e.store.Delete(t.Context(), id); err != nil {
			t.Fatal(err)
		}
		late := e.find(e.id(e.login("late=1; Path=/"))).Cookies()
		if err := e.store.Commit(t.Context(), s, &sessions.Changes{Stored: late}); err != nil {
			t.Errorf("Commit to a session deleted meanwhile: %v", err)
		}
		if s := e.find(id); s != nil {
			t.Errorf("the commit brought the deleted session back: %s", cookieList(s))
		}
	})
	t.Run("through the engine", func(t *testing.T) {
		e := newEnv(t, newStore)
		other := e.engine()
		b := e.login("sid=1; Path=/")
		id := e.id(b)
		slow := e.expand(e.cache, "https://example.com/slow", b)
		if !slow.HasSession() {
			t.Fatal("the slow request has no session")
		}
		// The logout goes through another replica.
		logout := e.expand(other, "https://example.com/logout", maps.Clone(b))
		e.capture(other, logout, BrowserJar{}, &sessions.Response{ClearSiteData: []string{`"cookies"`}})
		// The slow request's response comes after it.
		e.capture(e.cache, slow, maps.Clone(b), &sessions.Response{SetCookie: []string{"late=1; Path=/"}})
		if s := e.find(id); s != nil {
			t.Errorf("the slow response brought the logged-out session back: %s", cookieList(s))
		}
		if x := e.expand(e.cache, "https://example.com/", b); x.HasSession() || x.Cookie != "" {
			t.Errorf("the logged-out session is served: %q", x.Cookie)
		}
	})
}

// testChangesReachTheNextExchange: what one exchange stores, replaces and
// deletes is what the next one sends, on this replica or another, with
// the jar's scoping (host, domain, path), order and expiry.
func testChangesReachTheNextExchange(t *testing.T, newStore NewStoreFunc) {
	e := newEnv(t, newStore)
	other := e.engine()
	b := BrowserJar{}
	for i, step := range []struct {
		advance time.Duration // before the request
		other   bool          // through the other replica
		url     string
		want    string // the Cookie header the request carries
		set     []string
	}{
		{url: "https://example.com/login", set: []string{
			"sid=1; Path=/", "theme=dark; Path=/", "app=a; Path=/app",
			"short=s; Path=/; Max-Age=60", "wide=w; Path=/; Domain=example.com",
		}},
		{url: "https://example.com/", want: "sid=1; theme=dark; short=s; wide=w"},
		{url: "https://example.com/app/x", want: "app=a; sid=1; theme=dark; short=s; wide=w"},
		{url: "https://example.com/application", want: "sid=1; theme=dark; short=s; wide=w"},
		{url: "https://www.example.com/", want: "wide=w", other: true},
		{url: "https://example.com/", want: "sid=1; theme=dark; short=s; wide=w", set: []string{"theme=light; Path=/"}},
		{url: "https://example.com/", want: "sid=1; theme=light; short=s; wide=w", set: []string{"sid=; Path=/; Max-Age=0"}, other: true},
		{url: "https://example.com/app/", want: "app=a; theme=light; short=s; wide=w", set: []string{"app=; Path=/app; Expires=Thu, 01 Jan 1970 00:00:00 GMT"}},
		{url: "https://example.com/app/", want: "theme=light; short=s; wide=w", other: true},
		{advance: 2 * time.Minute, url: "https://example.com/", want: "theme=light; wide=w", set: []string{"new=n; Path=/"}},
		{url: "https://www.example.com/", want: "wide=w", set: []string{"wide=W; Domain=example.com; Path=/", "www=1; Path=/"}, other: true},
		{url: "https://example.com/", want: "theme=light; wide=W; new=n"},
		{url: "https://www.example.com/", want: "wide=W; www=1"},
	} {
		e.clock.Advance(step.advance)
		c := e.cache
		if step.other {
			c = other
		}
		x := e.expand(c, step.url, b)
		if x.Cookie != step.want {
			t.Errorf("step %d: the request to %s carries %q, want %q", i, step.url, x.Cookie, step.want)
		}
		if i > 0 && !x.HasSession() {
			t.Fatalf("step %d: the session is lost", i)
		}
		e.capture(c, x, b, &sessions.Response{SetCookie: step.set})
	}
	if st := e.cache.Stats(); st.SessionsCreated != 1 {
		t.Errorf("%d sessions created, want 1", st.SessionsCreated)
	}
}

// testParallelExchanges: a browser's parallel requests, spread over two
// replicas, each set a cookie of their own and one they share: no write is
// lost, and the shared cookie is stored once.
func testParallelExchanges(t *testing.T, newStore NewStoreFunc) {
	e := newEnv(t, newStore)
	engines := []*sessions.Cache{e.cache, e.engine()}
	b := e.login("start=1; Path=/")
	header := b.Header()
	const workers, perWorker = 6, 15
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				c := engines[(w+i)%len(engines)]
				var x sessions.Exchange
				req := &sessions.Request{Scheme: "https", Host: "example.com", Path: "/", Method: http.MethodGet, Cookies: header}
				if err := c.Expand(context.Background(), req, &x); err != nil || !strings.Contains(x.Cookie, "start=1") {
					t.Errorf("Expand: %v, Cookie %q", err, x.Cookie)
					return
				}
				edit, err := c.Capture(context.Background(), &x, &sessions.Response{SetCookie: []string{
					fmt.Sprintf("w%di%d=v; Path=/", w, i), fmt.Sprintf("shared=w%di%d; Path=/", w, i),
				}})
				if err != nil || len(edit.SetCookie) != 0 {
					t.Errorf("Capture: %v, Set-Cookie to the browser %q", err, edit.SetCookie)
					return
				}
			}
		})
	}
	wg.Wait()
	x := e.expand(e.cache, "https://example.com/", b)
	for w := range workers {
		for i := range perWorker {
			if !strings.Contains(x.Cookie, fmt.Sprintf("w%di%d=v", w, i)) {
				t.Errorf("cookie w%di%d lost", w, i)
			}
		}
	}
	if n := strings.Count(x.Cookie, "shared="); n != 1 {
		t.Errorf("the cookie every request set is sent %d times", n)
	}
	if n := strings.Count(x.Cookie, "="); n != 1+workers*perWorker+1 {
		t.Errorf("%d cookies sent, want %d", n, 1+workers*perWorker+1)
	}
}

// testLifetimes: a session ends after its idle timeout and at its
// absolute lifetime, and the engine then ends it in the store too. A
// lookup with a wrong secret is not activity.
func testLifetimes(t *testing.T, newStore NewStoreFunc) {
	for _, tc := range []struct {
		name string
		// run moves the clock on and makes requests; it returns whether
		// the session must still be there.
		run func(e *env, right, wrong BrowserJar) bool
	}{
		{"activity within the idle timeout keeps it", func(e *env, right, _ BrowserJar) bool {
			for i := range 5 {
				e.clock.Advance(suiteIdle - time.Minute)
				if x := e.expand(e.cache, "https://example.com/", right); x.Cookie != "sid=1" {
					e.t.Fatalf("request %d, a minute within the idle timeout: Cookie %q", i, x.Cookie)
				}
			}
			return true
		}},
		{"the idle timeout ends it", func(e *env, _, _ BrowserJar) bool {
			e.clock.Advance(suiteIdle)
			return false
		}},
		{"a lookup keeps it alive", func(e *env, right, _ BrowserJar) bool {
			e.clock.Advance(suiteIdle * 2 / 3)
			e.expand(e.cache, "https://example.com/", right)
			e.clock.Advance(suiteIdle * 2 / 3)
			return true
		}},
		{"a lookup with a wrong secret does not", func(e *env, _, wrong BrowserJar) bool {
			e.clock.Advance(suiteIdle * 2 / 3)
			if x := e.expand(e.cache, "https://example.com/", wrong); x.HasSession() {
				e.t.Error("a wrong secret was served the session")
			}
			if s := e.find(e.id(wrong)); s != nil {
				e.t.Error("Find with a wrong secret found the session")
			}
			e.clock.Advance(suiteIdle * 2 / 3)
			return false
		}},
		{"the absolute lifetime ends it", func(e *env, right, _ BrowserJar) bool {
			start := e.clock.Now()
			for e.clock.Now().Sub(start) < suiteLifetime-suiteIdle {
				e.clock.Advance(suiteIdle / 2)
				if x := e.expand(e.cache, "https://example.com/", right); !x.HasSession() {
					e.t.Fatalf("the session ended after %v in use", e.clock.Now().Sub(start))
				}
			}
			e.clock.Advance(start.Add(suiteLifetime - time.Second).Sub(e.clock.Now()))
			if x := e.expand(e.cache, "https://example.com/", right); !x.HasSession() {
				e.t.Fatal("the session ended a second before its lifetime")
			}
			e.clock.Advance(time.Second)
			return false
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, newStore)
			right := e.login("sid=1; Path=/")
			id := e.id(right)
			wrong := e.jarFor(WrongSecret(t, id))
			alive := tc.run(e, right, wrong)

			x := e.exchange("https://example.com/", right)
			if x.HasSession() != alive {
				t.Errorf("the session is served: %v, want %v (Cookie %q)", x.HasSession(), alive, x.Cookie)
			}
			if _, kept := right[e.cfg.CookieName]; kept != alive {
				t.Errorf("the browser keeps its session cookie: %v, want %v", kept, alive)
			}
			if gone := e.find(id) == nil; gone == alive {
				t.Errorf("the session is gone from the store: %v, want %v", gone, !alive)
			}
		})
	}
}

// testCheck: a store that is up reports ready.
func testCheck(t *testing.T, newStore NewStoreFunc) {
	e := newEnv(t, newStore)
	if err := e.cache.Check(t.Context()); err != nil {
		t.Errorf("Check: %v", err)
	}
	if p, ok := e.store.(sessions.Pinger); ok {
		if err := p.Ping(t.Context()); err != nil {
			t.Errorf("Ping: %v", err)
		}
	}
}
