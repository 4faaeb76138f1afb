package sessions

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxysession/proxysession/internal/browsertest"
)

var (
	testBindingKey  = bytes.Repeat([]byte("k"), 32)
	testBindingKey2 = bytes.Repeat([]byte("n"), 32)
)

func newBindingCache(t *testing.T, store Store, clock *testClock, key, prev []byte) *Cache {
	t.Helper()
	c, err := New(Config{Store: store, Logger: testLogger(t), Now: clock.Now,
		BindingKey: key, PreviousBindingKey: prev, SessionHandleHeader: "Proxysession-Session-Handle"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func bindReq(cookie string) *Request {
	r := &Request{Scheme: "https", Host: "app.test", Path: "/"}
	if cookie != "" {
		r.Cookies = []string{cookie}
	}
	return r
}

// sessionCookieOf returns "name=value" of the session cookie an edit
// sets, or "".
func sessionCookieOf(c *Cache, edit ResponseEdit) string {
	for _, line := range edit.SetCookie {
		if strings.HasPrefix(line, c.CookieName()+"=") && !strings.Contains(line, "Max-Age=0") {
			pair, _, _ := strings.Cut(line, ";")
			return pair
		}
	}
	return ""
}

// newBoundSession creates a session with one cookie and binds it to
// user in a second exchange (a login: the id rotates). It returns the
// session cookie after login.
func newBoundSession(t *testing.T, c *Cache, user, sid string) string {
	t.Helper()
	_, edit := roundTrip(t, c, bindReq(""), &Response{SetCookie: []string{"pre=1; Path=/"}})
	cookie := sessionCookieOf(c, edit)
	if cookie == "" {
		t.Fatal("no session created")
	}
	_, edit = roundTrip(t, c, bindReq(cookie), &Response{User: user, Sid: sid})
	after := sessionCookieOf(c, edit)
	if after == "" || after == cookie {
		t.Fatalf("login did not rotate the session id: %q", edit.SetCookie)
	}
	return after
}

func hasSession(t *testing.T, c *Cache, cookie string) bool {
	t.Helper()
	var x Exchange
	if err := c.Expand(context.Background(), bindReq(cookie), &x); err != nil {
		t.Fatal(err)
	}
	return x.HasSession()
}

func TestCaptureAlwaysRemovesBindingHeaders(t *testing.T) {
	for _, key := range [][]byte{nil, testBindingKey} {
		c := newBindingCache(t, nil, newTestClock(), key, nil)
		for _, resp := range []*Response{{}, {User: "alice"}, {SetCookie: []string{"a=1"}, Logout: "user"}} {
			_, edit := roundTrip(t, c, bindReq(""), resp)
			want := []string{"proxysession-user", "proxysession-sid", "proxysession-logout", "proxysession-rotate"}
			if fmt.Sprint(edit.RemoveHeaders) != fmt.Sprint(want) {
				t.Errorf("key %v: RemoveHeaders %v, want %v", key != nil, edit.RemoveHeaders, want)
			}
		}
	}
}

func TestSessionHandlerNeverLeaksBindingHeaders(t *testing.T) {
	for _, key := range [][]byte{nil, testBindingKey} {
		c := newBindingCache(t, nil, newTestClock(), key, nil)
		var seenHandle []string
		backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			seenHandle = r.Header.Values("Proxysession-Session-Handle")
			h := w.Header()
			h["Proxysession-User"] = []string{"alice"}
			h["proxysession-sid"] = []string{"sid-1"}
			h["PROXYSESSION-LOGOUT"] = []string{"session-x"}
			h["Proxysession-Rotate "] = []string{"1"}
			h.Set("Trailer", "Proxysession-User")
			h[http.TrailerPrefix+"Proxysession-Sid"] = []string{"t"}
			if r.URL.Path == "/cookie" {
				http.SetCookie(w, &http.Cookie{Name: "a", Value: "1", Path: "/"})
			}
			w.WriteHeader(200)
			w.Header().Set("Proxysession-User", "trailer-alice")
		})
		srv := httptest.NewServer(c.SessionHandler(backend, nil))
		for _, path := range []string{"/", "/cookie"} {
			req, _ := http.NewRequest("GET", srv.URL+path, nil)
			req.Header.Set("Proxysession-Session-Handle", "spoofed")
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			for _, h := range []http.Header{res.Header, res.Trailer} {
				for k := range h {
					if strings.Contains(strings.ToLower(k), "proxysession-") {
						t.Errorf("key %v %s: %q reached the browser", key != nil, path, k)
					}
				}
			}
			if len(res.Header.Values("Trailer")) > 0 && strings.Contains(strings.ToLower(fmt.Sprint(res.Header.Values("Trailer"))), "proxysession") {
				t.Errorf("trailer declared: %v", res.Header.Values("Trailer"))
			}
			for _, v := range seenHandle {
				// Binding off: the header means nothing, and is left alone.
				if v == "spoofed" && key != nil {
					t.Error("the browser's handle header reached the backend")
				}
			}
		}
		srv.Close()
	}
}

func TestUserLogoutEverywhereMemory(t *testing.T) {
	store, _ := NewMemoryStore(100)
	clock := newTestClock()
	a := newBindingCache(t, store, clock, testBindingKey, nil)
	b := newBindingCache(t, store, clock, testBindingKey, nil)
	testUserLogoutEverywhere(t, a, b, func() int { return store.BoundLen() })
}

// testUserLogoutEverywhere checks binding and ending sessions by user,
// sid and handle, through two Caches on one store (two replicas).
func testUserLogoutEverywhere(t *testing.T, a, b *Cache, indexLen func() int) {
	ctx := context.Background()
	alice1 := newBoundSession(t, a, "alice", "sid-1")
	alice2 := newBoundSession(t, b, "alice", "sid-2")
	bob := newBoundSession(t, a, "bob", "sid-3")
	if n, err := b.CountUserSessions(ctx, "alice"); err != nil || n != 2 {
		t.Fatalf("CountUserSessions = %d, %v; want 2", n, err)
	}
	// The backend's logout header, through replica a, ends alice's
	// sessions everywhere.
	x, edit := roundTrip(t, a, bindReq(alice1), &Response{Logout: "user"})
	if x.HasSession() || !strings.Contains(strings.Join(edit.SetCookie, "\n"), "Max-Age=0") {
		t.Errorf("logout left the session, or its cookie: %v", edit.SetCookie)
	}
	if hasSession(t, b, alice2) || hasSession(t, a, alice1) {
		t.Error("a session of alice survived her logout")
	}
	if !hasSession(t, b, bob) {
		t.Error("bob's session ended with alice's logout")
	}
	if got := a.Stats().SessionsEnded[EndUserLogout]; got != 2 {
		t.Errorf("user_logout = %d, want 2", got)
	}
	// By sid, by handle, by user through the API.
	carol1 := newBoundSession(t, a, "carol", "sid-c1")
	carol2 := newBoundSession(t, b, "carol", "sid-c2")
	if n, err := b.EndSidSessions(ctx, "sid-c1", EndBackchannel); err != nil || n != 1 {
		t.Fatalf("EndSidSessions = %d, %v", n, err)
	}
	if hasSession(t, a, carol1) || !hasSession(t, a, carol2) {
		t.Error("EndSidSessions ended the wrong sessions")
	}
	var xc Exchange
	if err := a.Expand(ctx, bindReq(carol2), &xc); err != nil || xc.Handle == "" {
		t.Fatalf("no handle for a bound session: %v", err)
	}
	if strings.Contains(carol2, xc.Handle) {
		t.Fatal("the handle is part of the cookie")
	}
	if ok, err := b.EndSessionByHandle(ctx, xc.Handle, EndAdmin); err != nil || !ok {
		t.Fatalf("EndSessionByHandle = %v, %v", ok, err)
	}
	if hasSession(t, a, carol2) {
		t.Error("EndSessionByHandle left the session")
	}
	if n, err := a.EndUserSessions(ctx, "bob", EndAdmin); err != nil || n != 1 {
		t.Fatalf("EndUserSessions = %d, %v", n, err)
	}
	if hasSession(t, a, bob) {
		t.Error("EndUserSessions left bob's session")
	}
	if n := indexLen(); n > 0 {
		t.Errorf("%d index entries left after every bound session ended", n)
	}
	if n, _ := a.CountUserSessions(ctx, "alice"); n != 0 {
		t.Errorf("alice still has %d sessions", n)
	}
}

func TestBindingIndexCleanupMemory(t *testing.T) {
	store, _ := NewMemoryStore(4)
	clock := newTestClock()
	c := newBindingCache(t, store, clock, testBindingKey, nil)
	var cookies []string
	for i := range 10 { // six evicted
		cookies = append(cookies, newBoundSession(t, c, "u", fmt.Sprint("sid", i)))
	}
	if n, _ := c.CountUserSessions(context.Background(), "u"); n != 4 {
		t.Errorf("CountUserSessions = %d, want 4 (the rest evicted)", n)
	}
	if n := store.BoundLen(); n > 4*3+4 {
		t.Errorf("%d index entries for 4 sessions", n)
	}
	// Logout of one, expiry of the rest.
	roundTrip(t, c, bindReq(cookies[9]), &Response{ClearSiteData: []string{`"cookies"`}})
	clock.Advance(DefaultLifetime + time.Second)
	if n, _ := c.CountUserSessions(context.Background(), "u"); n != 0 {
		t.Errorf("CountUserSessions = %d after expiry", n)
	}
	for _, ck := range cookies {
		hasSession(t, c, ck) // ends the expired ones
	}
	if n := store.BoundLen(); n != 0 {
		t.Errorf("%d index entries outlive their sessions", n)
	}
}

func TestRotationGraceMemory(t *testing.T) {
	store, _ := NewMemoryStore(100)
	clock := newTestClock()
	c := newBindingCache(t, store, clock, testBindingKey, nil)
	testRotationGrace(t, c, clock)
}

func testRotationGrace(t *testing.T, c *Cache, clock *testClock) {
	_, edit := roundTrip(t, c, bindReq(""), &Response{SetCookie: []string{"pre=1; Path=/"}})
	old := sessionCookieOf(c, edit)
	x, edit := roundTrip(t, c, bindReq(old), &Response{User: "alice", SetCookie: []string{"post=2; Path=/"}})
	cur := sessionCookieOf(c, edit)
	if cur == "" || cur == old {
		t.Fatal("no rotation at login")
	}
	if x.session == nil {
		t.Fatal("no session after login")
	}
	if got := c.Stats().Rotations; got != 1 {
		t.Errorf("Rotations = %d", got)
	}
	// The jar came along; the old id still works within the grace.
	for _, ck := range []string{cur, old} {
		var x Exchange
		if err := c.Expand(context.Background(), bindReq(ck), &x); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(x.Cookie, "pre=1") || !strings.Contains(x.Cookie, "post=2") {
			t.Errorf("cookies after rotation %q", x.Cookie)
		}
		// A write through the old id lands in the new session.
		if ck == old {
			if _, err := c.Capture(context.Background(), &x, &Response{SetCookie: []string{"late=3; Path=/"}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	var xn Exchange
	c.Expand(context.Background(), bindReq(cur), &xn)
	if !strings.Contains(xn.Cookie, "late=3") {
		t.Errorf("a write through the old id within the grace was lost: %q", xn.Cookie)
	}
	// The same user again: no rotation. A RotateHeader: rotation.
	_, edit = roundTrip(t, c, bindReq(cur), &Response{User: "alice"})
	if sessionCookieOf(c, edit) != "" {
		t.Error("rotated although the user did not change")
	}
	clock.Advance(c.cfg.RotationGrace + time.Second)
	if hasSession(t, c, old) {
		t.Error("the old id still works after the grace")
	}
	if !hasSession(t, c, cur) {
		t.Error("the new id does not work")
	}
	_, edit = roundTrip(t, c, bindReq(cur), &Response{Rotate: "1"})
	if n := sessionCookieOf(c, edit); n == "" || n == cur {
		t.Error("the rotate header did not rotate")
	}
}

func TestRotationParallelMemory(t *testing.T) {
	store, _ := NewMemoryStore(100)
	c := newBindingCache(t, store, browsertest.NewClock(time.Now()), testBindingKey, nil)
	testRotationParallel(t, c)
}

// testRotationParallel: requests in flight with the old id while a login
// rotates it lose no cookie.
func testRotationParallel(t *testing.T, c *Cache) {
	_, edit := roundTrip(t, c, bindReq(""), &Response{SetCookie: []string{"pre=1; Path=/"}})
	old := sessionCookieOf(c, edit)
	const n = 20
	var wg sync.WaitGroup
	var cur string
	var mu sync.Mutex
	for i := range n + 1 {
		wg.Go(func() {
			var x Exchange
			if err := c.Expand(context.Background(), bindReq(old), &x); err != nil {
				t.Error(err)
				return
			}
			resp := &Response{SetCookie: []string{fmt.Sprintf("c%d=%d; Path=/", i, i)}}
			if i == n {
				resp.User = "alice"
			}
			edit, err := c.Capture(context.Background(), &x, resp)
			if err != nil {
				t.Error(err)
				return
			}
			if v := sessionCookieOf(c, edit); v != "" {
				mu.Lock()
				cur = v
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if cur == "" || cur == old {
		t.Fatal("no rotation")
	}
	var x Exchange
	if err := c.Expand(context.Background(), bindReq(cur), &x); err != nil {
		t.Fatal(err)
	}
	for i := range n + 1 {
		if !strings.Contains(x.Cookie, fmt.Sprintf("c%d=%d", i, i)) {
			t.Errorf("cookie c%d lost in the rotation: %q", i, x.Cookie)
		}
	}
}

func TestBindingKeyRotation(t *testing.T) {
	store, _ := NewMemoryStore(100)
	clock := newTestClock()
	before := newBindingCache(t, store, clock, testBindingKey, nil)
	cookie := newBoundSession(t, before, "alice", "")
	after := newBindingCache(t, store, clock, testBindingKey2, testBindingKey)
	if n, err := after.CountUserSessions(context.Background(), "alice"); err != nil || n != 1 {
		t.Fatalf("CountUserSessions under the new key = %d, %v", n, err)
	}
	// Same user under the new key: no login, no rotation.
	_, edit := roundTrip(t, after, bindReq(cookie), &Response{User: "alice"})
	if sessionCookieOf(after, edit) != "" {
		t.Error("a key rotation counted as a login")
	}
	if n, err := after.EndUserSessions(context.Background(), "alice", EndAdmin); err != nil || n != 1 {
		t.Fatalf("EndUserSessions = %d, %v", n, err)
	}
	if after.BindingKeyHash("alice") == "" || len(after.BindingKeyHash("alice")) != 8 {
		t.Error("BindingKeyHash")
	}
}

func TestBindingUnsupportedStore(t *testing.T) {
	c := newBindingCache(t, nil, newTestClock(), nil, nil)
	if _, err := c.EndUserSessions(context.Background(), "a", EndAdmin); err == nil {
		t.Error("EndUserSessions without a binding key")
	}
}
