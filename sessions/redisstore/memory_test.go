package redisstore_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/proxysession/proxysession/internal/redistest"
	"github.com/proxysession/proxysession/sessions"
)

// maxSessionBytes is what a session of the benchmark workload may take in
// Redis (MEMORY USAGE of its key).
const maxSessionBytes = 512

// benchmarkSessions creates n sessions of the benchmark workload through
// r: three host-only cookies of app.example.com, Path=/, with 35-byte
// values, as the sessions package's benchmarks use.
func benchmarkSessions(tb testing.TB, r *replica, n int) {
	tb.Helper()
	for i := range n {
		var x sessions.Exchange
		req := &sessions.Request{Scheme: "https", Host: "app.example.com", Path: "/login"}
		if err := r.cache.Expand(context.Background(), req, &x); err != nil {
			tb.Fatal(err)
		}
		var lines []string
		for j, name := range []string{"sid", "user", "prefs"} {
			lines = append(lines, fmt.Sprintf("%s=%035d; Path=/; HttpOnly", name, 3*i+j))
		}
		edit, err := r.cache.Capture(context.Background(), &x, &sessions.Response{SetCookie: lines})
		if err != nil || len(edit.SetCookie) != 1 {
			tb.Fatalf("creating session %d: %v %q", i, err, edit.SetCookie)
		}
	}
}

// bytesPerSession returns the mean MEMORY USAGE of the keys in r's Redis.
func bytesPerSession(tb testing.TB, r *replica) float64 {
	tb.Helper()
	ctx := context.Background()
	keys, err := r.client.Keys(ctx, "*").Result()
	if err != nil || len(keys) == 0 {
		tb.Fatalf("keys: %d, %v", len(keys), err)
	}
	var total int64
	for _, k := range keys {
		n, err := r.client.MemoryUsage(ctx, k, 0).Result()
		if err != nil {
			tb.Fatal(err)
		}
		total += n
	}
	return float64(total) / float64(len(keys))
}

// TestSessionMemory: a session of the benchmark workload takes at most
// maxSessionBytes in Redis, its key's overhead included.
func TestSessionMemory(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv.Addr, setup{})
	benchmarkSessions(t, r, 100)
	enc, _ := r.client.ObjectEncoding(context.Background(), sessionKeyOf(t, r)).Result()
	got := bytesPerSession(t, r)
	t.Logf("%.0f bytes per session (%s), %.0f sessions per GB", got, enc, 1e9/got)
	if got > maxSessionBytes {
		t.Errorf("a session of 3 cookies takes %.0f bytes in Redis, want at most %d", got, maxSessionBytes)
	}
}

// BenchmarkSessionMemory reports the bytes a session of the benchmark
// workload takes in Redis, and the time to create one (two round trips:
// find, commit).
func BenchmarkSessionMemory(b *testing.B) {
	srv := redistest.Start(b)
	r := newReplica(b, srv.Addr, setup{})
	n := 0
	for b.Loop() {
		benchmarkSessions(b, r, 1)
		n++
	}
	b.ReportMetric(bytesPerSession(b, r), "bytes/session")
}

// sessionKeyOf returns any key in r's Redis.
func sessionKeyOf(t testing.TB, r *replica) string {
	t.Helper()
	k, err := r.client.RandomKey(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestSplitRecords: a cookie whose record exceeds 64 bytes keeps its head
// in its field and the rest in a tail field; rewriting it shorter deletes
// the tail; a tampered tail fails authentication like any record.
func TestSplitRecords(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv.Addr, setup{})
	ctx := context.Background()
	browser := map[string]string{}
	big := strings.Repeat("b", 300)
	r.exchange(t, browser, "/login", "sid=1", "big="+big)
	key := sessionKey(t, r)
	lengths := func() map[int]int {
		h, err := r.client.HGetAll(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		n := map[int]int{}
		for f, v := range h {
			if len(f) != 1 && len(v) > 64 && len(f) == 8 {
				t.Errorf("a head of %d bytes", len(v))
			}
			n[len(f)]++
		}
		return n
	}
	if n := lengths(); n[1] != 2 || n[8] != 2 || n[7] != 1 {
		t.Errorf("fields by name length %v, want 2 meta, 2 cookies, 1 tail", n)
	}
	if x := r.exchange(t, browser, "/"); x.Cookie != "sid=1; big="+big {
		t.Errorf("Cookie %.40q…", x.Cookie)
	}
	r.exchange(t, browser, "/", "big=small")
	if n := lengths(); n[7] != 0 || n[8] != 2 {
		t.Errorf("after the rewrite: fields by name length %v, want no tail", n)
	}
	r.exchange(t, browser, "/", "big="+big)
	h, _ := r.client.HGetAll(ctx, key).Result()
	for f, v := range h {
		if len(f) == 7 {
			b := []byte(v)
			b[0] ^= 1
			r.client.HSet(ctx, key, f, b)
		}
	}
	if x := r.exchange(t, browser, "/"); x.Cookie != "sid=1" {
		t.Errorf("a cookie with a tampered tail was sent: %.40q…", x.Cookie)
	}
	if r.store.Undecryptable() == 0 {
		t.Error("the tampered tail was not counted")
	}
	r.exchange(t, browser, "/", "big=; Max-Age=0")
	if n := lengths(); n[7] != 0 || n[8] != 1 {
		t.Errorf("after the deletion: fields by name length %v, want sid alone", n)
	}
}

// TestCommitWithoutFind: a session the store did not hand out (so it does
// not know its home domain) still commits cookies that read back.
func TestCommitWithoutFind(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv.Addr, setup{})
	ctx := context.Background()
	browser := map[string]string{}
	r.exchange(t, browser, "/login", "sid=1")
	id, _ := sessions.ParseID(browser[sessions.DefaultCookieName])
	found, err := r.store.Find(ctx, id)
	if err != nil || found == nil {
		t.Fatal(found, err)
	}
	// A copy of the session, as another process would have it, with one
	// more cookie from another exchange of the same browser.
	other := map[string]string{sessions.DefaultCookieName: browser[sessions.DefaultCookieName]}
	x := r.expandOnly(t, other, "/")
	if err := r.respond(x, "more=2"); err != nil {
		t.Fatal(err)
	}
	copied := sessions.RestoreSession(id, found.Created(), found.LastSeen(), nil)
	again, _ := r.store.Find(ctx, id)
	if err := r.store.Commit(ctx, copied, &sessions.Changes{Stored: again.Cookies()}); err != nil {
		t.Fatal(err)
	}
	if x := r.exchange(t, browser, "/"); x.Cookie != "sid=1; more=2" {
		t.Errorf("Cookie %q", x.Cookie)
	}
}
