// Package admin is proxysession's session administration API, served on
// the admin listener under /admin/v1/: end every session of a user, end
// one session by its handle, count a user's sessions. Every call needs
// the bearer token of -admin-token-file and is audited in the log, with
// the identifiers it names replaced by the engine's HMAC prefix
// (sessions.Cache.BindingKeyHash).
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/proxysession/proxysession/sessions"
)

// Sessions is the part of the session engine (*sessions.Cache) the API
// uses.
type Sessions interface {
	EndUserSessions(ctx context.Context, userID string, reason sessions.EndReason) (int, error)
	CountUserSessions(ctx context.Context, userID string) (int, error)
	EndSessionByHandle(ctx context.Context, handle string, reason sessions.EndReason) (bool, error)
	BindingKeyHash(userOrSid string) string
}

// MinTokenLength is the shortest admin token accepted, in bytes.
const MinTokenLength = 32

// maxIDLength bounds a user id or handle in a request.
const maxIDLength = 1024

// Token is the admin bearer token, read from a file and read again when
// the file changes (checked at most once a second), so that it can be
// rotated without a restart (a Kubernetes Secret volume, say).
type Token struct {
	path string
	log  *slog.Logger

	mu      sync.Mutex
	sum     [sha256.Size]byte // SHA-256 of the token; valid if ok
	ok      bool
	mod     time.Time
	size    int64
	checked time.Time
}

// LoadToken reads the token file: its content, without surrounding
// white space, at least MinTokenLength bytes.
func LoadToken(path string, log *slog.Logger) (*Token, error) {
	if log == nil {
		log = slog.Default()
	}
	t := &Token{path: path, log: log}
	if err := t.reload(time.Now()); err != nil {
		return nil, err
	}
	return t, nil
}

// reload reads the file if it changed; t.mu held, or from LoadToken.
func (t *Token) reload(now time.Time) error {
	t.checked = now
	fi, err := os.Stat(t.path)
	if err != nil {
		return fmt.Errorf("admin token file: %w", err)
	}
	if t.ok && fi.ModTime().Equal(t.mod) && fi.Size() == t.size {
		return nil
	}
	b, err := os.ReadFile(t.path)
	if err != nil {
		return fmt.Errorf("admin token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < MinTokenLength {
		return fmt.Errorf("admin token file %s: the token has %d bytes, fewer than %d (make one with: openssl rand -hex 32)", t.path, len(tok), MinTokenLength)
	}
	t.sum, t.ok, t.mod, t.size = sha256.Sum256([]byte(tok)), true, fi.ModTime(), fi.Size()
	return nil
}

// valid says whether presented is the token, in constant time (of the
// token's hash: neither its length nor its content leaks).
func (t *Token) valid(presented string) bool {
	now := time.Now()
	t.mu.Lock()
	if now.Sub(t.checked) >= time.Second {
		if err := t.reload(now); err != nil {
			// Fail closed: a token file that went missing or bad
			// refuses every call until it is fixed.
			if t.ok {
				t.log.Error("admin API disabled until the token file is fixed", slog.String("error", err.Error()))
			}
			t.ok = false
		}
	}
	sum, ok := t.sum, t.ok
	t.mu.Unlock()
	p := sha256.Sum256([]byte(presented))
	return subtle.ConstantTimeCompare(p[:], sum[:]) == 1 && ok
}

// API is the admin API's http.Handler.
type API struct {
	sessions  Sessions
	token     *Token
	log       *slog.Logger
	mux       *http.ServeMux
	observers []Observer
}

// ops are the routes' operations, by path.
var ops = map[string]string{
	"/admin/v1/logout-user":    "logout-user",
	"/admin/v1/count-sessions": "count-sessions",
	"/admin/v1/logout-session": "logout-session",
}

// observe reports a call's outcome to the observers.
func (a *API) observe(r *http.Request, outcome string) {
	op, ok := ops[r.URL.Path]
	if !ok {
		op = "other"
	}
	for _, o := range a.observers {
		o(op, outcome)
	}
}

// statusRecorder remembers the status a route answered.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

// Prefix is the path prefix of every route of the API.
const Prefix = "/admin/"

// Observer is told the outcome of every call: op is logout-user,
// count-sessions, logout-session or other; outcome is ok, unauthorized,
// bad_request, not_bound or error. Both are bounded sets, for metric
// labels.
type Observer func(op, outcome string)

// New returns the API ending and counting sessions of s, for callers
// presenting token. observe may be nil.
func New(s Sessions, token *Token, log *slog.Logger, observe ...Observer) *API {
	if log == nil {
		log = slog.Default()
	}
	a := &API{sessions: s, token: token, log: log, mux: http.NewServeMux()}
	for _, o := range observe {
		if o != nil {
			a.observers = append(a.observers, o)
		}
	}
	a.mux.HandleFunc("POST /admin/v1/logout-user", a.logoutUser)
	a.mux.HandleFunc("POST /admin/v1/count-sessions", a.countSessions)
	a.mux.HandleFunc("POST /admin/v1/logout-session", a.logoutSession)
	return a
}

// ServeHTTP authenticates the caller, then serves the route.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	auth := r.Header.Get("Authorization")
	scheme, tok, _ := strings.Cut(auth, " ")
	if !strings.EqualFold(scheme, "Bearer") || !a.token.valid(strings.TrimSpace(tok)) {
		a.log.Warn("admin API: unauthorized", slog.String("path", r.URL.Path), slog.String("remote", remoteIP(r)), slog.Bool("credentials", auth != ""))
		w.Header().Set("WWW-Authenticate", `Bearer realm="proxysession-admin"`)
		writeJSON(w, http.StatusUnauthorized, map[string]any{"error": "unauthorized"})
		a.observe(r, "unauthorized")
		return
	}
	rec := &statusRecorder{ResponseWriter: w}
	a.mux.ServeHTTP(rec, r)
	switch {
	case rec.status == 0 || rec.status < 300:
		a.observe(r, "ok")
	case rec.status == http.StatusNotImplemented:
		a.observe(r, "not_bound")
	case rec.status >= 500:
		a.observe(r, "error")
	default:
		a.observe(r, "bad_request")
	}
}

// request is the JSON body of every route: one of its fields is used.
type request struct {
	User   string `json:"user"`
	Handle string `json:"handle"`
}

// decode reads the JSON body into req; it answers the client and returns
// false when the body is not acceptable.
func decode(w http.ResponseWriter, r *http.Request, req *request) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		writeJSON(w, http.StatusUnsupportedMediaType, map[string]any{"error": "Content-Type must be application/json"})
		return false
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 8<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid JSON body: " + err.Error()})
		return false
	}
	return true
}

// id checks the one identifier a route takes.
func id(w http.ResponseWriter, name, v string) bool {
	switch {
	case v == "":
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": fmt.Sprintf("%q is required", name)})
		return false
	case len(v) > maxIDLength:
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": fmt.Sprintf("%q is longer than %d bytes", name, maxIDLength)})
		return false
	}
	return true
}

// audit logs a call: the operation, the HMAC prefix of the identifier
// (never the identifier), the outcome and the caller.
func (a *API) audit(r *http.Request, op, field, v string, err error, attrs ...slog.Attr) {
	base := []slog.Attr{slog.String("op", op), slog.String(field+"_hash", a.sessions.BindingKeyHash(v)), slog.String("remote", remoteIP(r))}
	if err != nil {
		base = append(base, slog.String("outcome", "error"), slog.String("error", err.Error()))
		a.log.LogAttrs(r.Context(), slog.LevelError, "admin API", append(base, attrs...)...)
		return
	}
	base = append(base, slog.String("outcome", "ok"))
	a.log.LogAttrs(r.Context(), slog.LevelInfo, "admin API", append(base, attrs...)...)
}

func (a *API) logoutUser(w http.ResponseWriter, r *http.Request) {
	var req request
	if !decode(w, r, &req) || !id(w, "user", req.User) {
		return
	}
	n, err := a.sessions.EndUserSessions(r.Context(), req.User, sessions.EndAdmin)
	a.audit(r, "logout-user", "user", req.User, err, slog.Int("ended", n))
	if err != nil {
		storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ended": n})
}

func (a *API) countSessions(w http.ResponseWriter, r *http.Request) {
	var req request
	if !decode(w, r, &req) || !id(w, "user", req.User) {
		return
	}
	n, err := a.sessions.CountUserSessions(r.Context(), req.User)
	a.audit(r, "count-sessions", "user", req.User, err, slog.Int("sessions", n))
	if err != nil {
		storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"sessions": n})
}

func (a *API) logoutSession(w http.ResponseWriter, r *http.Request) {
	var req request
	if !decode(w, r, &req) || !id(w, "handle", req.Handle) {
		return
	}
	ended, err := a.sessions.EndSessionByHandle(r.Context(), req.Handle, sessions.EndAdmin)
	a.audit(r, "logout-session", "handle", req.Handle, err, slog.Bool("ended", ended))
	if err != nil {
		storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ended": ended})
}

// storeError answers a failure of the engine: 501 when sessions cannot
// be bound (no binding key, or a store without the indexes), else 503.
func storeError(w http.ResponseWriter, err error) {
	if errors.Is(err, sessions.ErrBindingUnsupported) {
		writeJSON(w, http.StatusNotImplemented, map[string]any{"error": "sessions are not bound to users: configure the binding key, on a store that supports binding"})
		return
	}
	w.Header().Set("Retry-After", "1")
	writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "the session store failed; retry"})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func remoteIP(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}
