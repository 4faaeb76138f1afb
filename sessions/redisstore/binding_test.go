package redisstore_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/proxysession/proxysession/internal/redistest"
	"github.com/proxysession/proxysession/sessions"
	"github.com/proxysession/proxysession/sessions/redisstore"
)

var bindingKey = bytes.Repeat([]byte("k"), 32)

func bindRound(t *testing.T, c *sessions.Cache, cookie string, resp *sessions.Response) (*sessions.Exchange, string) {
	t.Helper()
	req := &sessions.Request{Scheme: "https", Host: "app.test", Path: "/"}
	if cookie != "" {
		req.Cookies = []string{cookie}
	}
	var x sessions.Exchange
	if err := c.Expand(context.Background(), req, &x); err != nil {
		t.Fatal(err)
	}
	edit, err := c.Capture(context.Background(), &x, resp)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range edit.SetCookie {
		if strings.HasPrefix(line, c.CookieName()+"=") && !strings.Contains(line, "Max-Age=0") {
			pair, _, _ := strings.Cut(line, ";")
			return &x, pair
		}
	}
	return &x, ""
}

func loggedIn(t *testing.T, c *sessions.Cache, user, sid string) string {
	t.Helper()
	_, cookie := bindRound(t, c, "", &sessions.Response{SetCookie: []string{"pre=1; Path=/"}})
	_, after := bindRound(t, c, cookie, &sessions.Response{User: user, Sid: sid})
	if after == "" || after == cookie {
		t.Fatal("login did not rotate the id")
	}
	return after
}

func alive(t *testing.T, c *sessions.Cache, cookie string) bool {
	t.Helper()
	x, _ := bindRound(t, c, cookie, &sessions.Response{})
	return x.HasSession()
}

// TestUserLogoutEverywhereRedis: two replicas on one Redis; a logout
// header on one ends the user's sessions on both; sid, handle and admin
// ends; the indexes are empty afterwards.
func TestUserLogoutEverywhereRedis(t *testing.T) {
	srv := redistest.Start(t)
	a := newReplica(t, srv.Addr, setup{bindingKey: bindingKey})
	b := a.sibling(t)
	ctx := context.Background()
	alice1 := loggedIn(t, a.cache, "alice", "s1")
	alice2 := loggedIn(t, b.cache, "alice", "s2")
	bob := loggedIn(t, a.cache, "bob", "s3")
	if n, err := b.cache.CountUserSessions(ctx, "alice"); err != nil || n != 2 {
		t.Fatalf("CountUserSessions = %d, %v", n, err)
	}
	if x, _ := bindRound(t, a.cache, alice1, &sessions.Response{Logout: "user"}); x.HasSession() {
		t.Error("session kept after logout")
	}
	if alive(t, b.cache, alice2) || alive(t, a.cache, alice1) {
		t.Error("a session of alice survived")
	}
	if !alive(t, b.cache, bob) {
		t.Error("bob logged out with alice")
	}
	carol := loggedIn(t, b.cache, "carol", "sc")
	if n, err := a.cache.EndSidSessions(ctx, "sc", sessions.EndBackchannel); err != nil || n != 1 || alive(t, a.cache, carol) {
		t.Errorf("EndSidSessions = %d, %v", n, err)
	}
	dave := loggedIn(t, b.cache, "dave", "")
	x, _ := bindRound(t, a.cache, dave, &sessions.Response{})
	_ = x
	if n, err := a.cache.EndUserSessions(ctx, "bob", sessions.EndAdmin); err != nil || n != 1 || alive(t, a.cache, bob) {
		t.Errorf("EndUserSessions = %d, %v", n, err)
	}
	if n, err := a.cache.EndUserSessions(ctx, "dave", sessions.EndAdmin); err != nil || n != 1 {
		t.Errorf("EndUserSessions(dave) = %d, %v", n, err)
	}
	keys, _ := a.client.Keys(ctx, "*").Result()
	for _, k := range keys {
		if strings.Contains(k, ":u:") || strings.Contains(k, ":i:") || strings.Contains(k, ":h:") {
			if n, _ := a.client.ZCard(ctx, k).Result(); n > 0 || strings.Contains(k, ":h:") {
				t.Errorf("index %q outlives its sessions", k)
			}
		}
	}
}

// TestRedisIndexBounded: sessions of one user that vanish without a
// delete (idle expiry, eviction: no keyspace event) leave no more index
// members than live sessions once the index is used again.
func TestRedisIndexBounded(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv.Addr, setup{bindingKey: bindingKey})
	ctx := context.Background()
	for range 30 {
		loggedIn(t, r.cache, "u", "")
		// The session vanishes behind the store's back.
		keys, _ := r.client.Keys(ctx, "proxysession:*").Result()
		for _, k := range keys {
			if !strings.Contains(k, ":u:") && !strings.Contains(k, ":h:") {
				r.client.Del(ctx, k)
			}
		}
	}
	live := loggedIn(t, r.cache, "u", "")
	var userIndex string
	keys, _ := r.client.Keys(ctx, "proxysession:u:*").Result()
	if len(keys) != 1 {
		t.Fatalf("user indexes %v", keys)
	}
	userIndex = keys[0]
	if n, _ := r.client.ZCard(ctx, userIndex).Result(); n > 1 {
		t.Errorf("%d index members for 1 live session", n)
	}
	if ttl, _ := r.client.PTTL(ctx, userIndex).Result(); ttl <= 0 || ttl > r.setup.lifetime {
		t.Errorf("index TTL %v", ttl)
	}
	if n, _ := r.cache.CountUserSessions(ctx, "u"); n != 1 || !alive(t, r.cache, live) {
		t.Errorf("CountUserSessions = %d", n)
	}
}

// TestRedisRotation: the jar moves to the new id at login, the old id
// works within the grace (its writes land in the new session), and
// parallel requests with the old id lose no cookie.
func TestRedisRotation(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv.Addr, setup{bindingKey: bindingKey})
	_, old := bindRound(t, r.cache, "", &sessions.Response{SetCookie: []string{"pre=1; Path=/"}})
	const n = 20
	var wg sync.WaitGroup
	var mu sync.Mutex
	var cur string
	for i := range n + 1 {
		wg.Go(func() {
			req := &sessions.Request{Scheme: "https", Host: "app.test", Path: "/", Cookies: []string{old}}
			var x sessions.Exchange
			if err := r.cache.Expand(context.Background(), req, &x); err != nil {
				t.Error(err)
				return
			}
			resp := &sessions.Response{SetCookie: []string{fmt.Sprintf("c%d=%d; Path=/", i, i)}}
			if i == n {
				resp.User = "alice"
			}
			edit, err := r.cache.Capture(context.Background(), &x, resp)
			if err != nil {
				t.Error(err)
				return
			}
			for _, line := range edit.SetCookie {
				if strings.HasPrefix(line, r.cache.CookieName()+"=") {
					mu.Lock()
					cur, _, _ = strings.Cut(line, ";")
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if cur == "" || cur == old {
		t.Fatal("no rotation")
	}
	for _, ck := range []string{cur, old} {
		x, _ := bindRound(t, r.cache, ck, &sessions.Response{})
		for i := range n + 1 {
			if !strings.Contains(x.Cookie, fmt.Sprintf("c%d=%d", i, i)) || !strings.Contains(x.Cookie, "pre=1") {
				t.Errorf("cookie c%d lost: %q", i, x.Cookie)
			}
		}
	}
	// A write through the old id within the grace reaches the new id.
	bindRound(t, r.cache, old, &sessions.Response{SetCookie: []string{"late=1; Path=/"}})
	if x, _ := bindRound(t, r.cache, cur, &sessions.Response{}); !strings.Contains(x.Cookie, "late=1") {
		t.Errorf("write through the old id lost: %q", x.Cookie)
	}
	if n, _ := r.cache.CountUserSessions(context.Background(), "alice"); n != 1 {
		t.Errorf("CountUserSessions = %d after rotation", n)
	}
	if r.cache.Stats().Rotations != 1 {
		t.Errorf("Rotations = %d", r.cache.Stats().Rotations)
	}
	// After the grace the old key is gone.
	keys, _ := r.client.Keys(context.Background(), "proxysession:*").Result()
	for _, k := range keys {
		if strings.Count(k, ":") == 1 {
			if ttl, _ := r.client.PTTL(context.Background(), k).Result(); ttl <= 0 {
				t.Errorf("session key %q without expiry", k)
			}
		}
	}
}

// TestBindingOnCluster: binding, logout everywhere and rotation on Redis
// Cluster, where a session, its user's index and its new id live in
// different slots: no script may touch two keys.
func TestBindingOnCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	topo := redistest.StartCluster(t)
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: topo.Addrs(), DialTimeout: time.Second})
	t.Cleanup(func() { client.Close() })
	newCache := func() *sessions.Cache {
		store, err := redisstore.New(client, redisstore.Options{Lifetime: 24 * time.Hour, IdleTimeout: 2 * time.Hour, Timeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		c, err := sessions.New(sessions.Config{Store: store, BindingKey: bindingKey, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := newCache(), newCache()
	ctx := context.Background()
	var alice []string
	for range 6 {
		alice = append(alice, loggedIn(t, a, "alice", ""))
	}
	bob := loggedIn(t, b, "bob", "")
	if n, err := b.CountUserSessions(ctx, "alice"); err != nil || n != 6 {
		t.Fatalf("CountUserSessions = %d, %v", n, err)
	}
	// A write through a rotated-away id within the grace.
	_, old := bindRound(t, a, "", &sessions.Response{SetCookie: []string{"x=1; Path=/"}})
	_, cur := bindRound(t, a, old, &sessions.Response{User: "carol"})
	bindRound(t, b, old, &sessions.Response{SetCookie: []string{"late=1; Path=/"}})
	if x, _ := bindRound(t, b, cur, &sessions.Response{}); !strings.Contains(x.Cookie, "late=1") || !strings.Contains(x.Cookie, "x=1") {
		t.Errorf("cookies after rotation on the cluster: %q", x.Cookie)
	}
	bindRound(t, b, alice[0], &sessions.Response{Logout: "all"})
	for _, ck := range alice {
		if alive(t, a, ck) {
			t.Error("a session of alice survived on the cluster")
		}
	}
	if !alive(t, a, bob) {
		t.Error("bob's session ended")
	}
}

// TestRotationGraceEndsRedis: after the grace the old id is unknown.
func TestRotationGraceEndsRedis(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv.Addr, setup{bindingKey: bindingKey})
	c, err := sessions.New(sessions.Config{Store: r.store, BindingKey: bindingKey, RotationGrace: 200 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	_, old := bindRound(t, c, "", &sessions.Response{SetCookie: []string{"x=1; Path=/"}})
	_, cur := bindRound(t, c, old, &sessions.Response{User: "alice"})
	if !alive(t, c, old) {
		t.Error("the old id does not work within the grace")
	}
	time.Sleep(400 * time.Millisecond)
	if alive(t, c, old) {
		t.Error("the old id works after the grace")
	}
	if !alive(t, c, cur) {
		t.Error("the new id does not work")
	}
}
