package redisstore_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxysession/proxysession/internal/redistest"
	"github.com/proxysession/proxysession/sessions"
	"github.com/proxysession/proxysession/sessions/storetest"
)

// expandOnly runs the request half of an exchange: the response comes
// later, with respond.
func (r *replica) expandOnly(t testing.TB, browser map[string]string, path string) *sessions.Exchange {
	t.Helper()
	req := &sessions.Request{Scheme: "https", Host: "app.test", Path: path, Cookies: storetest.BrowserJar(browser).Header()}
	var x sessions.Exchange
	if err := r.cache.Expand(context.Background(), req, &x); err != nil {
		t.Fatal(err)
	}
	return &x
}

func (r *replica) respond(x *sessions.Exchange, setCookies ...string) error {
	_, err := r.cache.Capture(context.Background(), x, &sessions.Response{SetCookie: setCookies})
	return err
}

// sessionKey returns the only key in Redis.
func sessionKey(t testing.TB, r *replica) string {
	t.Helper()
	keys, err := r.client.Keys(context.Background(), "*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys %v, %v", keys, err)
	}
	return keys[0]
}

// TestPurgeDoesNotUndoAParallelRefresh is the lost update of the issue:
// exchange A reads tok shortly before it expires; exchange B refreshes
// it; A's response sets another cookie, and A's limit check purges its
// copy of tok, now expired. B's fresh tok must survive.
func TestPurgeDoesNotUndoAParallelRefresh(t *testing.T) {
	srv := redistest.Start(t)
	clk := storetest.NewClock(time.Now())
	a := newReplica(t, srv.Addr, setup{now: clk.Now})
	b := a.sibling(t)
	browser := map[string]string{}
	a.exchange(t, browser, "/login", "tok=v1; Max-Age=60")

	clk.Advance(30 * time.Second)
	xa := a.expandOnly(t, browser, "/slow")
	if xa.Cookie != "tok=v1" {
		t.Fatalf("A's request got %q", xa.Cookie)
	}
	b.exchange(t, maps.Clone(browser), "/refresh", "tok=v2; Max-Age=3600")
	clk.Advance(31 * time.Second) // past the first tok's expiry
	if err := a.respond(xa, "other=1"); err != nil {
		t.Fatal(err)
	}
	if x := b.exchange(t, browser, "/"); x.Cookie != "tok=v2; other=1" {
		t.Errorf("after the parallel refresh the next request carries %q, want %q", x.Cookie, "tok=v2; other=1")
	}
}

// TestEvictionDoesNotUndoAParallelRefresh: the same for a cookie that A
// evicts for the limits while B refreshes it. The refreshed cookie stays,
// and A's new cookie, for which the session has no room now, is refused.
func TestEvictionDoesNotUndoAParallelRefresh(t *testing.T) {
	srv := redistest.Start(t)
	a := newReplica(t, srv.Addr, setup{maxCookies: 50})
	b := a.sibling(t)
	browser := map[string]string{}
	lines := make([]string, 50)
	for i := range lines {
		lines[i] = fmt.Sprintf("c%02d=1", i)
	}
	a.exchange(t, browser, "/login", lines...)

	xa := a.expandOnly(t, browser, "/")
	b.exchange(t, maps.Clone(browser), "/", "c00=2") // the oldest: A's eviction victim
	if err := a.respond(xa, "new=1"); err != nil {
		t.Fatal(err)
	}
	x := b.exchange(t, browser, "/")
	if !strings.HasPrefix(x.Cookie, "c00=2; ") {
		t.Errorf("the refreshed cookie was evicted by an exchange that read its old record: %q", x.Cookie)
	}
	if n := strings.Count(x.Cookie, "="); n > 50 {
		t.Errorf("%d cookies in a session limited to 50", n)
	}
	if got := a.store.Refused(); got != 1 {
		t.Errorf("Refused = %d, want 1 (new)", got)
	}
}

// TestParallelExchangesKeepTheLimits: 1,000 exchanges of one session, all
// reading it before any writes, each add one cookie. The session must
// stay within its limits (300 cookies, 32 KiB) in Redis and in the next
// request's Cookie header, whichever limit binds.
func TestParallelExchangesKeepTheLimits(t *testing.T) {
	// A cookie's size is its name, "=", value, domain (app.test) and path.
	const startSize = len("start=1") + len("app.test/")
	for name, tc := range map[string]struct {
		value string
		kept  int // cookies the session keeps: as many as the limits allow
	}{
		"count": {"v", sessions.DefaultMaxCookiesPerSession},
		"bytes": {strings.Repeat("b", 200), 1 + (sessions.DefaultMaxBytesPerSession-startSize)/len("c0000="+strings.Repeat("b", 200)+"app.test/")},
	} {
		t.Run(name, func(t *testing.T) {
			srv := redistest.Start(t)
			r := newReplica(t, srv.Addr, setup{timeout: 30 * time.Second})
			browser := map[string]string{}
			r.exchange(t, browser, "/login", "start=1")
			const n = 1000
			xs := make([]*sessions.Exchange, n)
			for i := range xs {
				xs[i] = r.expandOnly(t, browser, "/")
			}
			var wg sync.WaitGroup
			for i, x := range xs {
				wg.Go(func() {
					if err := r.respond(x, fmt.Sprintf("c%04d=%s", i, tc.value)); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()

			ctx := context.Background()
			fields, err := r.client.HKeys(ctx, sessionKey(t, r)).Result()
			if err != nil {
				t.Fatal(err)
			}
			cookies := 0
			for _, f := range fields {
				if len(f) == 8 { // a cookie's field; its tail's name is 7 bytes
					cookies++
				}
			}
			if cookies > sessions.DefaultMaxCookiesPerSession {
				t.Errorf("%d cookies in Redis, limit %d", cookies, sessions.DefaultMaxCookiesPerSession)
			}
			x := r.exchange(t, browser, "/")
			if len(x.Cookie) > sessions.DefaultMaxBytesPerSession {
				t.Errorf("the next request's Cookie header is %d bytes, limit %d", len(x.Cookie), sessions.DefaultMaxBytesPerSession)
			}
			if got := strings.Count(x.Cookie, "="); got > sessions.DefaultMaxCookiesPerSession || got != tc.kept {
				t.Errorf("the next request carries %d cookies, want %d: as many as the limits allow", got, tc.kept)
			}
			if !strings.Contains(x.Cookie, "start=1") {
				t.Errorf("the first cookie was lost: %.80q…", x.Cookie)
			}
			if got := r.store.Refused(); got == 0 || got+uint64(strings.Count(x.Cookie, "=")) != n+1 {
				t.Errorf("Refused = %d, with %d cookies sent: every cookie either kept or counted", got, strings.Count(x.Cookie, "="))
			}
		})
	}
}

// TestManyDeletions: a response deleting more cookies than Lua can unpack
// into one command's arguments still commits.
func TestManyDeletions(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv.Addr, setup{})
	browser := map[string]string{}
	r.exchange(t, browser, "/login", "keep=1", "gone=1")
	lines := []string{"gone=; Max-Age=0"}
	for i := range 8200 {
		lines = append(lines, fmt.Sprintf("d%d=; Max-Age=0", i))
	}
	x := r.expandOnly(t, browser, "/")
	if err := r.respond(x, lines...); err != nil {
		t.Fatalf("a response with %d deletions: %v", len(lines), err)
	}
	if x := r.exchange(t, browser, "/"); x.Cookie != "keep=1" {
		t.Errorf("after the deletions Cookie = %q", x.Cookie)
	}
}

// manySetCookies is the response of TestThirtyThousandSetCookies and its
// benchmark: 30,000 Set-Cookie lines, half new cookies (most of them
// evicted again by the per-domain limit), half deletions.
func manySetCookies() []string {
	lines := make([]string, 0, 30000)
	for i := range 15000 {
		lines = append(lines, fmt.Sprintf("c%d=v", i), fmt.Sprintf("d%d=; Max-Age=0", i))
	}
	return lines
}

// TestThirtyThousandSetCookies: such a response commits, and leaves the
// session within its limits. (BenchmarkThirtyThousandSetCookies times it.)
func TestThirtyThousandSetCookies(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv.Addr, setup{timeout: time.Minute})
	browser := map[string]string{}
	r.exchange(t, browser, "/login", "start=1")
	if err := r.respond(r.expandOnly(t, browser, "/"), manySetCookies()...); err != nil {
		t.Fatal(err)
	}
	x := r.exchange(t, browser, "/")
	if n := strings.Count(x.Cookie, "="); n != sessions.DefaultMaxCookiesPerDomain || !strings.Contains(x.Cookie, "c14999=v") {
		t.Errorf("%d cookies after the response, want the per-domain limit of the newest: %.80q…", n, x.Cookie)
	}
}

// BenchmarkThirtyThousandSetCookies is one response with 30,000
// Set-Cookie lines, against a real Redis: the engine's journal, the
// store's arguments and the commit script.
func BenchmarkThirtyThousandSetCookies(b *testing.B) {
	srv := redistest.Start(b)
	r := newReplica(b, srv.Addr, setup{timeout: time.Minute})
	browser := map[string]string{}
	r.exchange(b, browser, "/login", "start=1")
	lines := manySetCookies()
	for b.Loop() {
		if err := r.respond(r.expandOnly(b, browser, "/"), lines...); err != nil {
			b.Fatal(err)
		}
	}
}

// TestWrongSecretTouchesNothing: an id with the right lookup half and a
// wrong secret finds nothing and changes nothing: not the last-seen time
// nor the expiry (Find), not the session's existence (Delete), not its
// fields (Commit).
func TestWrongSecretTouchesNothing(t *testing.T) {
	srv := redistest.Start(t)
	clk := storetest.NewClock(time.Now())
	r := newReplica(t, srv.Addr, setup{now: clk.Now})
	browser := map[string]string{}
	r.exchange(t, browser, "/login", "sid=1", "prefs=2")
	ctx := context.Background()
	key := sessionKey(t, r)
	right, ok := sessions.ParseID(browser[sessions.DefaultCookieName])
	if !ok {
		t.Fatal("no session cookie")
	}
	wrong := storetest.WrongSecret(t, right)
	snapshot := func() (map[string]string, time.Duration) {
		h, err := r.client.HGetAll(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		at, err := r.client.PExpireTime(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return h, at
	}
	fields, expiry := snapshot()

	clk.Advance(time.Minute)
	if s, err := r.store.Find(ctx, wrong); err != nil || s != nil {
		t.Errorf("Find with a wrong secret: %v, %v", s, err)
	}
	if h, at := snapshot(); h["s"] != fields["s"] || at != expiry {
		t.Errorf("Find with a wrong secret renewed the session: state %x → %x, expiry %v → %v", fields["s"], h["s"], expiry, at)
	}

	if err := r.store.Delete(ctx, wrong); err != nil {
		t.Fatal(err)
	}
	if n, _ := r.client.Exists(ctx, key).Result(); n != 1 {
		t.Fatal("Delete with a wrong secret deleted the session")
	}

	found, err := r.store.Find(ctx, right)
	if err != nil || found == nil {
		t.Fatalf("Find with the right id: %v, %v", found, err)
	}
	cookies := found.Cookies()
	fields, expiry = snapshot()
	clk.Advance(time.Minute)
	forged := sessions.RestoreSession(wrong, found.Created(), found.LastSeen(), nil)
	if err := r.store.Commit(ctx, forged, &sessions.Changes{Stored: cookies, Deleted: []sessions.Deletion{{Key: cookies[0].Key()}}}); err != nil {
		t.Fatal(err)
	}
	if h, at := snapshot(); !maps.Equal(h, fields) || at != expiry {
		t.Errorf("Commit with a wrong secret wrote to the session: fields %v → %v, expiry %v → %v", slices.Sorted(maps.Keys(fields)), slices.Sorted(maps.Keys(h)), expiry, at)
	}
	if x := r.exchange(t, browser, "/"); x.Cookie != "sid=1; prefs=2" {
		t.Errorf("the session with the right id: %q", x.Cookie)
	}
}

// TestFullRedisEvictsSessions: Redis at its maxmemory with the shipped
// policy (volatile-ttl) evicts the sessions nearest to their expiry, the
// oldest here, and keeps serving: no request or response fails.
func TestFullRedisEvictsSessions(t *testing.T) {
	srv := redistest.Start(t, "--maxmemory", "4mb", "--maxmemory-policy", "volatile-ttl")
	clk := storetest.NewClock(time.Now())
	// A full Redis evicting under a loaded CI machine can take longer than
	// the default second: this test is about eviction, not timeouts.
	r := newReplica(t, srv.Addr, setup{now: clk.Now, timeout: 5 * time.Second})
	value := strings.Repeat("v", 400)
	var browsers []map[string]string
	for i := range 1500 {
		browser := map[string]string{}
		lines := make([]string, 10)
		for j := range lines {
			lines[j] = fmt.Sprintf("c%d=%s%d", j, value, i)
		}
		if _, err := r.try(browser, "/login", lines...); err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		browsers = append(browsers, browser)
		clk.Advance(time.Second) // later sessions expire later
	}
	if x := r.exchange(t, browsers[0], "/"); x.HasSession() {
		t.Error("the oldest session survived 6 MB of sessions in 4 MB")
	}
	if x := r.exchange(t, browsers[len(browsers)-1], "/"); !strings.HasPrefix(x.Cookie, "c0=") {
		t.Errorf("the newest session: %.40q", x.Cookie)
	}
	if n, _ := r.client.DBSize(context.Background()).Result(); n >= int64(len(browsers)) {
		t.Errorf("%d keys: nothing evicted", n)
	}
}

// TestSessionWithoutStateIsUnknown: a hash without its state field (the
// scripts' mark of a session of this format) is unknown, and left
// untouched until its TTL ends it.
func TestSessionWithoutStateIsUnknown(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv.Addr, setup{})
	browser := map[string]string{}
	r.exchange(t, browser, "/login", "sid=1")
	ctx := context.Background()
	key := sessionKey(t, r)
	r.client.HDel(ctx, key, "s")
	before, _ := r.client.HGetAll(ctx, key).Result()
	x := r.expandOnly(t, browser, "/")
	if x.HasSession() {
		t.Error("a session without its state was found")
	}
	if err := r.respond(x, "more=1"); err != nil { // a new session
		t.Fatal(err)
	}
	if after, _ := r.client.HGetAll(ctx, key).Result(); !maps.Equal(before, after) {
		t.Error("a session without its state was written to")
	}
}
