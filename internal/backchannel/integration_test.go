package backchannel_test

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/proxysession/proxysession/internal/admin"
	"github.com/proxysession/proxysession/internal/backchannel"
	"github.com/proxysession/proxysession/sessions"
)

// app is a backend behind the real session engine (the Go middleware):
// /login sets a cookie and binds the session to a user and an identity
// provider session (Proxysession-User, Proxysession-Sid); every request
// records the cookies and handle the backend received.
type app struct {
	mu      sync.Mutex
	cookies string
	handle  string
}

const handleHeader = "Proxysession-Session-Handle"

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.cookies, a.handle = r.Header.Get("Cookie"), r.Header.Get(handleHeader)
	a.mu.Unlock()
	if r.URL.Path == "/login" {
		http.SetCookie(w, &http.Cookie{Name: "backend", Value: "secret-" + r.URL.Query().Get("user"), Path: "/"})
		w.Header().Set("Proxysession-User", r.URL.Query().Get("user"))
		if sid := r.URL.Query().Get("sid"); sid != "" {
			w.Header().Set("Proxysession-Sid", sid)
		}
	}
	fmt.Fprintln(w, "ok")
}

func (a *app) seen() (string, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cookies, a.handle
}

// browser logs in as user (with the IdP session sid) and returns a
// function that makes a request and reports the cookies the backend got.
func browser(t *testing.T, srv *httptest.Server, a *app, user, sid string) func() (string, string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	cl := &http.Client{Jar: jar}
	get := func(path string) {
		resp, err := cl.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %s", path, resp.Status)
		}
	}
	get("/")
	get("/login?" + url.Values{"user": {user}, "sid": {sid}}.Encode())
	return func() (string, string) { get("/page"); return a.seen() }
}

func TestBackchannelAndAdminWithRealCache(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	cache, err := sessions.New(sessions.Config{
		InsecureCookie: true, Logger: log,
		BindingKey: bytes.Repeat([]byte("b"), 32), SessionHandleHeader: handleHeader,
	})
	if err != nil {
		t.Fatal(err)
	}
	a := &app{}
	srv := httptest.NewServer(cache.SessionHandler(a, nil))
	defer srv.Close()

	// The identity provider.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k", Algorithm: "RS256", Use: "sig"}}})
	}))
	defer idp.Close()
	bc, err := backchannel.New(backchannel.Config{Issuer: "https://idp.example/realms/demo", Audience: "app", JWKSURL: idp.URL, Sessions: cache, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	logout := func(claims map[string]any) int {
		signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: key, KeyID: "k"}}, nil)
		now := time.Now()
		base := map[string]any{"iss": "https://idp.example/realms/demo", "aud": "app", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
			"jti": fmt.Sprint(now.UnixNano()), "events": map[string]any{backchannel.EventBackchannelLogout: map[string]any{}}}
		for k, v := range claims {
			base[k] = v
		}
		b, _ := json.Marshal(base)
		obj, _ := signer.Sign(b)
		tok, _ := obj.CompactSerialize()
		req := httptest.NewRequest(http.MethodPost, "/backchannel-logout", strings.NewReader(url.Values{"logout_token": {tok}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		rec := httptest.NewRecorder()
		bc.ServeHTTP(rec, req)
		return rec.Code
	}

	alice1 := browser(t, srv, a, "alice", "sid-a1")
	alice2 := browser(t, srv, a, "alice", "sid-a2")
	bob := browser(t, srv, a, "bob", "sid-b1")
	for name, b := range map[string]func() (string, string){"alice1": alice1, "alice2": alice2, "bob": bob} {
		if c, h := b(); !strings.Contains(c, "backend=secret-") || h == "" {
			t.Fatalf("%s before logout: cookies %q, handle %q", name, c, h)
		}
	}

	// The identity provider ends alice's first session (sid).
	if code := logout(map[string]any{"sub": "alice", "sid": "sid-a1"}); code != http.StatusOK {
		t.Fatalf("back-channel logout by sid: %d", code)
	}
	if c, _ := alice1(); c != "" {
		t.Fatalf("alice1 after logout: the backend got %q", c)
	}
	if c, _ := alice2(); !strings.Contains(c, "backend=secret-alice") {
		t.Fatalf("alice2 lost its session: %q", c)
	}

	// The admin API counts and ends alice's sessions, and bob's by handle.
	tokFile := t.TempDir() + "/token"
	if err := writeFile(tokFile, strings.Repeat("t", 40)); err != nil {
		t.Fatal(err)
	}
	tok, err := admin.LoadToken(tokFile, log)
	if err != nil {
		t.Fatal(err)
	}
	api := admin.New(cache, tok, log)
	call := func(path, body string) map[string]any {
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+strings.Repeat("t", 40))
		rec := httptest.NewRecorder()
		api.ServeHTTP(rec, req)
		var out map[string]any
		json.Unmarshal(rec.Body.Bytes(), &out)
		if rec.Code != 200 {
			t.Fatalf("%s: %d %v", path, rec.Code, out)
		}
		return out
	}
	if out := call("/admin/v1/count-sessions", `{"user":"alice"}`); out["sessions"] != 1.0 {
		t.Fatalf("count: %v", out)
	}
	_, bobHandle := bob()
	if out := call("/admin/v1/logout-session", `{"handle":"`+bobHandle+`"}`); out["ended"] != true {
		t.Fatalf("logout-session: %v", out)
	}
	if c, _ := bob(); c != "" {
		t.Fatalf("bob after logout by handle: %q", c)
	}
	if out := call("/admin/v1/logout-user", `{"user":"alice"}`); out["ended"] != 1.0 {
		t.Fatalf("logout-user: %v", out)
	}
	if c, _ := alice2(); c != "" {
		t.Fatalf("alice2 after logout-user: %q", c)
	}

	// A back-channel logout by sub alone ends every session of the user.
	carol1 := browser(t, srv, a, "carol", "")
	carol2 := browser(t, srv, a, "carol", "")
	if code := logout(map[string]any{"sub": "carol"}); code != http.StatusOK {
		t.Fatalf("back-channel logout by sub: %d", code)
	}
	for _, b := range []func() (string, string){carol1, carol2} {
		if c, _ := b(); c != "" {
			t.Fatalf("carol after logout by sub: %q", c)
		}
	}

	st := cache.Stats()
	if st.SessionsEnded[sessions.EndBackchannel] != 3 || st.SessionsEnded[sessions.EndAdmin] != 2 {
		t.Errorf("ended: %v", st.SessionsEnded)
	}
	for _, secret := range []string{"alice", "bob", "carol", "sid-a1", bobHandle} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the log names %q:\n%s", secret, logs.String())
		}
	}
}

func writeFile(path, s string) error {
	return os.WriteFile(path, []byte(s), 0o600)
}
