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
	"strings"
	"testing"
	"time"

	"github.com/proxysession/proxysession/internal/browsertest"
	"github.com/proxysession/proxysession/sessions"
)

// Clock is a settable clock for lifetime tests (browsertest.Clock).
type Clock = browsertest.Clock

// NewClock returns a Clock that stands at start (browsertest.NewClock).
func NewClock(start time.Time) *Clock { return browsertest.NewClock(start) }

// BrowserJar is a test's stand-in for a browser (browsertest.BrowserJar).
type BrowserJar = browsertest.BrowserJar

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
