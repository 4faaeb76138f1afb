// Package browsertest holds the helpers that the tests of proxysession's
// session engine and of its stores share: a settable Clock and a
// BrowserJar. It does not import package sessions, so that the engine's
// own (internal) tests can use it too; sessions/storetest re-exports it.
//
// The package imports "testing" and exists for tests only.
package browsertest

import (
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Clock is a settable clock for lifetime tests, safe for concurrent use.
// Pass its Now method as sessions.Config.Now (and to a store that reads
// the time itself), and move time on with Advance.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a Clock that stands at start. A store that expires
// keys in real time (Redis) needs a start near time.Now(): the clock only
// ever moves forward from it, so keys never expire before the test is done.
func NewClock(start time.Time) *Clock {
	return &Clock{now: start}
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock on by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// BrowserJar is a test's stand-in for a browser: the cookies the proxy let
// through, by name. It is deliberately simple (no domains, paths or
// expiry); tests that need a real browser jar use net/http/cookiejar.
type BrowserJar map[string]string

// Header returns the Cookie header fields the browser sends: one field
// with every cookie, in name order, or nil when it holds none.
func (b BrowserJar) Header() []string {
	if len(b) == 0 {
		return nil
	}
	pairs := make([]string, 0, len(b))
	for _, name := range slices.Sorted(maps.Keys(b)) {
		pairs = append(pairs, name+"="+b[name])
	}
	return []string{strings.Join(pairs, "; ")}
}

// Apply records the Set-Cookie lines the browser received from the proxy:
// a cookie with Max-Age=0 (or negative) is deleted, any other stored. An
// invalid line fails the test.
func (b BrowserJar) Apply(t testing.TB, lines []string) {
	t.Helper()
	for _, l := range lines {
		c, err := http.ParseSetCookie(l)
		if err != nil {
			t.Fatalf("proxy sent an invalid Set-Cookie %q: %v", l, err)
		}
		if c.MaxAge < 0 {
			delete(b, c.Name)
		} else {
			b[c.Name] = c.Value
		}
	}
}
