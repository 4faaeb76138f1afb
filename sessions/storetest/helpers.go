// Package storetest is the conformance suite of sessions.Store: Run proves
// a store against the contract that the session engine (sessions.Cache)
// relies on, the same cases for every store, as scs proves each of its
// stores and oauth2-proxy its session stores. It also holds the helpers
// that the tests of the stores share: a settable Clock and a BrowserJar.
//
// The package imports "testing" and exists for tests only: no program
// may import it (TestNoProgramImportsStoretest checks the module).
package storetest

import (
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxysession/proxysession/sessions"
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

// NewID returns a fresh random session id, as the engine would issue.
func NewID(t testing.TB) sessions.ID {
	t.Helper()
	var raw [32]byte
	rand.Read(raw[:])
	id, ok := sessions.ParseID(base64.RawURLEncoding.EncodeToString(raw[:]))
	if !ok {
		t.Fatal("ParseID rejected a random id")
	}
	return id
}

// WrongSecret returns id with its lookup half kept and its secret half
// changed: what a client that learnt only the lookup half could present.
func WrongSecret(t testing.TB, id sessions.ID) sessions.ID {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(id.CookieValue())
	if err != nil || len(raw) != 32 {
		t.Fatalf("session id does not decode: %v", err)
	}
	raw[len(raw)-1] ^= 1 // the last byte is in the secret half
	forged, ok := sessions.ParseID(base64.RawURLEncoding.EncodeToString(raw))
	if !ok || forged.Key() != id.Key() || forged.Secret() == id.Secret() {
		t.Fatal("could not forge an id with the same lookup half")
	}
	return forged
}

// testLogger returns a logger that writes to the test's log, which go test
// shows only for failing tests or with -v.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
