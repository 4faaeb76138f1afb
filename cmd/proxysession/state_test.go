package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/proxysession/proxysession/processor/envoytest"
)

// stateBackend logs in (/login), logs out (/logout) and otherwise echoes
// the cookies it gets.
var stateBackend = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/login":
		w.Header().Add("Set-Cookie", "sid=42; Path=/; HttpOnly")
		w.Header().Add("Set-Cookie", "theme=dark; Path=/; Max-Age=3600")
	case "/logout":
		w.Header().Set("Clear-Site-Data", `"cookies"`)
	default:
		io.WriteString(w, r.Header.Get("Cookie"))
	}
})

// visit sends a browser's request through inst and returns the body.
func visit(t *testing.T, f *envoytest.Filter, browser *http.Client, inst *instance, path string) string {
	t.Helper()
	f.Client = extprocv3.NewExternalProcessorClient(dial(t, inst.grpcAddr, nil))
	resp, err := browser.Get("https://app.test" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %d %s", path, resp.StatusCode, resp.Header.Get("x-envoy-response-code-details"))
	}
	return string(body)
}

// TestStateFileRestarts: with -state-file, a browser logged in before a
// restart (SIGTERM, then a new process) sends the same backend cookies
// after it, in the same order; a logout before the restart stays a
// logout. A truncated file is reported and the instance starts empty and
// ready; its next write replaces the file.
func TestStateFileRestarts(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sessions.state")
	args := []string{"-state-file", path, "-state-interval", "0"}
	fa := &envoytest.Filter{Backend: stateBackend, MessageTimeout: 5 * time.Second}
	fb := &envoytest.Filter{Backend: stateBackend, MessageTimeout: 5 * time.Second}
	alice, bob := envoytest.NewBrowser(fa), envoytest.NewBrowser(fb)

	first := start(t, args...)
	if !strings.Contains(first.logs.String(), "no state file yet") {
		t.Errorf("first start, logs:\n%s", first.logs)
	}
	visit(t, fa, alice, first, "/login")
	visit(t, fb, bob, first, "/login")
	if got := visit(t, fa, alice, first, "/page"); got != "sid=42; theme=dark" {
		t.Fatalf("before the restart the backend saw %q", got)
	}
	visit(t, fb, bob, first, "/logout")
	if err := first.stop(); err != nil {
		t.Fatalf("run = %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v, %v", fi, err)
	}
	raw, _ := os.ReadFile(path)
	if strings.Contains(string(raw), "sid") || strings.Contains(string(raw), "dark") || strings.Contains(string(raw), "app.test") {
		t.Error("the state file holds cookies in the clear")
	}

	second := start(t, args...)
	if !strings.Contains(second.logs.String(), "sessions loaded from the state file") || !strings.Contains(second.logs.String(), "sessions=1") {
		t.Errorf("second start, logs:\n%s", second.logs)
	}
	if _, m := httpGet(t, "http://"+second.adminAddr+"/metrics"); !strings.Contains(m, "proxysession_sessions_sealed 1") ||
		!strings.Contains(m, "proxysession_sessions_active 1") || !strings.Contains(m, `proxysession_state_writes_total{result="ok"} 0`) {
		t.Errorf("/metrics after loading lacks the sealed session:\n%s", m)
	}
	if got := visit(t, fa, alice, second, "/page"); got != "sid=42; theme=dark" {
		t.Errorf("after the restart the backend saw %q for the logged in browser", got)
	}
	if _, m := httpGet(t, "http://"+second.adminAddr+"/metrics"); !strings.Contains(m, "proxysession_sessions_sealed 0") {
		t.Error("/metrics: the session is still sealed after its request")
	}
	if got := visit(t, fb, bob, second, "/page"); got != "" {
		t.Errorf("after the restart the backend saw %q for the logged out browser", got)
	}
	if err := second.stop(); err != nil {
		t.Fatalf("run = %v", err)
	}

	// A crash in the middle of a copy, say: the file is cut short.
	raw, _ = os.ReadFile(path)
	if err := os.WriteFile(path, raw[:len(raw)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	third := start(t, args...)
	if logs := third.logs.String(); !strings.Contains(logs, "state file not loaded: starting with no sessions") || !strings.Contains(logs, "truncated") {
		t.Errorf("a truncated file, logs:\n%s", logs)
	}
	if code, _ := httpGet(t, "http://"+third.adminAddr+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d after a bad state file", code)
	}
	if got := visit(t, fa, alice, third, "/page"); got != "" {
		t.Errorf("after a bad state file the backend saw %q", got)
	}
	if err := third.stop(); err != nil {
		t.Fatalf("run = %v", err)
	}
	fourth := start(t, args...)
	if !strings.Contains(fourth.logs.String(), "sessions loaded from the state file") {
		t.Errorf("the bad file was not replaced; logs:\n%s", fourth.logs)
	}
}

// TestStateFilePeriodic: -state-interval writes the file while serving,
// so that a crash (no shutdown write) loses at most one interval.
func TestStateFilePeriodic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	inst := start(t, "-state-file", path, "-state-interval", "1s", "-log-level", "debug")
	f := &envoytest.Filter{Backend: stateBackend, MessageTimeout: 5 * time.Second}
	browser := envoytest.NewBrowser(f)
	visit(t, f, browser, inst, "/login")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(inst.logs.String(), "sessions=1") {
		if time.Now().After(deadline) {
			t.Fatalf("no periodic write; logs:\n%s", inst.logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The crash: the file as the periodic write left it, loaded by a new
	// process (the old one keeps running, unaware).
	crashed := filepath.Join(t.TempDir(), "state")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(crashed, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	next := start(t, "-state-file", crashed, "-state-interval", "0")
	if got := visit(t, f, browser, next, "/page"); got != "sid=42; theme=dark" {
		t.Errorf("after the crash the backend saw %q", got)
	}
}

// TestStateFileConfig: a -state-file that cannot be written, or with the
// Redis store, stops the start with a usage error.
func TestStateFileConfig(t *testing.T) {
	for name, args := range map[string][]string{
		"missing directory": {"-state-file", filepath.Join(t.TempDir(), "no", "state")},
		"with redis":        {"-state-file", filepath.Join(t.TempDir(), "state"), "-store", "redis", "-redis-addr", "127.0.0.1:1"},
	} {
		args = append(args, "-grpc-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0")
		err := run(context.Background(), args, io.Discard, io.Discard, hooks{})
		if _, ok := errors.AsType[*usageError](err); !ok || !strings.Contains(err.Error(), "-state-file") {
			t.Errorf("%s: run = %v, want a usage error about -state-file", name, err)
		}
	}
}
