package sessions

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// Defaults for Config fields left zero.
const (
	DefaultCookieName           = "__Host-proxysession"
	DefaultInsecureCookieName   = "proxysession"
	DefaultLifetime             = 24 * time.Hour
	DefaultIdleTimeout          = 2 * time.Hour
	DefaultMaxSessions          = 100_000
	DefaultMaxCookiesPerDomain  = 180
	DefaultMaxCookiesPerSession = 300
	DefaultMaxBytesPerSession   = 32 << 10
	// DefaultMaxCookieLifetime is also the upper bound of
	// Config.MaxCookieLifetime: 400 days (RFC 6265bis §5.5).
	DefaultMaxCookieLifetime = 400 * 24 * time.Hour
)

// Config configures a Cache. Every zero field takes a secure default.
type Config struct {
	// CookieName is the session cookie's name. Default
	// DefaultCookieName, or DefaultInsecureCookieName with
	// InsecureCookie: the __Host- prefix needs the Secure attribute.
	CookieName string
	// InsecureCookie drops the Secure attribute from the session cookie,
	// for development over plain http. Browsers treat http://localhost as
	// secure, so even local development rarely needs it.
	InsecureCookie bool
	// SameSite is the session cookie's SameSite attribute: SameSiteLax
	// (the default, also for SameSiteDefault), SameSiteStrict, or
	// SameSiteNone, which needs a Secure cookie.
	SameSite SameSite
	// Lifetime is a session's absolute lifetime. Default DefaultLifetime.
	Lifetime time.Duration
	// IdleTimeout ends a session after this long without a request.
	// Default DefaultIdleTimeout, or Lifetime if that is shorter.
	IdleTimeout time.Duration
	// MaxCookieLifetime caps the Expires and Max-Age of backend cookies.
	// Default and upper bound: 400 days (RFC 6265bis).
	MaxCookieLifetime time.Duration
	// PassThrough lists cookie names that go to the browser untouched
	// instead of into the jar, such as CSRF tokens that JavaScript reads
	// ("XSRF-TOKEN", "_xsrf").
	PassThrough []string
	// TrustForwardedProto takes the browser-facing scheme from the first
	// X-Forwarded-Proto value instead of the request's own scheme. It
	// matters only with InsecureCookie: a Secure session cookie makes
	// every browser-facing origin secure (see Cache), so the scheme of the
	// last hop is irrelevant. Set it only when a trusted proxy in front
	// sets that header.
	TrustForwardedProto bool
	// StripBrowserCookies drops every cookie the browser sends except the
	// session cookie and PassThrough cookies, so that the backend sees
	// only cookies from the jar.
	StripBrowserCookies bool
	// Per-session jar limits. When a limit is exceeded, expired cookies
	// go first, then the least recently used. Defaults
	// DefaultMaxCookiesPerDomain (at least 50), DefaultMaxCookiesPerSession
	// and DefaultMaxBytesPerSession (at least 8 KiB; a cookie's bytes are
	// its name, value, domain and path).
	MaxCookiesPerDomain  int
	MaxCookiesPerSession int
	MaxBytesPerSession   int
	// Store holds the sessions. Default: a MemoryStore of MaxSessions.
	Store Store
	// MaxSessions sizes the default MemoryStore. Default DefaultMaxSessions.
	MaxSessions int
	// MaxMemory bounds the default MemoryStore's estimate of the heap its
	// sessions take, in bytes, besides MaxSessions. Default
	// DefaultMaxMemory; at least 1 MiB.
	MaxMemory int64
	// Logger receives rejected cookies and session events; never cookie
	// values or session ids. Default slog.Default().
	Logger *slog.Logger
	// Now returns the current time. Default time.Now.
	Now func() time.Time
	// TracerProvider, when not nil, gives SessionHandler's requests a
	// span for each phase (request_headers, response_headers; see
	// Tracer), children of the span in the request's context. Default:
	// no spans.
	TracerProvider trace.TracerProvider

	// UserHeader, SidHeader, LogoutHeader and RotateHeader name the
	// response headers by which a backend binds the session to a user
	// (an opaque id), to the identity provider's session id, ends every
	// session of the session's user ("user" or "all"; "session" ends the
	// current one), or asks for a new session id. Defaults
	// DefaultUserHeader, DefaultSidHeader, DefaultLogoutHeader and
	// DefaultRotateHeader. They are removed from every response, whether
	// or not binding is on.
	UserHeader, SidHeader, LogoutHeader, RotateHeader string
	// SessionHandleHeader, when set, names the request header that
	// carries a bound session's handle to the backend (see
	// Cache.EndSessionByHandle); it is removed from every request that
	// does not get a handle. Default "": none.
	SessionHandleHeader string
	// BindingKey is the HMAC key (at least 32 bytes) under which user
	// ids and sids are indexed; binding is off without it.
	// PreviousBindingKey, when set, still finds bindings made under the
	// key before a rotation.
	BindingKey, PreviousBindingKey []byte
	// RotationGrace is how long the old id of a rotated session keeps
	// working, for requests already in flight. Default
	// DefaultRotationGrace.
	RotationGrace time.Duration
}

// Cache is the session engine. It keeps each user's backend cookies in a
// server-side jar and gives the browser a single session cookie instead.
// A Cache is safe for concurrent use.
//
// A proxy calls Expand for each request before forwarding it, and Capture
// with the backend's response; SessionHandler does both for an
// http.Handler.
type Cache struct {
	cfg         Config
	store       Store
	limits      jarLimits
	log         *slog.Logger
	now         func() time.Time
	lifetime    int64 // nanoseconds
	idleTimeout int64 // nanoseconds

	sessionCookieAttrs string // "; Path=/; Max-Age=…; HttpOnly; Secure; SameSite=…"
	expiredCookie      string // a Set-Cookie that deletes the session cookie

	stats   counters
	tracer  *Tracer // nil: no spans
	binding bindingConfig
}

// Validate reports every invalid setting of cfg in one error, or nil.
func (cfg Config) Validate() error {
	_, err := cfg.WithDefaults()
	return err
}

// WithDefaults returns cfg with every zero field set to its default (the
// values New uses), or an error that lists every invalid setting. Stores
// that expire sessions themselves take their lifetimes from it.
func (cfg Config) WithDefaults() (Config, error) {
	var errs []error
	if cfg.CookieName == "" {
		cfg.CookieName = DefaultCookieName
		if cfg.InsecureCookie {
			cfg.CookieName = DefaultInsecureCookieName
		}
	}
	if !isToken(cfg.CookieName) {
		errs = append(errs, fmt.Errorf("cookie name %q: must be a non-empty HTTP token", cfg.CookieName))
	} else if cfg.InsecureCookie && hasSecurePrefix(cfg.CookieName) {
		errs = append(errs, fmt.Errorf("cookie name %q: the __Host- and __Secure- prefixes need a Secure cookie; choose another name or keep the cookie secure", cfg.CookieName))
	}
	switch cfg.SameSite {
	case SameSiteDefault:
		cfg.SameSite = SameSiteLax
	case SameSiteNone:
		if cfg.InsecureCookie {
			errs = append(errs, errors.New("SameSite=None needs a Secure session cookie: browsers reject it otherwise"))
		}
	case SameSiteLax, SameSiteStrict:
	default:
		errs = append(errs, fmt.Errorf("unknown SameSite mode %d", cfg.SameSite))
	}
	cfg.Lifetime = orDefault(cfg.Lifetime, DefaultLifetime)
	if cfg.Lifetime < time.Second {
		errs = append(errs, fmt.Errorf("session lifetime %v: must be at least 1s", cfg.Lifetime))
	}
	cfg.IdleTimeout = orDefault(cfg.IdleTimeout, min(DefaultIdleTimeout, cfg.Lifetime))
	if cfg.IdleTimeout < time.Second || cfg.IdleTimeout > cfg.Lifetime {
		errs = append(errs, fmt.Errorf("idle timeout %v: must be between 1s and the session lifetime (%v)", cfg.IdleTimeout, cfg.Lifetime))
	}
	cfg.MaxCookieLifetime = orDefault(cfg.MaxCookieLifetime, maxCookieAge)
	if cfg.MaxCookieLifetime < time.Second || cfg.MaxCookieLifetime > maxCookieAge {
		errs = append(errs, fmt.Errorf("max cookie lifetime %v: must be between 1s and 400 days (9600h)", cfg.MaxCookieLifetime))
	}
	for _, name := range cfg.PassThrough {
		if name == cfg.CookieName {
			errs = append(errs, fmt.Errorf("pass-through cookie %q: is the session cookie's name", name))
		} else if !isToken(name) {
			errs = append(errs, fmt.Errorf("pass-through cookie %q: must be a non-empty HTTP token", name))
		}
	}
	cfg.MaxCookiesPerDomain = orDefault(cfg.MaxCookiesPerDomain, DefaultMaxCookiesPerDomain)
	if cfg.MaxCookiesPerDomain < 50 {
		errs = append(errs, fmt.Errorf("max cookies per domain %d: must be at least 50 (RFC 6265bis)", cfg.MaxCookiesPerDomain))
	}
	cfg.MaxCookiesPerSession = orDefault(cfg.MaxCookiesPerSession, DefaultMaxCookiesPerSession)
	if cfg.MaxCookiesPerSession < cfg.MaxCookiesPerDomain {
		errs = append(errs, fmt.Errorf("max cookies per session %d: must be at least the per-domain limit (%d)", cfg.MaxCookiesPerSession, cfg.MaxCookiesPerDomain))
	}
	cfg.MaxBytesPerSession = orDefault(cfg.MaxBytesPerSession, DefaultMaxBytesPerSession)
	if cfg.MaxBytesPerSession < 8<<10 {
		errs = append(errs, fmt.Errorf("max bytes per session %d: must be at least 8192, room for the largest cookie", cfg.MaxBytesPerSession))
	}
	cfg.MaxSessions = orDefault(cfg.MaxSessions, DefaultMaxSessions)
	if cfg.MaxSessions < 1 {
		errs = append(errs, fmt.Errorf("max sessions %d: must be at least 1", cfg.MaxSessions))
	}
	if cfg.MaxMemory == 0 {
		cfg.MaxMemory = DefaultMaxMemory
	}
	if cfg.MaxMemory < minMaxMemory {
		errs = append(errs, fmt.Errorf("max memory %d bytes: must be at least 1 MiB", cfg.MaxMemory))
	}
	errs = cfg.bindingDefaults(errs)
	if err := errors.Join(errs...); err != nil {
		return cfg, fmt.Errorf("sessions: invalid configuration: %w", err)
	}
	return cfg, nil
}

// New returns a Cache configured by cfg, or an error that lists every
// invalid setting.
func New(cfg Config) (*Cache, error) {
	cfg, err := cfg.WithDefaults()
	if err != nil {
		return nil, err
	}
	if cfg.Store == nil {
		store, err := NewMemoryStoreLimits(cfg.MaxSessions, cfg.MaxMemory)
		if err != nil {
			return nil, err
		}
		cfg.Store = store
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}

	c := &Cache{
		cfg:   cfg,
		store: cfg.Store,
		limits: jarLimits{
			maxLifetime: int64(cfg.MaxCookieLifetime),
			perDomain:   cfg.MaxCookiesPerDomain,
			perSession:  cfg.MaxCookiesPerSession,
			bytes:       cfg.MaxBytesPerSession,
		},
		log:         cfg.Logger,
		now:         cfg.Now,
		lifetime:    int64(cfg.Lifetime),
		idleTimeout: int64(cfg.IdleTimeout),
		tracer:      NewTracer(cfg.TracerProvider),
	}
	c.binding = newBindingConfig(&cfg)
	if a, ok := cfg.Store.(interface {
		setAlive(func(*Session) bool)
	}); ok {
		a.setAlive(func(s *Session) bool { return c.endReason(s, c.now().UnixNano()) == notEnded })
	}
	flags := "; HttpOnly"
	if !cfg.InsecureCookie {
		flags += "; Secure"
	}
	flags += "; SameSite=" + cfg.SameSite.String()
	c.sessionCookieAttrs = "; Path=/; Max-Age=" + strconv.FormatInt(int64(cfg.Lifetime/time.Second), 10) + flags
	c.expiredCookie = cfg.CookieName + "=; Path=/; Max-Age=0" + flags
	c.warnConfig()
	return c, nil
}

// warnConfig logs settings that are valid but weaker than they look.
func (c *Cache) warnConfig() {
	if c.cfg.InsecureCookie {
		return
	}
	if !hasPrefixFold(c.cfg.CookieName, "__Host-") {
		// A sibling subdomain can set a cookie of the same name for the
		// parent domain; a __Host- cookie cannot be set that way.
		c.log.Warn("the session cookie lacks the __Host- prefix: a sibling subdomain can toss its own session cookie at this host; requests carrying two valid sessions are served without a session",
			slog.String("cookie", c.cfg.CookieName))
	}
	if c.cfg.TrustForwardedProto {
		c.log.Warn("TrustForwardedProto has no effect with a Secure session cookie: every request with a session came over https")
	}
}

func orDefault[T int | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// isToken reports whether s is a non-empty RFC 9110 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// CookieName returns the session cookie's name.
func (c *Cache) CookieName() string { return c.cfg.CookieName }

// Store returns the store that holds the sessions.
func (c *Cache) Store() Store { return c.store }

// Check reports whether the Cache can serve: whether its store is
// reachable, for stores that can be unreachable.
func (c *Cache) Check(ctx context.Context) error {
	if p, ok := c.store.(Pinger); ok {
		if err := p.Ping(ctx); err != nil {
			return fmt.Errorf("session store: %w", err)
		}
	}
	return nil
}

// Stats returns a snapshot of the Cache's counters.
func (c *Cache) Stats() Stats {
	s := c.stats.snapshot()
	s.Store = StoreStats{Sessions: -1, Bytes: -1}
	if r, ok := c.store.(StatsReporter); ok {
		s.Store = r.StoreStats()
		s.SessionsActive = s.Store.Sessions
		s.SessionsEnded[EndEvicted] += s.Store.Evictions
	}
	return s
}

// Request is what the engine needs to know about a browser's request.
type Request struct {
	// Scheme is the scheme the request arrived with ("http", "https").
	Scheme string
	// Host is the request's authority (Host header or :authority),
	// with or without a port.
	Host string
	// Path is the request target's path, with or without the query.
	Path string
	// Method is the request method; "" means GET.
	Method string
	// Cookies are the values of the request's Cookie header fields.
	Cookies []string
	// ForwardedProto is the X-Forwarded-Proto header, used only with
	// Config.TrustForwardedProto.
	ForwardedProto string
	// FetchSite, FetchMode and FetchDest are the Sec-Fetch-Site,
	// Sec-Fetch-Mode and Sec-Fetch-Dest headers, which tell whether the
	// request is cross-site and whether it is a top-level navigation.
	FetchSite, FetchMode, FetchDest string
}

// Response is what the engine needs to know about a backend's response.
type Response struct {
	// SetCookie are the Set-Cookie field values, in order.
	SetCookie []string
	// ClearSiteData are the Clear-Site-Data field values.
	ClearSiteData []string
	// CacheControl are the Cache-Control field values.
	CacheControl []string
	// User, Sid, Logout and Rotate are the values of the binding headers
	// (Config.UserHeader and the others), "" when absent.
	User, Sid, Logout, Rotate string
}

// ResponseEdit is how the proxy must change a backend's response.
type ResponseEdit struct {
	// RemoveSetCookie says to remove all of the backend's Set-Cookie
	// fields: their cookies are in the jar now.
	RemoveSetCookie bool
	// SetCookie are Set-Cookie field values for the browser, added after
	// the removal: the session cookie and pass-through cookies.
	SetCookie []string
	// CacheControl, when not empty, replaces the Cache-Control fields.
	CacheControl string
	// RemoveHeaders are lower-case names of fields to remove, always the
	// four binding headers (Cache.BindingHeaders): they never reach the
	// browser. The slice is shared: do not modify it.
	RemoveHeaders []string
}

// Exchange carries one request/response pair through the engine: Expand
// fills it in, Capture reads it. The zero value is ready for Expand.
type Exchange struct {
	// Cookie is the Cookie header value the backend must get when
	// RewriteCookie is set; when it is empty, the header is removed.
	// When RewriteCookie is not set, the request's Cookie header stays
	// as it is.
	Cookie        string
	RewriteCookie bool
	// Handle is the bound session's handle, for the backend in
	// Config.SessionHandleHeader; "" when the session is not bound or no
	// handle header is configured (the proxy then removes that header).
	Handle string

	origin   origin
	session  *Session
	stale    bool // the browser presented a session cookie that is not valid
	conflict bool // the browser presented two different valid sessions

	// What the exchange did, for tracing (see Stats): counts only.
	stats     ExchangeStats
	created   bool      // Capture created the session
	ended     bool      // the exchange ended a session, for endReason
	endReason EndReason // why, when ended
}

// HasSession reports whether the request belongs to a valid session.
func (x *Exchange) HasSession() bool { return x.session != nil }

// maxSessionCookies bounds the session cookies of one request that are
// looked up: a browser sends one, or a few when cookies were tossed from
// a parent domain.
const maxSessionCookies = 3

// browserCookie is one pair of the browser's Cookie header, byte-exact.
type browserCookie struct{ pair, name string }

// Expand prepares a browser's request for the backend. It finds the
// request's session from the session cookie, drops that cookie, and adds
// the jar's cookies that match the request. The result is in x. An error
// means the store failed; the request must not be forwarded.
func (c *Cache) Expand(ctx context.Context, r *Request, x *Exchange) error {
	*x = Exchange{origin: c.origin(r)}
	now := c.now().UnixNano()

	// One pass over the browser's cookies: session cookies aside, the
	// others kept (on the stack, for the usual few dozen) for the header.
	var candidates [maxSessionCookies]string
	var buf [16]browserCookie
	browser := buf[:0]
	n, sawSession, dropped := 0, false, false
	pairs := newCookiePairs(r.Cookies)
	for pair, name, ok := pairs.next(); ok; pair, name, ok = pairs.next() {
		if hasCTL(pair) {
			// No browser sends these, and no proxy may forward them.
			dropped = true
			continue
		}
		if name != c.cfg.CookieName {
			browser = append(browser, browserCookie{pair, name})
			continue
		}
		sawSession = true
		if n < len(candidates) {
			candidates[n] = trimWSP(pair[strings.IndexByte(pair, '=')+1:])
			n++
		}
	}
	if err := c.chooseSession(ctx, x, candidates[:n], now); err != nil {
		return err
	}
	x.stale = sawSession && x.session == nil && !x.conflict
	x.stats.UnknownSessionCookie = x.stale
	x.Cookie, x.RewriteCookie = c.cookieHeader(browser, x, now, sawSession || dropped)
	if c.binding.handleHeader != "" && x.session != nil {
		if b := x.session.binding.Load(); b != nil {
			x.Handle = b.Handle
		}
	}
	return nil
}

// chooseSession sets x.session to the valid session the request's
// session cookies name. Two different valid sessions mean a cookie was
// tossed at this host (from a sibling subdomain, when the name lacks
// __Host-): choosing either could let an attacker's session collect the
// victim's login, so the request gets none, and cannot create one.
func (c *Cache) chooseSession(ctx context.Context, x *Exchange, values []string, now int64) error {
	for i, value := range values {
		if slices.Contains(values[:i], value) {
			continue
		}
		s, err := c.findSession(ctx, x, value, now)
		switch {
		case err != nil:
			return err
		case s == nil:
		case x.session == nil:
			x.session = s
		case !x.session.id.Equal(s.id):
			x.conflict = true
		}
	}
	if x.conflict {
		x.session = nil
		c.stats.sessionConflicts.Add(1)
		c.log.LogAttrs(ctx, slog.LevelWarn, "request carries two different valid session cookies; serving it without a session",
			slog.String("host", x.origin.host))
	}
	return nil
}

// findSession returns the valid session a session cookie value names, or
// nil. It ends sessions found expired or idle, noting it in x.
func (c *Cache) findSession(ctx context.Context, x *Exchange, value string, now int64) (*Session, error) {
	id, ok := ParseID(value)
	if !ok {
		c.stats.unknownSessionIDs.Add(1)
		return nil, nil
	}
	var (
		s   *Session
		err error
	)
	if live, ok := c.store.(liveStore); ok {
		s = live.findAt(id, now)
	} else {
		x.stats.StoreRoundTrips++
		if s, err = c.store.Find(ctx, id); err != nil {
			return nil, fmt.Errorf("finding session: %w", err)
		}
	}
	if s == nil {
		c.stats.unknownSessionIDs.Add(1)
		return nil, nil
	}
	if reason := c.endReason(s, now); reason != notEnded {
		c.stats.unknownSessionIDs.Add(1)
		c.countRoundTrip(x)
		if err := c.store.Delete(ctx, id); err != nil {
			return nil, fmt.Errorf("ending session: %w", err)
		}
		c.stats.sessionsEnded[reason].Add(1)
		x.ended, x.endReason = true, reason
		c.log.LogAttrs(ctx, slog.LevelDebug, "session ended", slog.String("reason", reason.String()))
		return nil, nil
	}
	s.lastSeen.Store(now)
	return s, nil
}

// endReason says why s, found at now, has ended: EndExpired, EndIdle, or
// notEnded.
func (c *Cache) endReason(s *Session, now int64) EndReason {
	switch {
	case now >= s.created+c.lifetime:
		return EndExpired
	case now >= s.lastSeen.Load()+c.idleTimeout:
		return EndIdle
	}
	return notEnded
}

// cookieHeader builds the Cookie header for the backend: the jar's
// matching cookies, then the browser's other cookies except those the jar
// overrides and (with StripBrowserCookies) all but pass-through cookies.
// It reports false when the browser's header can go unchanged.
func (c *Cache) cookieHeader(browser []browserCookie, x *Exchange, now int64, changed bool) (string, bool) {
	s := x.session
	var idxBuf [16]int
	var idx []int
	if s != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		idx = s.match(&x.origin, now, idxBuf[:0])
	}
	size := 0
	x.stats.CookiesSent = len(idx)
	for _, i := range idx {
		size += len(s.cookies[i].pair) + 2
	}
	for j := range browser {
		if c.keepBrowserCookie(browser[j].name, s, idx) {
			size += len(browser[j].pair) + 2
		} else {
			browser[j].pair = ""
			changed = true
		}
	}
	if !changed && len(idx) == 0 {
		return "", false
	}
	if size == 0 {
		return "", true
	}
	var b strings.Builder
	b.Grow(size - 2)
	for _, i := range idx {
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		b.WriteString(s.cookies[i].pair)
	}
	for j := range browser {
		if browser[j].pair != "" {
			if b.Len() > 0 {
				b.WriteString("; ")
			}
			b.WriteString(browser[j].pair)
		}
	}
	return b.String(), true
}

// keepBrowserCookie reports whether a cookie the browser sent goes on to
// the backend: not when a jar cookie sent (idx) has its name, nor, with
// StripBrowserCookies, unless it is a pass-through cookie.
func (c *Cache) keepBrowserCookie(name string, s *Session, idx []int) bool {
	if c.cfg.StripBrowserCookies && !c.isPassThrough(name) {
		return false
	}
	for _, i := range idx {
		if s.cookies[i].Name() == name {
			return false
		}
	}
	return true
}

func (c *Cache) isPassThrough(name string) bool {
	for _, p := range c.cfg.PassThrough {
		if p == name {
			return true
		}
	}
	return false
}

// origin describes r as the jar sees it.
func (c *Cache) origin(r *Request) origin {
	var o origin
	var isIP bool
	o.host, isIP = canonicalHost(r.Host)
	o.path = r.Path
	if i := strings.IndexByte(o.path, '?'); i >= 0 {
		o.path = o.path[:i]
	}
	if i := strings.IndexByte(o.path, '#'); i >= 0 {
		o.path = o.path[:i]
	}
	o.secure = c.secureOrigin(r, o.host, isIP)
	o.crossSite = strings.EqualFold(trimWSP(r.FetchSite), "cross-site")
	dest := trimWSP(r.FetchDest)
	o.topLevelNav = strings.EqualFold(trimWSP(r.FetchMode), "navigate") &&
		(dest == "" || strings.EqualFold(dest, "document"))
	o.safeMethod = r.Method == "" || r.Method == http.MethodGet || r.Method == http.MethodHead
	return o
}

// secureOrigin reports whether the browser reached the proxy over a
// secure channel.
//
// A browser sends a Secure cookie only over a secure channel and keeps
// one only from a secure origin. So with a Secure session cookie, every
// request that carries a valid session came over https, and a session
// created from an insecure origin is one the browser drops: either way
// the origin counts as secure, whatever the last hop's scheme (TLS often
// ends at a load balancer in front of Envoy). Only with an insecure
// session cookie does the request's own scheme decide.
func (c *Cache) secureOrigin(r *Request, host string, isIP bool) bool {
	if !c.cfg.InsecureCookie {
		return true
	}
	scheme := r.Scheme
	if c.cfg.TrustForwardedProto && r.ForwardedProto != "" {
		// Each proxy appends its own; the first is the browser's.
		scheme, _, _ = strings.Cut(r.ForwardedProto, ",")
		scheme = trimWSP(scheme)
	}
	return strings.EqualFold(scheme, "https") || isLoopbackHost(host, isIP)
}

// Capture processes a backend's response to the request of x. Backend
// cookies go into the session's jar, creating the session if there is
// none yet; the returned edit says how to change the response for the
// browser. An error means the store failed: the response must not reach
// the browser, or backend cookies would leak or be lost.
func (c *Cache) Capture(ctx context.Context, x *Exchange, resp *Response) (ResponseEdit, error) {
	edit := ResponseEdit{RemoveHeaders: c.binding.removeHeaders}
	logout := clearsCookies(resp.ClearSiteData)
	binds := c.binding.on && (resp.User != "" || resp.Logout != "" || resp.Rotate != "")
	if len(resp.SetCookie) == 0 && !x.stale && !logout && !binds {
		return edit, nil
	}
	now := c.now().UnixNano()
	ended := false
	if binds && resp.Logout != "" && x.session != nil {
		if err := c.logoutFromResponse(ctx, x, resp.Logout); err != nil {
			return edit, err
		}
		ended = x.session == nil
		logout = false
	}
	if logout && x.session != nil {
		c.countRoundTrip(x)
		if err := c.store.Delete(ctx, x.session.id); err != nil {
			return edit, fmt.Errorf("ending session: %w", err)
		}
		c.stats.sessionsEnded[EndLogout].Add(1)
		x.session, ended = nil, true
		x.ended, x.endReason = true, EndLogout
	}

	edit.RemoveSetCookie = len(resp.SetCookie) > 0
	var ch Changes
	journal := &ch
	if _, live := c.store.(liveStore); live {
		journal = nil // changes to a live session are stored as they happen
	}
	s, created := c.captureCookies(ctx, x, resp.SetCookie, ended, now, journal, &edit)
	if created && len(s.cookies) == 0 {
		// Nothing was stored (every cookie deleted or rejected): no session.
		created, ch = false, Changes{}
	}
	ch.New = created
	if err := c.commit(ctx, x, s, created, &ch, journal != nil); err != nil {
		return ResponseEdit{}, err
	}
	rotated := false
	if binds && !ended && !x.conflict {
		target := x.session
		if created {
			target = s
		}
		if target != nil {
			var err error
			if rotated, err = c.bindOrRotate(ctx, x, target, created, resp); err != nil {
				return ResponseEdit{}, err
			}
		}
	}
	proxyCookie := false
	if rotated {
		edit.SetCookie = append(edit.SetCookie, c.cfg.CookieName+"="+x.session.id.CookieValue()+c.sessionCookieAttrs)
		proxyCookie = true
	}
	if created {
		x.session, x.stale, x.created = s, false, true
		edit.SetCookie = append(edit.SetCookie, c.cfg.CookieName+"="+s.id.CookieValue()+c.sessionCookieAttrs)
		proxyCookie = true
	} else if !rotated && (x.stale || ended) {
		edit.SetCookie = append(edit.SetCookie, c.expiredCookie)
		x.stale, proxyCookie = false, true
	}
	if proxyCookie || edit.RemoveSetCookie {
		// The response set cookies for one browser: no shared cache may
		// serve it to another, whether it now carries the session cookie
		// or nothing at all.
		edit.CacheControl = privateCacheControl(resp.CacheControl)
	}
	return edit, nil
}

// captureCookies stores the cookies of a response's Set-Cookie lines in
// the session of x, holding its lock, or else in a new session, which it
// returns with created set. Pass-through cookies go to edit instead. The
// session cookie's name is refused, and so is every cookie when the
// response ended the session (ended) or the request carried two sessions.
// Changes are recorded in journal when it is not nil.
func (c *Cache) captureCookies(ctx context.Context, x *Exchange, lines []string, ended bool, now int64, journal *Changes, edit *ResponseEdit) (s *Session, created bool) {
	s = x.session
	if s != nil && len(lines) > 0 {
		// A live session rotated meanwhile stores into its successor.
		s = lockCurrent(s)
		defer s.mu.Unlock()
	}
	for _, line := range lines {
		sc, reason := parseSetCookie(line)
		switch {
		case reason != RejectNone:
		case c.isPassThrough(sc.name):
			edit.SetCookie = append(edit.SetCookie, line)
			c.stats.cookiesPassed.Add(1)
			x.stats.CookiesPassed++
			continue
		case sc.name == c.cfg.CookieName:
			reason = RejectSessionName
		case ended:
			reason = RejectSessionEnded
		case x.conflict:
			reason = RejectSessionConflict
		}
		if reason != RejectNone {
			c.reject(ctx, &x.stats, reason, sc.name)
			continue
		}
		if s == nil {
			// A new session is not visible to other exchanges until
			// it is committed, so it needs no lock.
			s, created = newSession(newID(), now), true
		}
		c.storeCookie(ctx, &x.stats, s, &sc, &x.origin, now, journal)
	}
	if st, ok := c.store.(sizeTracker); ok && !created && s != nil && len(lines) > 0 {
		st.resized(s) // a live session's jar changed size; s.mu is held
	}
	return s, created
}

// commit stores a new session, or the journal of an existing one's
// changes when the store keeps one (journaled) and there are any.
func (c *Cache) commit(ctx context.Context, x *Exchange, s *Session, created bool, ch *Changes, journaled bool) error {
	switch {
	case created:
		c.countRoundTrip(x)
		if err := c.store.Commit(ctx, s, ch); err != nil {
			return fmt.Errorf("creating session: %w", err)
		}
		c.stats.sessionsCreated.Add(1)
	case s != nil && journaled && !ch.Empty():
		c.countRoundTrip(x)
		if err := c.store.Commit(ctx, s, ch); err != nil {
			return fmt.Errorf("saving session: %w", err)
		}
	}
	return nil
}

// storeCookie stores one parsed backend cookie in s (locked) and counts
// and logs the outcome, in the exchange's xs too.
func (c *Cache) storeCookie(ctx context.Context, xs *ExchangeStats, s *Session, sc *setCookie, o *origin, now int64, ch *Changes) {
	res := s.setCookie(sc, o, now, &c.limits, ch)
	switch {
	case res.reject != RejectNone:
		c.reject(ctx, xs, res.reject, sc.name)
	case res.deleted:
		c.stats.cookiesDeleted.Add(1)
		xs.CookiesDeleted++
	case res.stored:
		c.stats.cookiesStored.Add(1)
		xs.CookiesCaptured++
	}
	if res.evicted > 0 {
		c.stats.cookiesEvicted.Add(uint64(res.evicted))
		xs.CookiesEvicted += res.evicted
		c.log.LogAttrs(ctx, slog.LevelInfo, "evicted backend cookies to stay within the session limits",
			slog.Int("count", res.evicted))
	}
}

// reject counts and logs a rejected Set-Cookie, without its value.
func (c *Cache) reject(ctx context.Context, xs *ExchangeStats, reason RejectReason, name string) {
	c.stats.cookiesRejected[reason].Add(1)
	xs.reject(reason)
	c.log.LogAttrs(ctx, slog.LevelInfo, "rejected backend cookie",
		slog.String("reason", reason.String()), slog.String("cookie", name))
}

// countRoundTrip counts a call to a store that is not in-process: one
// network round trip (the memory store's calls are not counted).
func (c *Cache) countRoundTrip(x *Exchange) {
	if _, live := c.store.(liveStore); !live {
		x.stats.StoreRoundTrips++
	}
}
