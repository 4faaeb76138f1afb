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
