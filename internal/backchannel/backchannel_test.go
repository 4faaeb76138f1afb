package backchannel

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/proxysession/proxysession/sessions"
)

// issuer is a local OpenID provider: discovery document and JWKS over
// httptest, keys generated here.
type issuer struct {
	srv      *httptest.Server
	rsaKey   *rsa.PrivateKey
	ecKey    *ecdsa.PrivateKey
	jwksHits int
	extra    []jose.JSONWebKey // keys added later (a rotation)
	mu       sync.Mutex
}

func newIssuer(t *testing.T) *issuer {
	t.Helper()
	iss := &issuer{}
	var err error
	if iss.rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	if iss.ecKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                iss.srv.URL,
			"jwks_uri":                              iss.srv.URL + "/jwks",
			"authorization_endpoint":                iss.srv.URL + "/auth",
			"token_endpoint":                        iss.srv.URL + "/token",
			"id_token_signing_alg_values_supported": []string{"RS256", "ES256"},
			"backchannel_logout_supported":          true,
			"backchannel_logout_session_supported":  true,
		})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		iss.mu.Lock()
		iss.jwksHits++
		iss.mu.Unlock()
		iss.mu.Lock()
		keys := append([]jose.JSONWebKey{
			{Key: iss.rsaKey.Public(), KeyID: "rsa-1", Algorithm: "RS256", Use: "sig"},
			{Key: iss.ecKey.Public(), KeyID: "ec-1", Algorithm: "ES256", Use: "sig"},
		}, iss.extra...)
		iss.mu.Unlock()
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: keys})
	})
	iss.srv = httptest.NewServer(mux)
	t.Cleanup(iss.srv.Close)
	return iss
}

func (iss *issuer) hits() int {
	iss.mu.Lock()
	defer iss.mu.Unlock()
	return iss.jwksHits
}

// sign signs claims with key (kid names it in the header).
func sign(t *testing.T, alg jose.SignatureAlgorithm, key crypto.Signer, kid string, claims map[string]any) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: key, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("logout+jwt"))
	if err != nil {
		t.Fatal(err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	s, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const audience = "proxysession-app"

var jtiSeq int

// goodClaims returns valid logout token claims for sub, with a fresh jti.
func (iss *issuer) goodClaims(now time.Time) map[string]any {
	jtiSeq++
	return map[string]any{
		"iss":    iss.srv.URL,
		"aud":    audience,
		"sub":    "user-248289761001",
		"sid":    "08a5019c-17e1-4977-8f42-65a12843ea02",
		"iat":    now.Unix(),
		"exp":    now.Add(2 * time.Minute).Unix(),
		"jti":    fmt.Sprintf("jti-%d-%d", time.Now().UnixNano(), jtiSeq),
		"events": map[string]any{EventBackchannelLogout: map[string]any{}},
	}
}

// fakeSessions records the calls.
type fakeSessions struct {
	mu      sync.Mutex
	bySid   []string
	byUser  []string
	reasons []sessions.EndReason
	fail    bool
}

func (f *fakeSessions) EndUserSessions(_ context.Context, user string, reason sessions.EndReason) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return 0, errors.New("store down")
	}
	f.byUser = append(f.byUser, user)
	f.reasons = append(f.reasons, reason)
	return 2, nil
}

func (f *fakeSessions) EndSidSessions(_ context.Context, sid string, reason sessions.EndReason) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return 0, errors.New("store down")
	}
	f.bySid = append(f.bySid, sid)
	f.reasons = append(f.reasons, reason)
	return 1, nil
}

func (f *fakeSessions) BindingKeyHash(s string) string { return "h" + string(rune('0'+len(s)%10)) }

type fixture struct {
	iss  *issuer
	h    *Handler
	sess *fakeSessions
	logs *bytes.Buffer
	now  time.Time
}

func newFixture(t *testing.T, mod func(*Config)) *fixture {
	iss := newIssuer(t)
	f := &fixture{iss: iss, sess: &fakeSessions{}, logs: &bytes.Buffer{}, now: time.Now()}
	cfg := Config{
		Issuer:   iss.srv.URL,
		Audience: audience,
		Sessions: f.sess,
		Logger:   slog.New(slog.NewTextHandler(f.logs, nil)),
		Now:      func() time.Time { return f.now },
	}
	if mod != nil {
		mod(&cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.h = h
	return f
}

// post posts a logout token; it returns the status and the decoded body.
func (f *fixture) post(t *testing.T, token string) (int, map[string]string) {
	t.Helper()
	body := url.Values{"logout_token": {token}}.Encode()
	req := httptest.NewRequest(http.MethodPost, "/backchannel-logout", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, req)
	if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", cc)
	}
	var out map[string]string
	if b, _ := io.ReadAll(rec.Body); len(b) > 0 {
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("body %q: %v", b, err)
		}
	}
	return rec.Code, out
}

func TestLogoutEndsSessionsOfSid(t *testing.T) {
	f := newFixture(t, nil)
	c := f.iss.goodClaims(f.now)
	code, body := f.post(t, sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", c))
	if code != http.StatusOK {
		t.Fatalf("status %d, body %v", code, body)
	}
	if len(f.sess.bySid) != 1 || f.sess.bySid[0] != c["sid"] || len(f.sess.byUser) != 0 {
		t.Fatalf("by sid %q, by user %q", f.sess.bySid, f.sess.byUser)
	}
	if f.sess.reasons[0] != sessions.EndBackchannel {
		t.Errorf("reason %v", f.sess.reasons[0])
	}
	// The log names neither the sid nor the sub.
	if logs := f.logs.String(); strings.Contains(logs, c["sid"].(string)) || strings.Contains(logs, c["sub"].(string)) || !strings.Contains(logs, "sid_hash=") {
		t.Errorf("log: %s", logs)
	}
}

func TestLogoutWithoutSidEndsSessionsOfSub(t *testing.T) {
	f := newFixture(t, nil)
	c := f.iss.goodClaims(f.now)
	delete(c, "sid")
	code, body := f.post(t, sign(t, jose.ES256, f.iss.ecKey, "ec-1", c))
	if code != http.StatusOK {
		t.Fatalf("status %d, body %v", code, body)
	}
	if len(f.sess.byUser) != 1 || f.sess.byUser[0] != c["sub"] || len(f.sess.bySid) != 0 {
		t.Fatalf("by sid %q, by user %q", f.sess.bySid, f.sess.byUser)
	}
}

func TestLogoutWithConfiguredJWKS(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.JWKSURL = c.Issuer + "/jwks"; c.Issuer = "https://idp.example/realms/r" })
	c := f.iss.goodClaims(f.now)
	c["iss"] = "https://idp.example/realms/r"
	if code, body := f.post(t, sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", c)); code != http.StatusOK {
		t.Fatalf("status %d, body %v", code, body)
	}
}

func TestLogoutRejections(t *testing.T) {
	otherKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, nil)
	cases := []struct {
		name   string
		token  func() string
		reason string
	}{
		{"bad signature", func() string {
			return sign(t, jose.RS256, otherKey, "rsa-1", f.iss.goodClaims(f.now))
		}, ReasonBadSignature},
		{"unknown key", func() string {
			return sign(t, jose.RS256, otherKey, "rsa-2", f.iss.goodClaims(f.now))
		}, ReasonBadSignature},
		{"tampered payload", func() string {
			tok := sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", f.iss.goodClaims(f.now))
			other := sign(t, jose.RS256, otherKey, "rsa-1", f.iss.goodClaims(f.now))
			p := strings.Split(tok, ".")
			p[1] = strings.Split(other, ".")[1]
			return strings.Join(p, ".")
		}, ReasonBadSignature},
		{"HS256", func() string {
			signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte("0123456789abcdef0123456789abcdef")}, nil)
			b, _ := json.Marshal(f.iss.goodClaims(f.now))
			obj, _ := signer.Sign(b)
			s, _ := obj.CompactSerialize()
			return s
		}, ReasonMalformed},
		{"not a JWT", func() string { return "not.a.jwt" }, ReasonMalformed},
		{"JSON serialization", func() string {
			signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: f.iss.rsaKey, KeyID: "rsa-1"}}, nil)
			b, _ := json.Marshal(f.iss.goodClaims(f.now))
			obj, _ := signer.Sign(b)
			return obj.FullSerialize()
		}, ReasonMalformed},
		{"alg none", func() string {
			b, _ := json.Marshal(f.iss.goodClaims(f.now))
			return base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`)) + "." + base64.RawURLEncoding.EncodeToString(b) + "."
		}, ReasonMalformed},
		{"wrong issuer", func() string {
			c := f.iss.goodClaims(f.now)
			c["iss"] = "https://evil.example"
			return sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", c)
		}, ReasonWrongIssuer},
		{"wrong audience", func() string {
			c := f.iss.goodClaims(f.now)
			c["aud"] = []string{"another-client"}
			return sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", c)
		}, ReasonWrongAudience},
		{"expired", func() string {
			c := f.iss.goodClaims(f.now.Add(-5 * time.Minute))
			return sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", c)
		}, ReasonExpired},
		{"no exp", func() string {
			c := f.iss.goodClaims(f.now)
			delete(c, "exp")
			return sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", c)
		}, ReasonExpired},
		{"no iat", func() string {
			c := f.iss.goodClaims(f.now)
			delete(c, "iat")
			return sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", c)
		}, ReasonIssuedAt},
		{"iat in the future", func() string {
			c := f.iss.goodClaims(f.now)
			c["iat"] = f.now.Add(10 * time.Minute).Unix()
			c["exp"] = f.now.Add(20 * time.Minute).Unix()
			return sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", c)
		}, ReasonIssuedAt},
		{"too old", func() string {
			c := f.iss.goodClaims(f.now.Add(-time.Hour))
			c["exp"] = f.now.Add(time.Hour).Unix()
			return sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", c)
		}, ReasonIssuedAt},
		{"missing events", func() string {
			c := f.iss.goodClaims(f.now)
			delete(c, "events")
			return sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", c)
		}, ReasonMissingEvents},
		{"other event", func() string {
			c := f.iss.goodClaims(f.now)
			c["events"] = map[string]any{"http://schemas.openid.net/event/other": map[string]any{}}
			return sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", c)
		}, ReasonMissingEvents},
		{"event not an object", func() string {
			c := f.iss.goodClaims(f.now)
			c["events"] = map[string]any{EventBackchannelLogout: "yes"}
			return sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", c)
		}, ReasonMissingEvents},
		{"nonce", func() string {
			c := f.iss.goodClaims(f.now)
			c["nonce"] = "n-0S6_WzA2Mj"
			return sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", c)
		}, ReasonNonce},
		{"no jti", func() string {
			c := f.iss.goodClaims(f.now)
			delete(c, "jti")
			return sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", c)
		}, ReasonMissingJTI},
		{"neither sub nor sid", func() string {
			c := f.iss.goodClaims(f.now)
			delete(c, "sub")
			delete(c, "sid")
			return sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", c)
		}, ReasonMissingSubject},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body := f.post(t, tc.token())
			if code != http.StatusBadRequest || body["reason"] != tc.reason || body["error"] != "invalid_request" || !strings.HasPrefix(body["error_description"], tc.reason+": ") {
				t.Fatalf("status %d, body %v; want 400 %s", code, body, tc.reason)
			}
		})
	}
	if len(f.sess.bySid)+len(f.sess.byUser) != 0 {
		t.Fatalf("sessions ended: %q %q", f.sess.bySid, f.sess.byUser)
	}
}

func TestLogoutReplayed(t *testing.T) {
	f := newFixture(t, nil)
	tok := sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", f.iss.goodClaims(f.now))
	if code, body := f.post(t, tok); code != http.StatusOK {
		t.Fatalf("first: %d %v", code, body)
	}
	code, body := f.post(t, tok)
	if code != http.StatusBadRequest || body["reason"] != ReasonReplayed {
		t.Fatalf("replay: %d %v", code, body)
	}
	if len(f.sess.bySid) != 1 {
		t.Fatalf("ended %d times", len(f.sess.bySid))
	}
	// Once the token could no longer be accepted, its jti is forgotten
	// (and the token refused as expired).
	f.now = f.now.Add(10 * time.Minute)
	if code, body := f.post(t, tok); code != http.StatusBadRequest || body["reason"] != ReasonExpired {
		t.Fatalf("later: %d %v", code, body)
	}
}

func TestLogoutStoreFailureAllowsRetry(t *testing.T) {
	f := newFixture(t, nil)
	tok := sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", f.iss.goodClaims(f.now))
	f.sess.fail = true
	if code, body := f.post(t, tok); code != http.StatusServiceUnavailable || body["error"] != "temporarily_unavailable" {
		t.Fatalf("store down: %d %v", code, body)
	}
	f.sess.fail = false
	if code, body := f.post(t, tok); code != http.StatusOK {
		t.Fatalf("retry: %d %v", code, body)
	}
}

func TestLogoutRequestChecks(t *testing.T) {
	f := newFixture(t, nil)
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/backchannel-logout", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d", rec.Code)
	}
	rec = httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/backchannel-logout", strings.NewReader(`{"logout_token":"x"}`))
	req.Header.Set("Content-Type", "application/json")
	f.h.ServeHTTP(rec, req)
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), ReasonMissingToken) {
		t.Errorf("JSON body: %d %s", rec.Code, rec.Body)
	}
	if code, body := f.post(t, ""); code != http.StatusBadRequest || body["reason"] != ReasonMissingToken {
		t.Errorf("no token: %d %v", code, body)
	}
}

func TestLogoutIssuerUnreachable(t *testing.T) {
	f := newFixture(t, nil)
	tok := sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", f.iss.goodClaims(f.now))
	f.iss.srv.Close()
	if code, body := f.post(t, tok); code != http.StatusServiceUnavailable {
		t.Fatalf("issuer down: %d %v", code, body)
	}
}

func TestReplayCacheBounded(t *testing.T) {
	c := newReplayCache(2)
	now := time.Now()
	if c.add("a", now.Add(time.Minute), now) != replayNew || c.add("b", now.Add(2*time.Minute), now) != replayNew {
		t.Fatal("add")
	}
	if c.add("a", now.Add(time.Minute), now) != replaySeen {
		t.Fatal("seen")
	}
	if c.add("c", now.Add(time.Minute), now) != replayFull {
		t.Fatal("full")
	}
	// a expires: room for c.
	if c.add("c", now.Add(3*time.Minute), now.Add(time.Minute)) != replayNew {
		t.Fatal("after expiry")
	}
}

// TestLogoutKeyRotation: the JWKS is cached, and fetched again when a
// token names a key the cache lacks.
func TestLogoutKeyRotation(t *testing.T) {
	f := newFixture(t, nil)
	for range 3 {
		if code, body := f.post(t, sign(t, jose.RS256, f.iss.rsaKey, "rsa-1", f.iss.goodClaims(f.now))); code != http.StatusOK {
			t.Fatalf("%d %v", code, body)
		}
	}
	if n := f.iss.hits(); n != 1 {
		t.Fatalf("JWKS fetched %d times for 3 tokens", n)
	}
	newKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f.iss.mu.Lock()
	f.iss.extra = append(f.iss.extra, jose.JSONWebKey{Key: newKey.Public(), KeyID: "ec-2", Algorithm: "ES384", Use: "sig"})
	f.iss.mu.Unlock()
	if code, body := f.post(t, sign(t, jose.ES384, newKey, "ec-2", f.iss.goodClaims(f.now))); code != http.StatusOK {
		t.Fatalf("rotated key: %d %v", code, body)
	}
	if n := f.iss.hits(); n != 2 {
		t.Fatalf("JWKS fetched %d times", n)
	}
}
