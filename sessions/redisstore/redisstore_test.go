package redisstore_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/proxysession/proxysession/internal/redistest"
	"github.com/proxysession/proxysession/sessions"
	"github.com/proxysession/proxysession/sessions/redisstore"
	"github.com/proxysession/proxysession/sessions/storetest"
)

// roundTrips counts the client's round trips to Redis.
type roundTrips struct{ n atomic.Int64 }

func (c *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}

func (c *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmds)
	}
}

// replica is one proxysession replica's engine on a shared Redis.
type replica struct {
	cache  *sessions.Cache
	store  *redisstore.Store
	client *redis.Client
	trips  *roundTrips
	setup  setup
}

type setup struct {
	lifetime, idle time.Duration
	now            func() time.Time
	password       string
	// Per-session limits, for the Cache and the store; 0 for the defaults.
	maxCookies, maxBytes int
	timeout              time.Duration // default 1s
	bindingKey           []byte        // binding off when nil
}

func newReplica(t testing.TB, addr string, s setup) *replica {
	t.Helper()
	if s.lifetime == 0 {
		s.lifetime, s.idle = 24*time.Hour, 2*time.Hour
	}
	if s.now == nil {
		s.now = time.Now
	}
	client := redis.NewClient(&redis.Options{Addr: addr, Password: s.password, MaxRetries: -1, DialTimeout: time.Second, ContextTimeoutEnabled: true})
	t.Cleanup(func() { client.Close() })
	trips := &roundTrips{}
	client.AddHook(trips)
	log := slog.New(slog.DiscardHandler)
	if s.timeout == 0 {
		s.timeout = time.Second
	}
	store, err := redisstore.New(client, redisstore.Options{Lifetime: s.lifetime, IdleTimeout: s.idle, Logger: log, Now: s.now, Timeout: s.timeout,
		MaxCookies: s.maxCookies, MaxBytes: s.maxBytes})
	if err != nil {
		t.Fatal(err)
	}
	cache, err := sessions.New(sessions.Config{Store: store, Lifetime: s.lifetime, IdleTimeout: s.idle, Logger: log, Now: s.now,
		MaxCookiesPerDomain: min(s.maxCookies, sessions.DefaultMaxCookiesPerDomain), MaxCookiesPerSession: s.maxCookies, MaxBytesPerSession: s.maxBytes, BindingKey: s.bindingKey})
	if err != nil {
		t.Fatal(err)
	}
	return &replica{cache: cache, store: store, client: client, trips: trips, setup: s}
}

// sibling returns another Cache (another replica's engine) on r's store.
func (r *replica) sibling(t testing.TB) *replica {
	t.Helper()
	s := r.setup
	cache, err := sessions.New(sessions.Config{Store: r.store, Lifetime: s.lifetime, IdleTimeout: s.idle, Logger: slog.New(slog.DiscardHandler), Now: s.now,
		MaxCookiesPerDomain: min(s.maxCookies, sessions.DefaultMaxCookiesPerDomain), MaxCookiesPerSession: s.maxCookies, MaxBytesPerSession: s.maxBytes, BindingKey: s.bindingKey})
	if err != nil {
		t.Fatal(err)
	}
	return &replica{cache: cache, store: r.store, client: r.client, trips: r.trips, setup: s}
}

// exchange runs one request with browser cookies (name → value) through
// r, the backend answering with setCookies, and updates the cookies.
func (r *replica) exchange(t testing.TB, browser map[string]string, path string, setCookies ...string) *sessions.Exchange {
	t.Helper()
	x, err := r.try(browser, path, setCookies...)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func (r *replica) try(browser map[string]string, path string, setCookies ...string) (*sessions.Exchange, error) {
	req := &sessions.Request{Scheme: "https", Host: "app.test", Path: path, Cookies: storetest.BrowserJar(browser).Header()}
	var x sessions.Exchange
	if err := r.cache.Expand(context.Background(), req, &x); err != nil {
		return nil, err
	}
	edit, err := r.cache.Capture(context.Background(), &x, &sessions.Response{SetCookie: setCookies})
	if err != nil {
		return nil, err
	}
	for _, line := range edit.SetCookie {
		c, err := http.ParseSetCookie(line)
		if err != nil {
			return nil, err
		}
		if c.MaxAge < 0 {
			delete(browser, c.Name)
		} else {
			browser[c.Name] = c.Value
		}
	}
	return &x, nil
}

func TestOneRoundTripEachWay(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv.Addr, setup{})
	browser := map[string]string{}
	r.exchange(t, browser, "/login", "sid=1", "prefs=a")
	r.exchange(t, browser, "/warm", "prefs=b") // loads the scripts (EVALSHA, then EVAL once)

	req := &sessions.Request{Scheme: "https", Host: "app.test", Path: "/", Cookies: []string{sessions.DefaultCookieName + "=" + browser[sessions.DefaultCookieName]}}
	var x sessions.Exchange
	before := r.trips.n.Load()
	if err := r.cache.Expand(context.Background(), req, &x); err != nil {
		t.Fatal(err)
	}
	if got := r.trips.n.Load() - before; got != 1 || x.Cookie != "sid=1; prefs=b" {
		t.Errorf("request path: %d round trips, Cookie %q; want 1 and the session's cookies", got, x.Cookie)
	}
	before = r.trips.n.Load()
	if _, err := r.cache.Capture(context.Background(), &x, &sessions.Response{SetCookie: []string{"a=1", "b=2", "prefs=; Max-Age=0"}}); err != nil {
		t.Fatal(err)
	}
	if got := r.trips.n.Load() - before; got != 1 {
		t.Errorf("response path: %d round trips, want 1", got)
	}
	// And a response with nothing to store costs none.
	before = r.trips.n.Load()
	if _, err := r.cache.Capture(context.Background(), &x, &sessions.Response{}); err != nil || r.trips.n.Load() != before {
		t.Errorf("empty response: %d round trips, %v", r.trips.n.Load()-before, err)
	}
}

// TestEncryptedAtRest dumps Redis after a login and looks for anything a
// reader could use: the session id or its parts, cookie names and values.
func TestEncryptedAtRest(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv.Addr, setup{})
	browser := map[string]string{}
	r.exchange(t, browser, "/login", "sessionid=TOPSECRETVALUE; Path=/", "user_name=alice; Domain=app.test")
	id, ok := sessions.ParseID(browser[sessions.DefaultCookieName])
	if !ok {
		t.Fatal("no session cookie")
	}
	ctx := context.Background()
	var dump strings.Builder
	keys, err := r.client.Keys(ctx, "*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys %v, %v", keys, err)
	}
	for _, k := range keys {
		dump.WriteString(k)
		h, err := r.client.HGetAll(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		for f, v := range h {
			dump.WriteString(f + v)
		}
	}
	lookup, secret := id.Key(), id.Secret()
	for _, secretThing := range []string{
		"TOPSECRETVALUE", "sessionid", "alice", "user_name", "app.test",
		browser[sessions.DefaultCookieName], string(lookup[:]), string(secret[:]),
		fmt.Sprintf("%x", lookup), fmt.Sprintf("%x", secret),
	} {
		if strings.Contains(dump.String(), secretThing) {
			t.Errorf("Redis holds %q in the clear", secretThing)
		}
	}
}

// TestReplicasShareSessions: a browser alternating between two replicas
// keeps all its cookies, and a logout through one ends the session on all.
func TestReplicasShareSessions(t *testing.T) {
	srv := redistest.Start(t)
	a, b := newReplica(t, srv.Addr, setup{}), newReplica(t, srv.Addr, setup{})
	browser := map[string]string{}
	a.exchange(t, browser, "/login", "sid=1")
	b.exchange(t, browser, "/x", "fromb=2")
	if x := a.exchange(t, browser, "/"); x.Cookie != "sid=1; fromb=2" {
		t.Errorf("through A after a write through B: %q", x.Cookie)
	}
	if x := b.exchange(t, browser, "/"); x.Cookie != "sid=1; fromb=2" {
		t.Errorf("through B: %q", x.Cookie)
	}
	old := browser[sessions.DefaultCookieName]
	var x sessions.Exchange
	if err := a.cache.Expand(context.Background(), &sessions.Request{Scheme: "https", Host: "app.test", Path: "/logout",
		Cookies: []string{sessions.DefaultCookieName + "=" + old}}, &x); err != nil {
		t.Fatal(err)
	}
	if _, err := a.cache.Capture(context.Background(), &x, &sessions.Response{ClearSiteData: []string{`"cookies"`}}); err != nil {
		t.Fatal(err)
	}
	if x := b.exchange(t, map[string]string{sessions.DefaultCookieName: old}, "/"); x.HasSession() || x.Cookie != "" {
		t.Errorf("B still serves the logged-out session: %q", x.Cookie)
	}
}

// TestParallelWritesToOneSession: six requests at a time, spread over two
// replicas, setting different cookies and the same one: no write is lost.
func TestParallelWritesToOneSession(t *testing.T) {
	srv := redistest.Start(t)
	replicas := []*replica{newReplica(t, srv.Addr, setup{}), newReplica(t, srv.Addr, setup{})}
	browser := map[string]string{}
	replicas[0].exchange(t, browser, "/login", "start=1")
	session := map[string]string{sessions.DefaultCookieName: browser[sessions.DefaultCookieName]}
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			for i := range 15 {
				cookies := map[string]string{sessions.DefaultCookieName: session[sessions.DefaultCookieName]}
				if _, err := replicas[(w+i)%2].try(cookies, "/", fmt.Sprintf("w%di%d=v", w, i), fmt.Sprintf("shared=w%di%d", w, i)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	x := replicas[1].exchange(t, browser, "/")
	for w := range 6 {
		for i := range 15 {
			if !strings.Contains(x.Cookie, fmt.Sprintf("w%di%d=v", w, i)) {
				t.Errorf("cookie w%di%d lost", w, i)
			}
		}
	}
	if strings.Count(x.Cookie, "shared=") != 1 {
		t.Errorf("the cookie all requests set appears %d times: %q", strings.Count(x.Cookie, "shared="), x.Cookie)
	}
}

// TestExpiry: the key's TTL follows the absolute lifetime and the idle
// timeout; Redis drops idle sessions itself; expired cookies are not sent
// and are deleted on the next write.
func TestExpiry(t *testing.T) {
	srv := redistest.Start(t)
	clk := storetest.NewClock(time.Now())
	r := newReplica(t, srv.Addr, setup{lifetime: 10 * time.Hour, idle: time.Hour, now: clk.Now})
	browser := map[string]string{}
	r.exchange(t, browser, "/login", "sid=1", "short=1; Max-Age=60")
	ctx := context.Background()
	keys, _ := r.client.Keys(ctx, "*").Result()
	if len(keys) != 1 {
		t.Fatalf("keys %v", keys)
	}
	key := keys[0]
	expireAt := func() time.Time {
		ms, err := r.client.PExpireTime(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return time.UnixMilli(int64(ms / time.Millisecond))
	}
	if got, want := expireAt(), clk.Now().Add(time.Hour); got.Sub(want).Abs() > time.Second {
		t.Errorf("new session expires at %v, want now + idle %v", got, want)
	}

	clk.Advance(2 * time.Minute)
	x := r.exchange(t, browser, "/")
	if x.Cookie != "sid=1" {
		t.Errorf("expired cookie sent: %q", x.Cookie)
	}
	if got, want := expireAt(), clk.Now().Add(time.Hour); got.Sub(want).Abs() > time.Second {
		t.Errorf("after a request the session expires at %v, want %v", got, want)
	}
	r.exchange(t, browser, "/", "other=1")
	if n, _ := r.client.HLen(ctx, key).Result(); n != 2+2 {
		t.Errorf("%d fields after a write, want state, meta, sid and other: the expired cookie deleted", n)
	}

	// Within an idle timeout of the absolute deadline, the TTL stops at
	// the deadline.
	for range 10 {
		clk.Advance(59 * time.Minute)
		r.exchange(t, browser, "/")
	}
	created := clk.Now().Add(-2*time.Minute - 10*59*time.Minute)
	if got, want := expireAt(), created.Add(10*time.Hour); got.Sub(want).Abs() > time.Second {
		t.Errorf("late in the session it expires at %v, want the absolute deadline %v", got, want)
	}

	// Past it, Redis has removed the key itself.
	clk.Advance(time.Hour)
	if x := r.exchange(t, browser, "/"); x.HasSession() {
		t.Error("expired session still served")
	}
	if n, _ := r.client.Exists(ctx, key).Result(); n != 0 {
		t.Error("expired session still in Redis")
	}

	// An idle session goes the same way.
	idle := map[string]string{}
	r.exchange(t, idle, "/login", "sid=2")
	clk.Advance(time.Hour)
	if x := r.exchange(t, idle, "/"); x.HasSession() {
		t.Error("idle session still served")
	}
	if n, _ := r.client.DBSize(ctx).Result(); n != 0 {
		t.Errorf("%d keys left in Redis", n)
	}
}

func TestTamperedRecordsAreAbsent(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv.Addr, setup{})
	ctx := context.Background()
	alice, bob := map[string]string{}, map[string]string{}
	r.exchange(t, alice, "/login", "sid=alice", "role=user")
	keys, _ := r.client.Keys(ctx, "*").Result()
	aliceKey := keys[0]
	r.exchange(t, bob, "/login", "sid=bob", "role=admin")
	keys, _ = r.client.Keys(ctx, "*").Result()
	bobKey := keys[0]
	if bobKey == aliceKey {
		bobKey = keys[1]
	}
	fields, _ := r.client.HGetAll(ctx, aliceKey).Result()
	bobFields, _ := r.client.HGetAll(ctx, bobKey).Result()

	// Flip one bit of each cookie record of Alice's in turn.
	var cookieFields []string
	for f := range fields {
		if len(f) > 1 {
			cookieFields = append(cookieFields, f)
		}
	}
	if len(cookieFields) != 2 {
		t.Fatalf("cookie fields %v", cookieFields)
	}
	v := []byte(fields[cookieFields[0]])
	v[len(v)-1] ^= 1
	r.client.HSet(ctx, aliceKey, cookieFields[0], v)
	x := r.exchange(t, alice, "/")
	if strings.Count(x.Cookie, "=") != 1 {
		t.Errorf("tampered cookie sent: %q", x.Cookie)
	}
	// Bob's records under Alice's fields do not authenticate either.
	for f, v := range bobFields {
		if len(f) > 1 {
			r.client.HSet(ctx, aliceKey, cookieFields[1], v)
			break
		}
	}
	if x := r.exchange(t, alice, "/"); strings.Contains(x.Cookie, "bob") || strings.Contains(x.Cookie, "admin") {
		t.Errorf("Bob's record accepted in Alice's session: %q", x.Cookie)
	}
	// A tampered session record makes the whole session absent.
	m := []byte(fields["m"])
	m[5] ^= 1
	r.client.HSet(ctx, aliceKey, "m", m)
	if x := r.exchange(t, alice, "/"); x.HasSession() {
		t.Error("session with a tampered record served")
	}
	if got := r.store.Undecryptable(); got < 3 {
		t.Errorf("Undecryptable = %d, want every bad record counted", got)
	}
	if x := r.exchange(t, bob, "/"); !strings.Contains(x.Cookie, "sid=bob") {
		t.Errorf("Bob's session harmed: %q", x.Cookie)
	}
}

// TestRedisRestart: Redis killed mid-test: every request of a session, and
// every response that would create one, fails (the processor turns that
// into a 503); readiness fails; after the restart the service resumes by
// itself with every cookie stored before.
func TestRedisRestart(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv.Addr, setup{})
	browser := map[string]string{}
	r.exchange(t, browser, "/login", "sid=1", "prefs=2")
	srv.Kill()
	if _, err := r.try(browser, "/"); err == nil {
		t.Error("request of a session served while Redis is down")
	}
	if _, err := r.try(map[string]string{}, "/login", "sid=9"); err == nil {
		t.Error("a new session's cookies accepted while Redis is down")
	}
	if err := r.cache.Check(context.Background()); err == nil {
		t.Error("ready while Redis is down")
	}
	srv.Restart()
	if err := r.cache.Check(context.Background()); err != nil {
		t.Errorf("not ready after Redis came back: %v", err)
	}
	if x := r.exchange(t, browser, "/"); x.Cookie != "sid=1; prefs=2" {
		t.Errorf("after the restart Cookie = %q", x.Cookie)
	}
}

func TestWrongPasswordAndUnreachable(t *testing.T) {
	srv := redistest.Start(t, "--requirepass", "right")
	for name, r := range map[string]*replica{
		"wrong password": newReplica(t, srv.Addr, setup{password: "wrong"}),
		"no password":    newReplica(t, srv.Addr, setup{}),
		"unreachable":    newReplica(t, "127.0.0.1:1", setup{}),
	} {
		err := r.cache.Check(context.Background())
		if err == nil {
			t.Errorf("%s: ready", name)
			continue
		}
		if name != "unreachable" && !strings.Contains(err.Error(), "WRONGPASS") && !strings.Contains(err.Error(), "NOAUTH") {
			t.Errorf("%s: error %q does not say what is wrong", name, err)
		}
	}
	if err := newReplica(t, srv.Addr, setup{password: "right"}).cache.Check(context.Background()); err != nil {
		t.Errorf("right password: %v", err)
	}
}
