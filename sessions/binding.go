package sessions

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Defaults of the binding headers (see Config.UserHeader).
const (
	DefaultUserHeader    = "Proxysession-User"
	DefaultSidHeader     = "Proxysession-Sid"
	DefaultLogoutHeader  = "Proxysession-Logout"
	DefaultRotateHeader  = "Proxysession-Rotate"
	DefaultRotationGrace = 5 * time.Second
	// MinBindingKeyBytes is the shortest Config.BindingKey accepted.
	MinBindingKeyBytes = 32
	// maxRotationGrace bounds Config.RotationGrace.
	maxRotationGrace = time.Minute
)

// ErrBindingUnsupported is returned by the binding operations of a Cache
// whose store does not implement UserIndexStore, or that has no
// BindingKey.
var ErrBindingUnsupported = errors.New("sessions: binding not supported by this store (or no binding key configured)")

// Binding ties a session to a user of the backend. It holds HMACs only
// (Config.BindingKey): never the user id or the identity provider's
// session id themselves.
type Binding struct {
	// UserKey is the HMAC of the user id (base64url).
	UserKey string
	// SidKey is the HMAC of the identity provider's session id, or "".
	SidKey string
	// Handle is the session's handle (Cache.EndSessionByHandle): an HMAC
	// of the session id's lookup half, which does not lead back to the
	// session cookie.
	Handle string
}

// Binding returns the binding of s, if it is bound.
func (s *Session) Binding() (Binding, bool) {
	if b := s.binding.Load(); b != nil {
		return *b, true
	}
	return Binding{}, false
}

// SetBinding records the binding a Store read with the session. Stores
// that restore sessions call it; the engine binds through
// UserIndexStore.Bind.
func (s *Session) SetBinding(b Binding) {
	if b.UserKey == "" {
		s.binding.Store(nil)
		return
	}
	s.binding.Store(&b)
}

// BindingIndex names one of a UserIndexStore's indexes.
type BindingIndex uint8

// The indexes of bound sessions.
const (
	IndexUser   BindingIndex = iota // by Binding.UserKey
	IndexSid                        // by Binding.SidKey
	IndexHandle                     // by Binding.Handle
)

// UserIndexStore is implemented by stores that can bind sessions to
// users and end them by user, by identity-provider session or by handle,
// for every replica that shares the store. Its indexes never outlive the
// sessions they list.
type UserIndexStore interface {
	// Bind records b as s's binding (replacing any other) and indexes s
	// under b's keys. Binding a session that is gone does nothing.
	Bind(ctx context.Context, s *Session, b Binding) error
	// EndBound ends every session listed under key in index and returns
	// how many there were.
	EndBound(ctx context.Context, index BindingIndex, key string) (int, error)
	// CountBound returns how many live sessions are listed under key.
	CountBound(ctx context.Context, index BindingIndex, key string) (int, error)
}

// bindingConfig are the Cache's binding settings, resolved by New.
type bindingConfig struct {
	on bool // BindingKey is set
	// removeHeaders are the lower-case names of the four binding
	// headers, which every response loses (ResponseEdit.RemoveHeaders).
	removeHeaders []string
	// canonical are the same names in canonical form, for header maps.
	canonical [4]string
	// handleHeader is the canonical name of the request header that
	// carries the session's handle to the backend, or "".
	handleHeader string
}

func (cfg *Config) bindingDefaults(errs []error) []error {
	for _, h := range []*string{&cfg.UserHeader, &cfg.SidHeader, &cfg.LogoutHeader, &cfg.RotateHeader} {
		if *h == "" {
			switch h {
			case &cfg.UserHeader:
				*h = DefaultUserHeader
			case &cfg.SidHeader:
				*h = DefaultSidHeader
			case &cfg.LogoutHeader:
				*h = DefaultLogoutHeader
			default:
				*h = DefaultRotateHeader
			}
		}
		if !isToken(*h) {
			errs = append(errs, fmt.Errorf("binding header %q: must be an HTTP token", *h))
		}
	}
	if cfg.SessionHandleHeader != "" && !isToken(cfg.SessionHandleHeader) {
		errs = append(errs, fmt.Errorf("session handle header %q: must be an HTTP token", cfg.SessionHandleHeader))
	}
	seen := map[string]bool{}
	for _, h := range []string{cfg.UserHeader, cfg.SidHeader, cfg.LogoutHeader, cfg.RotateHeader, cfg.SessionHandleHeader} {
		if h == "" {
			continue
		}
		l := strings.ToLower(h)
		if seen[l] || l == "set-cookie" || l == "cookie" || l == "cache-control" || l == "clear-site-data" {
			errs = append(errs, fmt.Errorf("binding header %q: used twice or a header proxysession reads for itself", h))
		}
		seen[l] = true
	}
	if cfg.BindingKey != nil && len(cfg.BindingKey) < MinBindingKeyBytes {
		errs = append(errs, fmt.Errorf("binding key: %d bytes, must be at least %d", len(cfg.BindingKey), MinBindingKeyBytes))
	}
	if cfg.PreviousBindingKey != nil && len(cfg.PreviousBindingKey) < MinBindingKeyBytes {
		errs = append(errs, fmt.Errorf("previous binding key: %d bytes, must be at least %d", len(cfg.PreviousBindingKey), MinBindingKeyBytes))
	}
	if cfg.PreviousBindingKey != nil && cfg.BindingKey == nil {
		errs = append(errs, errors.New("previous binding key without a binding key"))
	}
	cfg.RotationGrace = orDefault(cfg.RotationGrace, DefaultRotationGrace)
	if cfg.RotationGrace < 0 || cfg.RotationGrace > maxRotationGrace {
		errs = append(errs, fmt.Errorf("rotation grace %v: must be between 0 and %v", cfg.RotationGrace, maxRotationGrace))
	}
	return errs
}

func newBindingConfig(cfg *Config) bindingConfig {
	b := bindingConfig{on: cfg.BindingKey != nil}
	for i, h := range [4]string{cfg.UserHeader, cfg.SidHeader, cfg.LogoutHeader, cfg.RotateHeader} {
		b.removeHeaders = append(b.removeHeaders, strings.ToLower(h))
		b.canonical[i] = http.CanonicalHeaderKey(h)
	}
	if cfg.SessionHandleHeader != "" && b.on {
		b.handleHeader = http.CanonicalHeaderKey(cfg.SessionHandleHeader)
	}
	return b
}

// BindingHeaders returns the lower-case names of the response headers
// that bind sessions (user, sid, logout, rotate): a proxy removes them
// from every response (ResponseEdit.RemoveHeaders lists them too).
func (c *Cache) BindingHeaders() []string { return c.binding.removeHeaders }

// SessionHandleHeader returns the canonical name of the request header
// that carries a bound session's handle to the backend, or "" when none
// is configured. A proxy removes it from every request it forwards, and
// sets it to Exchange.Handle when that is not empty.
func (c *Cache) SessionHandleHeader() string { return c.binding.handleHeader }

// bindingField says which binding header a header key names, in any
// case: its index in bindingConfig.canonical (user, sid, logout,
// rotate), or -1.
func (c *Cache) bindingField(k string) int {
	for i, name := range c.binding.canonical {
		if len(k) == len(name) && strings.EqualFold(k, name) {
			return i
		}
	}
	return -1
}

// mac returns the HMAC-SHA256 of a labelled value under key, base64url.
func mac(key []byte, label, value string) string {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(label))
	h.Write([]byte{0})
	h.Write([]byte(value))
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
}

// bindingKeys returns the keys to look a value up with: the current
// binding key's HMAC, then the previous one's.
func (c *Cache) bindingKeys(label, value string) []string {
	keys := []string{mac(c.cfg.BindingKey, label, value)}
	if c.cfg.PreviousBindingKey != nil {
		keys = append(keys, mac(c.cfg.PreviousBindingKey, label, value))
	}
	return keys
}

// BindingKeyHash returns a short hex prefix of the current binding key's
// HMAC of a user id or sid, for audit logs: enough to tell entries apart,
// too little to test guesses against offline. "" without a binding key.
func (c *Cache) BindingKeyHash(userOrSid string) string {
	if !c.binding.on {
		return ""
	}
	h := hmac.New(sha256.New, c.cfg.BindingKey)
	h.Write([]byte("audit\x00"))
	h.Write([]byte(userOrSid))
	return hex.EncodeToString(h.Sum(nil)[:4])
}

func (c *Cache) indexStore() (UserIndexStore, error) {
	u, ok := c.store.(UserIndexStore)
	if !ok || !c.binding.on {
		return nil, ErrBindingUnsupported
	}
	return u, nil
}

// endBound ends the sessions under every key of value in index.
func (c *Cache) endBound(ctx context.Context, index BindingIndex, keys []string, reason EndReason) (int, error) {
	u, err := c.indexStore()
	if err != nil {
		return 0, err
	}
	total := 0
	for _, k := range keys {
		n, err := u.EndBound(ctx, index, k)
		total += n
		if err != nil {
			c.stats.sessionsEnded[reason].Add(uint64(total))
			return total, fmt.Errorf("ending sessions: %w", err)
		}
	}
	c.stats.sessionsEnded[reason].Add(uint64(total))
	if total > 0 {
		c.log.LogAttrs(ctx, slog.LevelInfo, "ended bound sessions", slog.String("reason", reason.String()), slog.Int("count", total))
	}
	return total, nil
}

// EndUserSessions ends every session bound to userID, for every replica
// that shares the store, and returns how many it ended.
func (c *Cache) EndUserSessions(ctx context.Context, userID string, reason EndReason) (int, error) {
	return c.endBound(ctx, IndexUser, c.bindingKeys("user", userID), reason)
}

// EndSidSessions ends every session bound to the identity provider's
// session id sid.
func (c *Cache) EndSidSessions(ctx context.Context, sid string, reason EndReason) (int, error) {
	return c.endBound(ctx, IndexSid, c.bindingKeys("sid", sid), reason)
}

// CountUserSessions returns how many live sessions are bound to userID.
func (c *Cache) CountUserSessions(ctx context.Context, userID string) (int, error) {
	u, err := c.indexStore()
	if err != nil {
		return 0, err
	}
	total := 0
	for _, k := range c.bindingKeys("user", userID) {
		n, err := u.CountBound(ctx, IndexUser, k)
		if err != nil {
			return total, fmt.Errorf("counting sessions: %w", err)
		}
		total += n
	}
	return total, nil
}

// EndSessionByHandle ends the session with the given handle (see
// Binding.Handle and Config.SessionHandleHeader) and reports whether
// there was one.
func (c *Cache) EndSessionByHandle(ctx context.Context, handle string, reason EndReason) (bool, error) {
	if handle == "" {
		return false, nil
	}
	n, err := c.endBound(ctx, IndexHandle, []string{handle}, reason)
	return n > 0, err
}

// handleOf returns the handle of the session with id.
func (c *Cache) handleOf(id ID) string {
	k := id.Key()
	return mac(c.cfg.BindingKey, "handle", string(k[:]))[:22]
}

// bindingFor returns the binding the backend asks for s: user and sid
// (the sid kept when the user stays and names none). It reports whether
// that is a login (s was unbound or bound to another user) and whether
// it differs from s's binding at all.
func (c *Cache) bindingFor(s *Session, user, sid string) (b Binding, login, differs bool) {
	old, bound := s.Binding()
	b = Binding{UserKey: mac(c.cfg.BindingKey, "user", user), Handle: c.handleOf(s.id)}
	same := bound && c.sameUser(old.UserKey, user)
	if sid != "" {
		b.SidKey = mac(c.cfg.BindingKey, "sid", sid)
	} else if same {
		b.SidKey = old.SidKey
	}
	if same && old.SidKey == b.SidKey {
		// The same user, perhaps under the previous binding key: keep
		// the binding as it is.
		return old, false, false
	}
	return b, !same, true
}

// sameUser reports whether key is user's HMAC under either binding key.
func (c *Cache) sameUser(key, user string) bool {
	for _, k := range c.bindingKeys("user", user) {
		if hmac.Equal([]byte(k), []byte(key)) {
			return true
		}
	}
	return false
}

// isUserLogout reports whether a LogoutHeader value asks to end every
// session of the user.
func isUserLogout(v string) bool {
	v = trimWSP(v)
	return strings.EqualFold(v, "user") || strings.EqualFold(v, "all")
}

// logoutFromResponse ends the session of x, and with "user" or "all"
// every other session bound to its user, on every replica.
func (c *Cache) logoutFromResponse(ctx context.Context, x *Exchange, v string) error {
	s := x.session
	reason, n := EndLogout, 0
	if isUserLogout(v) {
		reason = EndUserLogout
		if b, ok := s.Binding(); ok {
			if u, err := c.indexStore(); err == nil {
				c.countRoundTrip(x)
				if n, err = u.EndBound(ctx, IndexUser, b.UserKey); err != nil {
					return fmt.Errorf("ending the user's sessions: %w", err)
				}
			}
		}
	}
	// The current session, also when the index did not list it.
	c.countRoundTrip(x)
	if err := c.store.Delete(ctx, s.id); err != nil {
		return fmt.Errorf("ending session: %w", err)
	}
	c.stats.sessionsEnded[reason].Add(uint64(max(n, 1)))
	x.session = nil
	x.ended, x.endReason = true, reason
	c.log.LogAttrs(ctx, slog.LevelDebug, "session ended by the backend", slog.String("reason", reason.String()), slog.Int("count", max(n, 1)))
	return nil
}

// bindOrRotate binds s to the user the response names, and gives it a
// new id when that is a login (a new or different user) or the backend
// asks for one (RotateHeader). It reports whether the id rotated: x's
// session is then the new one.
func (c *Cache) bindOrRotate(ctx context.Context, x *Exchange, s *Session, created bool, resp *Response) (rotated bool, err error) {
	u, canBind := c.store.(UserIndexStore)
	var (
		b             Binding
		login, rebind bool
	)
	if resp.User != "" {
		if !canBind {
			c.log.LogAttrs(ctx, slog.LevelWarn, "the backend bound a session to a user, but the session store does not support binding")
		} else {
			b, login, rebind = c.bindingFor(s, resp.User, resp.Sid)
		}
	}
	if r, ok := c.store.(RotatingStore); ok && !created && (login || resp.Rotate != "") {
		c.countRoundTrip(x)
		ns, err := r.Rotate(ctx, s, newID(), c.now().Add(c.cfg.RotationGrace))
		if err != nil {
			return false, fmt.Errorf("rotating session id: %w", err)
		}
		if ns != nil {
			if !rebind {
				// The binding it had moves along, with a new handle.
				b, rebind = ns.Binding()
			}
			s, rotated = ns, true
			c.stats.rotations.Add(1)
			x.session = ns
		}
	}
	if rebind && canBind {
		b.Handle = c.handleOf(s.id)
		c.countRoundTrip(x)
		if err := u.Bind(ctx, s, b); err != nil {
			return false, fmt.Errorf("binding session: %w", err)
		}
	}
	return rotated, nil
}

// RotatingStore is implemented by stores that can give a session a new
// id, carrying its jar and binding over, while the old id keeps naming
// it for grace (requests in flight), and not after.
type RotatingStore interface {
	// Rotate moves s to newID and returns the session under its new id,
	// or nil when s is gone. The old id names the session until graceEnd
	// (on the clock the store expires sessions with).
	Rotate(ctx context.Context, s *Session, newID ID, graceEnd time.Time) (*Session, error)
}
