package main

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/proxysession/proxysession/internal/redistest"
)

// TestUserRoutesWired checks that -admin-token-file and
// -backchannel-issuer mount the admin API and the back-channel logout
// endpoint on the admin listener (their behaviour is tested in
// internal/admin and internal/backchannel).
func TestUserRoutesWired(t *testing.T) {
	token := strings.Repeat("a", 48)
	tokFile := filepath.Join(t.TempDir(), "admin-token")
	if err := os.WriteFile(tokFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "binding-key")
	if err := os.WriteFile(keyFile, []byte(strings.Repeat("k", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	inst := start(t, "-binding-key-file", keyFile, "-admin-token-file", tokFile, "-backchannel-issuer", "https://idp.example/realms/r",
		"-backchannel-audience", "app", "-backchannel-jwks-url", "http://127.0.0.1:1/jwks")
	admin := "http://" + inst.adminAddr
	post := func(path, ctype, auth, body string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, admin+path, strings.NewReader(body))
		req.Header.Set("Content-Type", ctype)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := post("/admin/v1/count-sessions", "application/json", "", `{"user":"u"}`); code != http.StatusUnauthorized {
		t.Errorf("no token: %d %s", code, body)
	}
	if code, body := post("/admin/v1/count-sessions", "application/json", "Bearer "+token, `{"user":"u"}`); code != http.StatusOK || !strings.Contains(body, `"sessions":0`) {
		t.Errorf("with the token: %d %s", code, body)
	}
	if code, body := post("/backchannel-logout", "application/x-www-form-urlencoded", "", url.Values{"logout_token": {"not.a.jwt"}}.Encode()); code != http.StatusBadRequest || !strings.Contains(body, "malformed") {
		t.Errorf("back-channel logout: %d %s", code, body)
	}
	if code, _ := httpGet(t, admin+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}
	_, metrics := httpGet(t, admin+"/metrics")
	for _, want := range []string{
		`proxysession_admin_api_requests_total{op="count-sessions",outcome="unauthorized"} 1`,
		`proxysession_backchannel_logout_requests_total{outcome="malformed"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestAdminTokenFileRefused(t *testing.T) {
	short := filepath.Join(t.TempDir(), "short")
	os.WriteFile(short, []byte("short"), 0o600)
	keyFile := filepath.Join(t.TempDir(), "binding-key")
	if err := os.WriteFile(keyFile, []byte(strings.Repeat("k", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	err := run(t.Context(), []string{"-admin-addr", "127.0.0.1:0", "-grpc-addr", "127.0.0.1:0", "-binding-key-file", keyFile, "-admin-token-file", short}, io.Discard, io.Discard, hooks{})
	var ue *usageError
	if err == nil || !strings.Contains(err.Error(), "-admin-token-file") || !asUsage(err, &ue) {
		t.Fatalf("short token: %v", err)
	}
}

func asUsage(err error, ue **usageError) bool {
	u, ok := err.(*usageError)
	*ue = u
	return ok
}

// TestBackchannelLogoutEndToEnd runs proxysession in reverse-proxy mode
// with binding, the admin API and back-channel logout: a browser logs in
// (the backend binds the session to a user and an identity-provider
// session), the provider posts a logout token to the admin listener, and
// the backend then gets no cookies from that browser; the admin API ends
// another user's sessions.
func TestBackchannelLogoutEndToEnd(t *testing.T) {
	t.Run("memory", func(t *testing.T) { backchannelEndToEnd(t, false) })
	// Two replicas sharing Redis: the logout token reaches one, the
	// browser uses the other.
	t.Run("redis", func(t *testing.T) { backchannelEndToEnd(t, true) })
}

func backchannelEndToEnd(t *testing.T, shared bool) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	adminToken := strings.Repeat("z", 40)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Algorithm: "RS256", Use: "sig"}}})
	}))
	defer idp.Close()
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/login" {
			q := r.URL.Query()
			http.SetCookie(w, &http.Cookie{Name: "app", Value: "v-" + q.Get("user"), Path: "/"})
			w.Header().Set("Proxysession-User", q.Get("user"))
			w.Header().Set("Proxysession-Sid", q.Get("sid"))
			return
		}
		fmt.Fprint(w, r.Header.Get("Cookie"))
	}))
	defer upstream.Close()
	const issuer = "https://idp.example/realms/demo"
	args := []string{
		"-binding-key-file", write("binding-key", strings.Repeat("b", 32)),
		"-admin-token-file", write("admin-token", adminToken),
		"-backchannel-issuer", issuer, "-backchannel-audience", "app", "-backchannel-jwks-url", idp.URL}
	if shared {
		// A login binds and rotates: several round trips, each within
		// the store timeout even on a loaded machine.
		args = append(args, "-store", "redis", "-redis-addr", redistest.Start(t).Addr, "-redis-timeout", "1s")
	}
	p := startProxy(t, upstream.URL, args...)
	// adminOf is the replica the provider and the operator reach.
	adminOf := p
	if shared {
		adminOf = startProxy(t, upstream.URL, args...)
	}

	login := func(user, sid string) *cookieBrowser {
		b := newCookieBrowser(nil)
		b.get(t, "http://"+p.httpAddr+"/login?"+url.Values{"user": {user}, "sid": {sid}}.Encode())
		if _, body := b.get(t, "http://"+p.httpAddr+"/"); body != "app=v-"+user {
			t.Fatalf("%s after login: the backend got %q", user, body)
		}
		return b
	}
	alice, bob := login("alice", "sid-alice"), login("bob", "sid-bob")

	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, (&jose.SignerOptions{}).WithType("logout+jwt"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	claims, _ := json.Marshal(map[string]any{"iss": issuer, "aud": []string{"app"}, "sub": "alice", "sid": "sid-alice",
		"iat": now.Unix(), "exp": now.Add(2 * time.Minute).Unix(), "jti": "e2e-1",
		"events": map[string]any{"http://schemas.openid.net/event/backchannel-logout": map[string]any{}}})
	obj, err := signer.Sign(claims)
	if err != nil {
		t.Fatal(err)
	}
	token, _ := obj.CompactSerialize()
	resp, err := http.PostForm("http://"+adminOf.adminAddr+"/backchannel-logout", url.Values{"logout_token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("back-channel logout: %s %q", resp.Status, resp.Header.Get("Cache-Control"))
	}
	if _, body := alice.get(t, "http://"+p.httpAddr+"/"); body != "" {
		t.Fatalf("alice after back-channel logout: the backend got %q", body)
	}
	if _, body := bob.get(t, "http://"+p.httpAddr+"/"); body != "app=v-bob" {
		t.Fatalf("bob lost his session: %q", body)
	}
	// The same token again is a replay.
	resp, err = http.PostForm("http://"+adminOf.adminAddr+"/backchannel-logout", url.Values{"logout_token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "replayed") {
		t.Fatalf("replay: %s %s", resp.Status, b)
	}

	// The admin API ends bob's sessions.
	req, _ := http.NewRequest(http.MethodPost, "http://"+adminOf.adminAddr+"/admin/v1/logout-user", strings.NewReader(`{"user":"bob"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"ended":1`) {
		t.Fatalf("admin logout-user: %s %s", resp.Status, b)
	}
	if _, body := bob.get(t, "http://"+p.httpAddr+"/"); body != "" {
		t.Fatalf("bob after the admin logout: the backend got %q", body)
	}
	_, metrics := httpGet(t, "http://"+adminOf.adminAddr+"/metrics")
	for _, want := range []string{
		`proxysession_sessions_ended_total{reason="backchannel"} 1`,
		`proxysession_sessions_ended_total{reason="admin"} 1`,
		`proxysession_backchannel_logout_requests_total{outcome="ok"} 1`,
		`proxysession_backchannel_logout_requests_total{outcome="replayed"} 1`,
		`proxysession_admin_api_requests_total{op="logout-user",outcome="ok"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	logs := p.logs.String() + adminOf.logs.String()
	for _, secret := range []string{"alice", "bob", "sid-alice", adminToken} {
		if strings.Contains(logs, secret) {
			t.Errorf("the logs name %q", secret)
		}
	}
}
