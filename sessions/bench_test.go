package sessions

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
)

// benchCookieValue returns a distinct 35-byte cookie value.
func benchCookieValue(i int) string {
	return fmt.Sprintf("%035d", i)
}

var benchCookieNames = [3]string{"sid", "user", "prefs"}

// benchSessions creates n sessions with three 35-byte backend cookies
// each, through the engine, and returns their session cookie values.
func benchSessions(tb testing.TB, c *Cache, n int) []string {
	tb.Helper()
	ids := make([]string, n)
	for i := range ids {
		var x Exchange
		req := &Request{Scheme: "https", Host: "example.com", Path: "/login"}
		if err := c.Expand(context.Background(), req, &x); err != nil {
			tb.Fatal(err)
		}
		lines := make([]string, len(benchCookieNames))
		for j, name := range benchCookieNames {
			lines[j] = name + "=" + benchCookieValue(i*3+j) + "; Path=/; HttpOnly"
		}
		edit, err := c.Capture(context.Background(), &x, &Response{SetCookie: lines})
		if err != nil || len(edit.SetCookie) != 1 {
			tb.Fatalf("creating session: %v %q", err, edit.SetCookie)
		}
		ids[i] = strings.TrimPrefix(strings.SplitN(edit.SetCookie[0], ";", 2)[0], c.CookieName()+"=")
	}
	return ids
}

// BenchmarkSessionHandler measures one request through SessionHandler: a
// session cookie plus one browser cookie in, the jar's three cookies to
// the backend, and a Set-Cookie from the backend on every 4th response.
// "nil-cache" is the same loop without sessions: the floor.
func BenchmarkSessionHandler(b *testing.B) {
	sessions := benchSessionCount
	for _, mode := range []string{"nil-cache", "memory"} {
		b.Run(mode, func(b *testing.B) {
			var c *Cache
			ids := make([]string, sessions)
			for i := range ids {
				ids[i] = newID().CookieValue()
			}
			if mode != "nil-cache" {
				c = newTestCache(b, Config{Logger: discardLogger(), Lifetime: 1 << 40, IdleTimeout: 1 << 40})
				ids = benchSessions(b, c, sessions)
			}
			headers := make([]string, sessions)
			for i, id := range ids {
				headers[i] = DefaultCookieName + "=" + id + "; theme=dark"
			}
			n := 0
			setCookie := "sid=" + benchCookieValue(7) + "; Path=/; HttpOnly"
			var lastCookie string
			backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				// The backend's work is the same with and without sessions.
				if _, err := r.Cookie("theme"); err != nil {
					b.Fatal("backend did not get the browser cookie")
				}
				lastCookie = r.Header.Get("Cookie")
				if n%4 == 0 {
					w.Header()["Set-Cookie"] = []string{setCookie}
				}
				n++
				w.WriteHeader(http.StatusOK)
			})
			h := c.SessionHandler(backend, nil)
			// Check once, outside the measurement, that the jar works.
			r := httptest.NewRequest(http.MethodGet, "https://example.com/app/page", nil)
			r.Header["Cookie"] = []string{headers[1]}
			h.ServeHTTP(httptest.NewRecorder(), r)
			if c != nil && !strings.HasPrefix(lastCookie, "sid=") {
				b.Fatalf("backend got Cookie %q, want the jar's cookies", lastCookie)
			}
			n = 0
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				r := httptest.NewRequest(http.MethodGet, "https://example.com/app/page", nil)
				r.Header["Cookie"] = []string{headers[i%sessions]}
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				i++
			}
		})
	}
}

var benchSessionCount = 1000

// BenchmarkSessionHeap measures the heap that 100,000 sessions with three
// 35-byte backend cookies each take in the memory store, per session.
func BenchmarkSessionHeap(b *testing.B) {
	const n = 100_000
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		c := newTestCache(b, Config{Logger: discardLogger(), MaxSessions: n})
		benchSessions(b, c, n)
		runtime.GC()
		runtime.ReadMemStats(&after)
		if got := c.Stats().SessionsActive; got != n {
			b.Fatalf("%d sessions held, want %d", got, n)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/session")
		runtime.KeepAlive(c)
	}
}

// BenchmarkExpandCapture is the engine alone, without net/http: one
// Expand and one Capture per request over 1,000 sessions, with a
// Set-Cookie on every 4th response.
func BenchmarkExpandCapture(b *testing.B) {
	const sessions = 1000
	c := newTestCache(b, Config{Logger: discardLogger(), Lifetime: 1 << 40, IdleTimeout: 1 << 40})
	ids := benchSessions(b, c, sessions)
	headers := make([][]string, sessions)
	for i, id := range ids {
		headers[i] = []string{DefaultCookieName + "=" + id + "; theme=dark"}
	}
	setCookie := []string{"sid=" + benchCookieValue(7) + "; Path=/; HttpOnly"}
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		var x Exchange
		req := Request{Scheme: "https", Host: "example.com", Path: "/app/page", Method: http.MethodGet, Cookies: headers[i%sessions]}
		if err := c.Expand(ctx, &req, &x); err != nil || !x.HasSession() {
			b.Fatal(err)
		}
		var resp Response
		if i%4 == 0 {
			resp.SetCookie = setCookie
		}
		if _, err := c.Capture(ctx, &x, &resp); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// adversarialRequest is anonymous request i of a flood that makes every
// session as large as the jar allows while each one's backend sets one
// tiny cookie: a distinct 253-byte host (host-only cookies store it), or
// a distinct 1024-byte default path. Longer ones are rejected.
func adversarialRequest(kind string, i int) *Request {
	if kind == "host" {
		return &Request{Scheme: "https", Host: fmt.Sprintf("%010d", i) + strings.Repeat("h", 239) + ".com", Path: "/"}
	}
	return &Request{Scheme: "https", Host: "example.com", Path: fmt.Sprintf("/%010d", i) + strings.Repeat("p", 1011) + "/x"}
}

func adversarialSession(tb testing.TB, c *Cache, kind string, i int) {
	var x Exchange
	if err := c.Expand(context.Background(), adversarialRequest(kind, i), &x); err != nil {
		tb.Fatal(err)
	}
	edit, err := c.Capture(context.Background(), &x, &Response{SetCookie: []string{"t=1"}})
	if err != nil || len(edit.SetCookie) != 1 {
		tb.Fatalf("creating session: %v %q", err, edit.SetCookie)
	}
}

// BenchmarkAdversarialSessionHeap measures the heap (after collection)
// that 100,000 sessions of the largest kinds that anonymous requests can
// create take, per session, and the memory store's estimate of it
// (estimate-B/session), which must not be lower.
func BenchmarkAdversarialSessionHeap(b *testing.B) {
	const n = 100_000
	for _, kind := range []string{"host", "path"} {
		b.Run(kind, func(b *testing.B) {
			for b.Loop() {
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				c := newTestCache(b, Config{Logger: discardLogger(), MaxSessions: n, MaxMemory: 1 << 30})
				for i := range n {
					adversarialSession(b, c, kind, i)
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				m := c.Store().(*MemoryStore)
				if m.Len() != n {
					b.Fatalf("%d sessions held, want %d", m.Len(), n)
				}
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/session")
				b.ReportMetric(float64(m.Bytes())/n, "estimate-B/session")
				runtime.KeepAlive(c)
			}
		})
	}
}

// BenchmarkAdversarialFlood sends 1,000,000 anonymous requests that each
// create a session of the largest kind (half of them by host, half by
// path) into a store with the default session limit and a 64 MiB budget,
// and reports the store's estimate at its peak and the heap the sessions
// take at the end (after collection), both in MiB.
func BenchmarkAdversarialFlood(b *testing.B) {
	const n, budget = 1_000_000, 64 << 20
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		c := newTestCache(b, Config{Logger: discardLogger(), MaxMemory: budget})
		m := c.Store().(*MemoryStore)
		peak := int64(0)
		for i := range n {
			adversarialSession(b, c, [2]string{"host", "path"}[i%2], i)
			if i%1000 == 0 {
				peak = max(peak, m.Bytes())
			}
		}
		peak = max(peak, m.Bytes())
		if peak > budget {
			b.Fatalf("the store's estimate reached %d bytes, over its budget of %d", peak, budget)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(peak)/(1<<20), "peak-estimate-MiB")
		b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/(1<<20), "heap-MiB")
		b.ReportMetric(float64(m.Len()), "sessions")
		runtime.KeepAlive(c)
	}
}
