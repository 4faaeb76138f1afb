// Package backchannel implements OpenID Connect Back-Channel Logout 1.0
// for proxysession: an http.Handler that receives the identity provider's
// logout_token (a JWT), verifies it, and ends the sessions bound to its
// sid or, without one, its sub.
//
// Signatures are verified by github.com/coreos/go-oidc/v3 against the
// issuer's JWKS (fetched from its discovery document, or a configured
// URL; cached, and fetched again when a token names a key the cache does
// not hold). The claims are checked here, each failure with a reason of
// its own: iss, aud, exp, iat (present, not in the future, not older than
// MaxTokenAge), the events claim (an object with the back-channel logout
// member, itself an object), no nonce, sub or sid, and jti, which must
// not have been seen before within the token's lifetime.
package backchannel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"

	"github.com/proxysession/proxysession/sessions"
)

// EventBackchannelLogout is the member of the events claim that makes a
// JWT a logout token.
const EventBackchannelLogout = "http://schemas.openid.net/event/backchannel-logout"

// Sessions is the part of the session engine (*sessions.Cache) the
// handler uses.
type Sessions interface {
	EndUserSessions(ctx context.Context, userID string, reason sessions.EndReason) (int, error)
	EndSidSessions(ctx context.Context, sid string, reason sessions.EndReason) (int, error)
	BindingKeyHash(userOrSid string) string
}

// Defaults of Config.
const (
	DefaultMaxTokenAge = 10 * time.Minute
	DefaultClockSkew   = time.Minute
	DefaultReplayLimit = 100_000
)

// DefaultAlgorithms are the signature algorithms accepted by default:
// the asymmetric ones (never HS* or none).
var DefaultAlgorithms = []string{
	string(jose.RS256), string(jose.RS384), string(jose.RS512),
	string(jose.PS256), string(jose.PS384), string(jose.PS512),
	string(jose.ES256), string(jose.ES384), string(jose.ES512),
	string(jose.EdDSA),
}

// Config configures the handler.
type Config struct {
	// Issuer is the identity provider's issuer URL, compared with iss
	// exactly; its discovery document names the JWKS unless JWKSURL is
	// set.
	Issuer string
	// Audience is the client id proxysession's backend is registered
	// under at the identity provider; aud must contain it.
	Audience string
	// JWKSURL, if set, is the issuer's key set, and discovery is skipped.
	JWKSURL string
	// Algorithms restricts the signature algorithms (DefaultAlgorithms if
	// empty).
	Algorithms []string
	// MaxTokenAge rejects tokens issued (iat) longer ago; it also bounds
	// how long a jti is remembered (DefaultMaxTokenAge if 0).
	MaxTokenAge time.Duration
	// ClockSkew is the leeway on exp and iat (DefaultClockSkew if 0).
	ClockSkew time.Duration
	// ReplayLimit bounds the jti values remembered; beyond it, a new
	// token is answered 503 until older ones expire (DefaultReplayLimit
	// if 0).
	ReplayLimit int
	// HTTPClient fetches the discovery document and the JWKS (a client
	// with a 10s timeout if nil).
	HTTPClient *http.Client
	// Sessions ends the sessions.
	Sessions Sessions
	// Logger receives one line per request, without identifiers in the
	// clear (slog.Default if nil).
	Logger *slog.Logger
	// Now is the clock (time.Now if nil); for tests.
	Now func() time.Time
	// Observe, if set, is told the outcome of every request: "ok", or
	// the reason it was refused (one of the Reason constants, or
	// keys_unavailable, replay_cache_full, store_failure,
	// binding_disabled, method_not_allowed): a bounded set, for a
	// metric label.
	Observe func(outcome string)
}

// Handler serves POST requests carrying a logout_token form field.
type Handler struct {
	cfg     Config
	replay  *replayCache
	mu      sync.Mutex // guards verifier, the discovery
	ver     *oidc.IDTokenVerifier
	keys    *oidc.RemoteKeySet
	lastTry time.Time
}

// New returns the handler of cfg. Discovery, when needed, happens on the
// first request (and again after a failure, at most every 10 seconds), so
// that an identity provider down at start does not stop proxysession.
func New(cfg Config) (*Handler, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("backchannel: no issuer")
	}
	if cfg.Audience == "" {
		return nil, errors.New("backchannel: no audience (the client id)")
	}
	if cfg.Sessions == nil {
		return nil, errors.New("backchannel: no sessions")
	}
	if len(cfg.Algorithms) == 0 {
		cfg.Algorithms = DefaultAlgorithms
	}
	for _, a := range cfg.Algorithms {
		if !slices.Contains(DefaultAlgorithms, a) {
			return nil, fmt.Errorf("backchannel: algorithm %q is not an asymmetric JWS algorithm", a)
		}
	}
	if cfg.MaxTokenAge <= 0 {
		cfg.MaxTokenAge = DefaultMaxTokenAge
	}
	if cfg.ClockSkew <= 0 {
		cfg.ClockSkew = DefaultClockSkew
	}
	if cfg.ReplayLimit <= 0 {
		cfg.ReplayLimit = DefaultReplayLimit
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &Handler{cfg: cfg, replay: newReplayCache(cfg.ReplayLimit)}
	if cfg.JWKSURL != "" {
		h.setKeys(cfg.JWKSURL)
	}
	return h, nil
}

func (h *Handler) clientContext() context.Context {
	return oidc.ClientContext(context.Background(), h.cfg.HTTPClient)
}

// setKeys builds the verifier on the key set at jwksURL; h.mu held, or
// during New.
func (h *Handler) setKeys(jwksURL string) {
	h.keys = oidc.NewRemoteKeySet(h.clientContext(), jwksURL)
	h.ver = oidc.NewVerifier(h.cfg.Issuer, probingKeySet{h.keys}, &oidc.Config{
		ClientID:             h.cfg.Audience,
		SupportedSigningAlgs: h.cfg.Algorithms,
		// go-oidc checks exp too (after checkClaims has), with the
		// same leeway.
		Now: func() time.Time { return h.cfg.Now().Add(-h.cfg.ClockSkew) },
	})
}

// verifier returns the verifier, discovering the issuer's JWKS first if
// needed.
func (h *Handler) verifier(ctx context.Context) (*oidc.IDTokenVerifier, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ver != nil {
		return h.ver, nil
	}
	now := h.cfg.Now()
	if now.Sub(h.lastTry) < 10*time.Second {
		return nil, errors.New("discovery failed recently; retrying shortly")
	}
	h.lastTry = now
	ctx, cancel := context.WithTimeout(oidc.ClientContext(ctx, h.cfg.HTTPClient), 10*time.Second)
	defer cancel()
	p, err := oidc.NewProvider(ctx, h.cfg.Issuer)
	if err != nil {
		return nil, fmt.Errorf("discovery of %s: %w", h.cfg.Issuer, err)
	}
	var meta struct {
		JWKSURL string `json:"jwks_uri"`
	}
	if err := p.Claims(&meta); err != nil || meta.JWKSURL == "" {
		return nil, fmt.Errorf("discovery of %s: no jwks_uri", h.cfg.Issuer)
	}
	h.setKeys(meta.JWKSURL)
	return h.ver, nil
}

// probe records what the key set did with a token: whether the
// signature was checked, and its outcome, so that failures are told
// apart from claim failures.
type probe struct {
	checked bool
	payload []byte
	err     error
}

type probeKey struct{}

// probingKeySet is the remote key set, recording into the request's
// probe.
type probingKeySet struct{ ks oidc.KeySet }

func (p probingKeySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	payload, err := p.ks.VerifySignature(ctx, jwt)
	if pr, ok := ctx.Value(probeKey{}).(*probe); ok {
		pr.checked, pr.payload, pr.err = true, payload, err
	}
	return payload, err
}

// Reasons a logout token is rejected (the reason field of the 400
// response, and of the log line).
const (
	ReasonMalformed       = "malformed"         // not a JWS compact JWT, or an algorithm not accepted
	ReasonBadSignature    = "bad_signature"     // no key of the issuer's JWKS verifies it
	ReasonBadClaims       = "bad_claims"        // the payload is not a JSON object of the expected types
	ReasonWrongIssuer     = "wrong_issuer"      // iss is not the configured issuer
	ReasonWrongAudience   = "wrong_audience"    // aud lacks the configured client id
	ReasonExpired         = "expired"           // exp is missing or past
	ReasonIssuedAt        = "bad_iat"           // iat is missing, in the future, or older than MaxTokenAge
	ReasonMissingEvents   = "missing_events"    // no events claim with the back-channel logout event
	ReasonNonce           = "nonce_present"     // a nonce claim: an ID token, not a logout token
	ReasonMissingJTI      = "missing_jti"       // no jti
	ReasonMissingSubject  = "missing_sub_sid"   // neither sub nor sid
	ReasonReplayed        = "replayed"          // this jti was seen before
	ReasonMissingToken    = "missing_token"     // no logout_token form field
	ReasonInvalid         = "invalid_token"     // rejected by go-oidc for another reason
	reasonUnavailable     = "keys_unavailable"  // the JWKS could not be fetched (503)
	reasonReplayFull      = "replay_cache_full" // (503)
	reasonSessionsFailing = "store_failure"     // ending the sessions failed (503)
	reasonNotBound        = "binding_disabled"  // sessions are not bound to users (501)
)

// rejection is a token refused, with the reason code and a description.
type rejection struct {
	status int
	reason string
	detail string
}

func (r *rejection) Error() string { return r.reason + ": " + r.detail }

func reject(reason, format string, args ...any) *rejection {
	return &rejection{status: http.StatusBadRequest, reason: reason, detail: fmt.Sprintf(format, args...)}
}

// claims are a logout token's claims, as received.
type claims struct {
	Issuer   string                     `json:"iss"`
	Subject  string                     `json:"sub"`
	Audience json.RawMessage            `json:"aud"`
	Expiry   *json.Number               `json:"exp"`
	IssuedAt *json.Number               `json:"iat"`
	JTI      string                     `json:"jti"`
	SID      string                     `json:"sid"`
	Events   map[string]json.RawMessage `json:"events"`
	Nonce    json.RawMessage            `json:"nonce"`
}

// LogoutToken is a verified logout token.
type LogoutToken struct {
	Subject, SID, JTI string
	IssuedAt, Expiry  time.Time
}

func numericDate(n *json.Number) (time.Time, bool) {
	if n == nil {
		return time.Time{}, false
	}
	f, err := n.Float64()
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(int64(f), 0), true
}

// checkClaims checks the verified payload's claims, in the order of the
// specification's §2.6.
func (h *Handler) checkClaims(payload []byte) (*LogoutToken, *rejection) {
	var c claims
	dec := json.NewDecoder(strings.NewReader(string(payload)))
	dec.UseNumber()
	if err := dec.Decode(&c); err != nil {
		return nil, reject(ReasonBadClaims, "claims: %v", err)
	}
	if c.Issuer != h.cfg.Issuer {
		return nil, reject(ReasonWrongIssuer, "iss is not the configured issuer")
	}
	var aud []string
	if err := json.Unmarshal(c.Audience, &aud); err != nil {
		var one string
		if err := json.Unmarshal(c.Audience, &one); err != nil {
			return nil, reject(ReasonWrongAudience, "aud is missing or not a string or array of strings")
		}
		aud = []string{one}
	}
	if !slices.Contains(aud, h.cfg.Audience) {
		return nil, reject(ReasonWrongAudience, "aud does not contain the configured client id")
	}
	now := h.cfg.Now()
	exp, ok := numericDate(c.Expiry)
	if !ok {
		return nil, reject(ReasonExpired, "exp is missing")
	}
	if !now.Before(exp.Add(h.cfg.ClockSkew)) {
		return nil, reject(ReasonExpired, "expired at %s", exp.UTC().Format(time.RFC3339))
	}
	iat, ok := numericDate(c.IssuedAt)
	switch {
	case !ok:
		return nil, reject(ReasonIssuedAt, "iat is missing")
	case iat.After(now.Add(h.cfg.ClockSkew)):
		return nil, reject(ReasonIssuedAt, "iat is in the future")
	case now.Sub(iat) > h.cfg.MaxTokenAge+h.cfg.ClockSkew:
		return nil, reject(ReasonIssuedAt, "issued more than %s ago", h.cfg.MaxTokenAge)
	}
	ev, ok := c.Events[EventBackchannelLogout]
	if !ok {
		return nil, reject(ReasonMissingEvents, "the events claim lacks %s", EventBackchannelLogout)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(ev, &obj); err != nil || obj == nil {
		return nil, reject(ReasonMissingEvents, "the %s event is not a JSON object", EventBackchannelLogout)
	}
	if c.Nonce != nil {
		return nil, reject(ReasonNonce, "a logout token must not contain a nonce")
	}
	if c.JTI == "" {
		return nil, reject(ReasonMissingJTI, "jti is missing")
	}
	if c.Subject == "" && c.SID == "" {
		return nil, reject(ReasonMissingSubject, "neither sub nor sid")
	}
	return &LogoutToken{Subject: c.Subject, SID: c.SID, JTI: c.JTI, IssuedAt: iat, Expiry: exp}, nil
}

// Verify verifies a logout token: signature, then claims. It does not
// check or record the jti.
func (h *Handler) Verify(ctx context.Context, raw string) (*LogoutToken, error) {
	if _, err := jose.ParseSignedCompact(raw, algorithms(h.cfg.Algorithms)); err != nil {
		return nil, reject(ReasonMalformed, "%v", err)
	}
	ver, err := h.verifier(ctx)
	if err != nil {
		return nil, &rejection{status: http.StatusServiceUnavailable, reason: reasonUnavailable, detail: err.Error()}
	}
	pr := &probe{}
	_, verr := ver.VerifyLogout(context.WithValue(ctx, probeKey{}, pr), raw)
	switch {
	case !pr.checked:
		return nil, reject(ReasonMalformed, "%v", verr)
	case pr.err != nil:
		if strings.HasPrefix(pr.err.Error(), "fetching keys") {
			return nil, &rejection{status: http.StatusServiceUnavailable, reason: reasonUnavailable, detail: pr.err.Error()}
		}
		return nil, reject(ReasonBadSignature, "no key of the issuer verifies the signature")
	}
	tok, rej := h.checkClaims(pr.payload)
	if rej != nil {
		return nil, rej
	}
	if verr != nil {
		return nil, reject(ReasonInvalid, "%v", verr)
	}
	return tok, nil
}

func algorithms(names []string) []jose.SignatureAlgorithm {
	a := make([]jose.SignatureAlgorithm, len(names))
	for i, n := range names {
		a[i] = jose.SignatureAlgorithm(n)
	}
	return a
}

// ServeHTTP handles a back-channel logout request (spec §2.5, §2.8): 200
// when the sessions were ended (or there were none), 400 with an OAuth 2.0
// error body when the token is refused, 503 when proxysession could not
// act (the JWKS or the store unavailable), so that the provider may retry.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.observe("method_not_allowed")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	start := h.cfg.Now()
	log := h.cfg.Logger.With(slog.String("remote", remoteIP(r)))
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	ct := r.Header.Get("Content-Type")
	if mt, _, _ := strings.Cut(ct, ";"); !strings.EqualFold(strings.TrimSpace(mt), "application/x-www-form-urlencoded") {
		h.fail(w, log, reject(ReasonMissingToken, "Content-Type must be application/x-www-form-urlencoded"))
		return
	}
	if err := r.ParseForm(); err != nil {
		h.fail(w, log, reject(ReasonMissingToken, "unreadable form: %v", err))
		return
	}
	raw := r.PostForm.Get("logout_token")
	if raw == "" {
		h.fail(w, log, reject(ReasonMissingToken, "no logout_token form field"))
		return
	}
	tok, err := h.Verify(r.Context(), raw)
	if err != nil {
		var rej *rejection
		if !errors.As(err, &rej) {
			rej = reject(ReasonInvalid, "%v", err)
		}
		h.fail(w, log, rej)
		return
	}
	// Remember the jti until the token could no longer be accepted.
	until := tok.Expiry
	if limit := tok.IssuedAt.Add(h.cfg.MaxTokenAge); limit.Before(until) {
		until = limit
	}
	switch h.replay.add(tok.JTI, until.Add(h.cfg.ClockSkew), start) {
	case replaySeen:
		h.fail(w, log, reject(ReasonReplayed, "this jti was already used"))
		return
	case replayFull:
		h.fail(w, log, &rejection{status: http.StatusServiceUnavailable, reason: reasonReplayFull, detail: "too many recent logout tokens"})
		return
	}
	var n int
	var by string
	if tok.SID != "" {
		by = "sid"
		log = log.With(slog.String("sid_hash", h.cfg.Sessions.BindingKeyHash(tok.SID)))
		n, err = h.cfg.Sessions.EndSidSessions(r.Context(), tok.SID, sessions.EndBackchannel)
	} else {
		by = "sub"
		log = log.With(slog.String("user_hash", h.cfg.Sessions.BindingKeyHash(tok.Subject)))
		n, err = h.cfg.Sessions.EndUserSessions(r.Context(), tok.Subject, sessions.EndBackchannel)
	}
	if err != nil {
		// Forget the jti, so that the provider's retry is not a replay.
		h.replay.remove(tok.JTI)
		rej := &rejection{status: http.StatusServiceUnavailable, reason: reasonSessionsFailing, detail: "ending the sessions failed"}
		if errors.Is(err, sessions.ErrBindingUnsupported) {
			rej = &rejection{status: http.StatusNotImplemented, reason: reasonNotBound, detail: "sessions are not bound to users (no binding key, or a store without binding)"}
		}
		h.fail(w, log, rej)
		log.Error("back-channel logout: ending sessions", slog.String("error", err.Error()))
		return
	}
	log.Info("back-channel logout", slog.String("outcome", "ok"), slog.String("by", by), slog.Int("ended", n))
	h.observe("ok")
	w.WriteHeader(http.StatusOK)
}

// fail answers a rejection: 400 with {"error": "invalid_request", ...}
// (OAuth 2.0 §5.2, as Back-Channel Logout §2.8 allows), or 503.
func (h *Handler) observe(outcome string) {
	if h.cfg.Observe != nil {
		h.cfg.Observe(outcome)
	}
}

func (h *Handler) fail(w http.ResponseWriter, log *slog.Logger, rej *rejection) {
	h.observe(rej.reason)
	level := slog.LevelWarn
	if rej.status >= 500 {
		level = slog.LevelError
	}
	log.Log(context.Background(), level, "back-channel logout rejected", slog.String("outcome", "rejected"), slog.String("reason", rej.reason), slog.String("detail", rej.detail))
	code := "invalid_request"
	if rej.status >= 500 {
		code = "temporarily_unavailable"
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rej.status)
	json.NewEncoder(w).Encode(map[string]string{
		"error":             code,
		"error_description": rej.Error(),
		"reason":            rej.reason,
	})
}

func remoteIP(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}
