package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxysession/proxysession/sessions"
)

const (
	goodToken = "0123456789abcdef0123456789abcdef-admin"
	userID    = "alice@example.com"
	handle    = "h-6f1c0a3e9b"
)

type fakeSessions struct {
	mu      sync.Mutex
	calls   []string
	reasons []sessions.EndReason
	fail    bool
}

func (f *fakeSessions) record(call string, reason sessions.EndReason) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return errors.New("store down")
	}
	f.calls = append(f.calls, call)
	f.reasons = append(f.reasons, reason)
	return nil
}

func (f *fakeSessions) EndUserSessions(_ context.Context, user string, reason sessions.EndReason) (int, error) {
	return 3, f.record("end-user "+user, reason)
}

func (f *fakeSessions) CountUserSessions(_ context.Context, user string) (int, error) {
	return 3, f.record("count "+user, 0)
}

func (f *fakeSessions) EndSessionByHandle(_ context.Context, h string, reason sessions.EndReason) (bool, error) {
	return h == handle, f.record("end-handle "+h, reason)
}

func (f *fakeSessions) BindingKeyHash(s string) string { return "hash" + string(rune('a'+len(s)%26)) }

type fixture struct {
	api       *API
	sess      *fakeSessions
	logs      *bytes.Buffer
	tokenFile string
	outcomes  []string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{sess: &fakeSessions{}, logs: &bytes.Buffer{}, tokenFile: filepath.Join(t.TempDir(), "token")}
	if err := os.WriteFile(f.tokenFile, []byte(goodToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(f.logs, nil))
	tok, err := LoadToken(f.tokenFile, log)
	if err != nil {
		t.Fatal(err)
	}
	f.api = New(f.sess, tok, log, func(op, outcome string) { f.outcomes = append(f.outcomes, op+" "+outcome) })
	return f
}

func (f *fixture) do(t *testing.T, auth, path, body string) (int, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	f.api.ServeHTTP(rec, req)
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("%s: body %q: %v", path, rec.Body, err)
	}
	if rec.Code == http.StatusUnauthorized && rec.Header().Get("WWW-Authenticate") == "" {
		t.Errorf("401 without WWW-Authenticate")
	}
	return rec.Code, out
}

func TestAdminAuthentication(t *testing.T) {
	f := newFixture(t)
	body := `{"user":"` + userID + `"}`
	for _, auth := range []string{"", "Bearer", "Bearer wrong", "Bearer " + goodToken[:len(goodToken)-1], "Basic " + goodToken, goodToken} {
		if code, out := f.do(t, auth, "/admin/v1/logout-user", body); code != http.StatusUnauthorized {
			t.Errorf("Authorization %q: %d %v", auth, code, out)
		}
	}
	if len(f.sess.calls) != 0 {
		t.Fatalf("calls without the token: %q", f.sess.calls)
	}
	if code, out := f.do(t, "Bearer "+goodToken, "/admin/v1/logout-user", body); code != http.StatusOK || out["ended"] != 3.0 {
		t.Fatalf("right token: %d %v", code, out)
	}
	if code, _ := f.do(t, "bearer "+goodToken, "/admin/v1/count-sessions", body); code != http.StatusOK {
		t.Fatalf("lower-case scheme: %d", code)
	}
	if code, _ := f.do(t, "Bearer x", "/admin/v1/"+strings.Repeat("z", 100), body); code != http.StatusUnauthorized {
		t.Fatalf("unknown path without the token: %d", code)
	}
	want := strings.Repeat("logout-user unauthorized|", 6) + "logout-user ok|count-sessions ok|other unauthorized"
	if got := strings.Join(f.outcomes, "|"); got != want {
		t.Errorf("outcomes:\n%s\nwant\n%s", got, want)
	}
	if strings.Contains(f.logs.String(), goodToken[:16]) {
		t.Errorf("the log shows the token: %s", f.logs)
	}
}

func TestAdminOperations(t *testing.T) {
	f := newFixture(t)
	auth := "Bearer " + goodToken
	if code, out := f.do(t, auth, "/admin/v1/logout-user", `{"user":"`+userID+`"}`); code != 200 || out["ended"] != 3.0 {
		t.Fatalf("logout-user: %d %v", code, out)
	}
	if code, out := f.do(t, auth, "/admin/v1/count-sessions", `{"user":"`+userID+`"}`); code != 200 || out["sessions"] != 3.0 {
		t.Fatalf("count-sessions: %d %v", code, out)
	}
	if code, out := f.do(t, auth, "/admin/v1/logout-session", `{"handle":"`+handle+`"}`); code != 200 || out["ended"] != true {
		t.Fatalf("logout-session: %d %v", code, out)
	}
	if code, out := f.do(t, auth, "/admin/v1/logout-session", `{"handle":"unknown"}`); code != 200 || out["ended"] != false {
		t.Fatalf("logout-session unknown: %d %v", code, out)
	}
	want := []string{"end-user " + userID, "count " + userID, "end-handle " + handle, "end-handle unknown"}
	if strings.Join(f.sess.calls, "|") != strings.Join(want, "|") {
		t.Fatalf("calls %q", f.sess.calls)
	}
	if f.sess.reasons[0] != sessions.EndAdmin || f.sess.reasons[2] != sessions.EndAdmin {
		t.Errorf("reasons %v", f.sess.reasons)
	}
	logs := f.logs.String()
	if strings.Contains(logs, userID) || strings.Contains(logs, handle) {
		t.Errorf("the audit log names the user or handle:\n%s", logs)
	}
	for _, op := range []string{"op=logout-user", "op=count-sessions", "op=logout-session", "user_hash=", "handle_hash=", "outcome=ok", "remote="} {
		if !strings.Contains(logs, op) {
			t.Errorf("the audit log lacks %s:\n%s", op, logs)
		}
	}
}

func TestAdminBadRequests(t *testing.T) {
	f := newFixture(t)
	auth := "Bearer " + goodToken
	for _, tc := range []struct{ path, body string }{
		{"/admin/v1/logout-user", `{}`},
		{"/admin/v1/logout-user", `{"user":""}`},
		{"/admin/v1/logout-user", `{"user":"` + strings.Repeat("x", 2000) + `"}`},
		{"/admin/v1/logout-user", `{"usr":"x"}`},
		{"/admin/v1/logout-user", `not json`},
		{"/admin/v1/logout-session", `{"user":"x"}`},
	} {
		if code, out := f.do(t, auth, tc.path, tc.body); code != http.StatusBadRequest {
			t.Errorf("%s %s: %d %v", tc.path, tc.body, code, out)
		}
	}
	// Content-Type and method.
	req := httptest.NewRequest(http.MethodPost, "/admin/v1/logout-user", strings.NewReader("user=x"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", auth)
	rec := httptest.NewRecorder()
	f.api.ServeHTTP(rec, req)
	if rec.Code != http.StatusUnsupportedMediaType {
		t.Errorf("form body: %d", rec.Code)
	}
	req = httptest.NewRequest(http.MethodGet, "/admin/v1/logout-user", nil)
	req.Header.Set("Authorization", auth)
	rec = httptest.NewRecorder()
	f.api.ServeHTTP(rec, req)
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d", rec.Code)
	}
	if len(f.sess.calls) != 0 {
		t.Fatalf("calls %q", f.sess.calls)
	}
	f.sess.fail = true
	if code, out := f.do(t, auth, "/admin/v1/logout-user", `{"user":"x"}`); code != http.StatusServiceUnavailable {
		t.Errorf("store down: %d %v", code, out)
	}
	if !strings.Contains(f.logs.String(), "outcome=error") {
		t.Errorf("no error audit: %s", f.logs)
	}
}

func TestAdminTokenFile(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("too-short\n"), 0o600)
	if _, err := LoadToken(short, nil); err == nil || !strings.Contains(err.Error(), "fewer than 32") {
		t.Fatalf("short token: %v", err)
	}
	if _, err := LoadToken(filepath.Join(dir, "missing"), nil); err == nil {
		t.Fatal("missing file accepted")
	}

	// Rotation: the new token works after the file changes; a file that
	// goes bad refuses everything.
	f := newFixture(t)
	newToken := strings.Repeat("n", 41)
	if err := os.WriteFile(f.tokenFile, []byte(newToken), 0o600); err != nil {
		t.Fatal(err)
	}
	f.api.token.mu.Lock()
	f.api.token.checked = time.Time{}
	f.api.token.mu.Unlock()
	body := `{"user":"x"}`
	if code, _ := f.do(t, "Bearer "+newToken, "/admin/v1/count-sessions", body); code != http.StatusOK {
		t.Fatalf("new token: %d", code)
	}
	if code, _ := f.do(t, "Bearer "+goodToken, "/admin/v1/count-sessions", body); code != http.StatusUnauthorized {
		t.Fatalf("old token: %d", code)
	}
	os.WriteFile(f.tokenFile, []byte("short"), 0o600)
	f.api.token.mu.Lock()
	f.api.token.checked = time.Time{}
	f.api.token.mu.Unlock()
	if code, _ := f.do(t, "Bearer "+newToken, "/admin/v1/count-sessions", body); code != http.StatusUnauthorized {
		t.Fatalf("bad file: %d", code)
	}
}
