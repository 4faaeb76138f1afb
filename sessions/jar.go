package sessions

import (
	"net/netip"
	"strings"
	"time"
	"unique"

	"golang.org/x/net/idna"
	"golang.org/x/net/publicsuffix"
)

// maxCookieAge is the longest lifetime a cookie may have (RFC 6265bis §5.5).
const maxCookieAge = DefaultMaxCookieLifetime

// origin is where a request went and how, as the jar sees it.
type origin struct {
	host   string // canonical request host; "" when the request had none
	path   string // request path, without the query
	secure bool   // the browser-facing connection is secure
	// SameSite context from the Fetch Metadata headers.
	crossSite   bool // Sec-Fetch-Site: cross-site
	topLevelNav bool // navigates a top-level document
	safeMethod  bool // GET or HEAD
}

// jarLimits bound one session's jar.
type jarLimits struct {
	maxLifetime int64 // nanoseconds, at most maxCookieAge
	perDomain   int
	perSession  int
	bytes       int
}

// storeResult is the outcome of storing one Set-Cookie.
type storeResult struct {
	reject  RejectReason // RejectNone unless the cookie was rejected
	stored  bool         // added or replaced a cookie
	deleted bool         // the cookie arrived expired: it deletes its namesake
	evicted int          // cookies pushed out by the limits
}

// setCookie applies the storage model of RFC 6265bis §5.7 to one parsed
// Set-Cookie received from o at now (UnixNano). Changes go to ch when it
// is not nil. The caller holds s.mu.
//
// The steps follow the RFC's order, which decides the reason a cookie
// that breaks several rules is rejected for: the cookie's expiry, its
// domain, its path, the rules of Secure, SameSite and the name prefixes,
// and storage.
func (s *Session) setCookie(sc *setCookie, o *origin, now int64, lim *jarLimits, ch *Changes) storeResult {
	if o.host == "" {
		return storeResult{reject: RejectNoHost}
	}
	if sc.name == "" && hasSecurePrefix(sc.value) {
		return storeResult{reject: RejectPrefix}
	}
	c := Cookie{created: now, accessed: unixSeconds(now), sameSite: sc.sameSite}
	c.expires, c.flags = cookieExpiry(sc, now, lim.maxLifetime)
	domain, hostOnly, reject := cookieDomain(sc.domain, o.host)
	if reject != RejectNone {
		return storeResult{reject: reject}
	}
	path, reject := cookiePath(sc, o.path)
	if reject != RejectNone {
		return storeResult{reject: reject}
	}
	if reject := s.checkSecure(sc, o, domain, path); reject != RejectNone {
		return storeResult{reject: reject}
	}
	if reject := checkSameSite(sc, o); reject != RejectNone {
		return storeResult{reject: reject}
	}
	if reject := checkPrefixes(sc, hostOnly, path); reject != RejectNone {
		return storeResult{reject: reject}
	}
	if hostOnly {
		c.flags |= flagHostOnly
	}
	if sc.secure {
		c.flags |= flagSecure
	}
	if sc.httpOnly {
		c.flags |= flagHTTPOnly
	}
	if sc.name == "" {
		c.pair = strings.Clone(sc.value)
	} else {
		c.pair = sc.name + "=" + sc.value
		c.nameLen = uint16(len(sc.name))
	}
	c.scope = unique.Make(scope{domain: domain, path: path})
	return s.put(&c, now, lim, ch)
}

// cookieExpiry returns the expiry time (UnixNano) of a cookie that sc
// sets at now, and flagPersistent if Max-Age or Expires gave it one:
// Max-Age wins over Expires, and both are capped at maxLifetime (§5.5).
// A cookie without either expires at noExpiry, when the session ends.
func cookieExpiry(sc *setCookie, now, maxLifetime int64) (int64, cookieFlags) {
	switch {
	case sc.hasMaxAge:
		if sc.maxAge <= 0 {
			return 0, flagPersistent
		}
		return now + min(sc.maxAge, maxLifetime/int64(time.Second))*int64(time.Second), flagPersistent
	case sc.hasExpires:
		expires := now + maxLifetime
		switch {
		case sc.expires.Before(time.Unix(0, 0)):
			expires = 0 // UnixNano is undefined before 1678
		case sc.expires.Before(time.Unix(0, expires)):
			expires = sc.expires.UnixNano()
		}
		return expires, flagPersistent
	}
	return noExpiry, 0
}

// cookieDomain returns the domain of a cookie whose Domain attribute is
// attr, set by a response for host, and whether it is host-only: a
// Domain must be ASCII, must not be a public suffix other than the host
// itself (which makes the cookie host-only), and must domain-match the
// host. Without one, the cookie is host-only.
func cookieDomain(attr, host string) (domain string, hostOnly bool, reject RejectReason) {
	if attr != "" {
		if !isASCII(attr) {
			return "", false, RejectDomainNotASCII
		}
		if ps, _ := publicsuffix.PublicSuffix(attr); ps == attr {
			if attr != host {
				return "", false, RejectPublicSuffix
			}
			attr = ""
		}
	}
	if attr == "" {
		return host, true, RejectNone
	}
	if !domainMatch(host, attr) {
		return "", false, RejectDomainMismatch
	}
	return attr, false, RejectNone
}

// cookiePath returns the path of a cookie: its Path attribute, or the
// default path of the request path.
func cookiePath(sc *setCookie, requestPath string) (string, RejectReason) {
	path := sc.path
	if path == "" {
		path = defaultPath(requestPath)
	}
	if len(path) > maxAttrValueBytes {
		// A Path attribute is at most 1024 bytes (§5.6), but the default
		// path of a request path is not bounded: a crafted long request
		// path would cost the store that many bytes per cookie. No real
		// application has such a directory.
		return "", RejectPathTooLong
	}
	return path, RejectNone
}

// checkSecure applies the rules of the Secure attribute: a Secure cookie
// only from a secure origin, and no cookie from an insecure one that
// would shadow a Secure cookie (§5.7 step 16).
func (s *Session) checkSecure(sc *setCookie, o *origin, domain, path string) RejectReason {
	switch {
	case sc.secure && !o.secure:
		return RejectSecureFromInsecure
	case !sc.secure && !o.secure && s.shadowsSecure(sc.name, domain, path):
		return RejectOverwritesSecure
	}
	return RejectNone
}

// checkSameSite applies the rules of the SameSite attribute: SameSite=None
// needs Secure, and a cross-site request other than a top-level
// navigation sets no SameSite cookie.
func checkSameSite(sc *setCookie, o *origin) RejectReason {
	switch {
	case sc.sameSite == SameSiteNone && !sc.secure:
		// Browsers ignore these (§5.7): sent cross-site without Secure,
		// the cookie would ride along on plain-http cross-site requests.
		return RejectSameSiteNoneInsecure
	case sc.sameSite != SameSiteNone && o.crossSite && !o.topLevelNav:
		return RejectCrossSite
	}
	return RejectNone
}

// checkPrefixes applies the rules of the cookie name prefixes: a
// __Secure- cookie is Secure, and a __Host- cookie is Secure, host-only
// and set with Path=/.
func checkPrefixes(sc *setCookie, hostOnly bool, path string) RejectReason {
	switch {
	case hasPrefixFold(sc.name, "__Secure-") && !sc.secure:
		return RejectPrefix
	case hasPrefixFold(sc.name, "__Host-") && (!sc.secure || !hostOnly || !sc.hasPath || path != "/"):
		return RejectPrefix
	}
	return RejectNone
}

// put stores c in the jar (§5.7 steps 23 and 24). It replaces the cookie
// of the same name, domain and path, keeping its creation time, or
// deletes that cookie if c arrived expired; a new cookie goes in at its
// place in retrieval order. Then the jar's limits are enforced.
func (s *Session) put(c *Cookie, now int64, lim *jarLimits, ch *Changes) storeResult {
	replace := -1
	for i := range s.cookies {
		if s.cookies[i].sameIdentity(c) {
			replace = i
			c.created = s.cookies[i].created
			break
		}
	}
	if c.expired(now) {
		// An expired cookie deletes its namesake. The deletion is
		// recorded even when this copy of the jar has no namesake: a
		// parallel exchange may have stored one.
		if replace >= 0 {
			s.removeAt(replace)
		}
		if ch != nil {
			ch.delete(c)
		}
		return storeResult{deleted: true}
	}
	if replace >= 0 {
		// Same identity, so same path and creation time: same place.
		s.cookies[replace] = *c
	} else {
		// Creation times order cookies of equal path length, so they must
		// be unique within the jar.
		for i := range s.cookies {
			c.created = max(c.created, s.cookies[i].created+1)
		}
		s.insert(*c)
	}
	if ch != nil {
		ch.store(c)
	}
	return storeResult{stored: true, evicted: s.enforceLimits(c.Domain(), now, lim, ch)}
}

// shadowsSecure reports whether a non-secure cookie with this name, domain
// and path would overlay an existing Secure cookie (§5.7 step 16).
func (s *Session) shadowsSecure(name, domain, path string) bool {
	for i := range s.cookies {
		c := &s.cookies[i]
		if c.flags&flagSecure == 0 || c.Name() != name {
			continue
		}
		sc := c.scope.Value()
		if (domainMatch(domain, sc.domain) || domainMatch(sc.domain, domain)) &&
			pathMatch(path, sc.path) {
			return true
		}
	}
	return false
}

// insert adds c at its place in retrieval order. The new slice has exactly
// the room it needs: jars are many and small, and grow rarely.
func (s *Session) insert(c Cookie) {
	i := len(s.cookies)
	for j := range s.cookies {
		if retrievalOrder(c, s.cookies[j]) < 0 {
			i = j
			break
		}
	}
	cookies := make([]Cookie, len(s.cookies)+1)
	copy(cookies, s.cookies[:i])
	cookies[i] = c
	copy(cookies[i+1:], s.cookies[i:])
	s.cookies = cookies
}

func (s *Session) removeAt(i int) {
	copy(s.cookies[i:], s.cookies[i+1:])
	s.cookies[len(s.cookies)-1] = Cookie{}
	s.cookies = s.cookies[:len(s.cookies)-1]
}

// enforceLimits removes expired cookies, then evicts the least recently
// used cookies beyond the per-domain, per-session and byte limits. It
// returns how many cookies it evicted (expired ones do not count).
//
// Both are purges, not deletions: they act on this exchange's copy of the
// jar, so the journal lets a store delete only the records this copy
// read, never a parallel exchange's fresher one.
func (s *Session) enforceLimits(domain string, now int64, lim *jarLimits, ch *Changes) int {
	for i := 0; i < len(s.cookies); {
		if s.cookies[i].expired(now) {
			if ch != nil {
				ch.purge(&s.cookies[i], s.revisions)
			}
			s.removeAt(i)
			continue
		}
		i++
	}
	evicted, bytes := 0, s.bytes()
	evict := func(inDomain bool) {
		victim := -1
		for i := range s.cookies {
			c := &s.cookies[i]
			if inDomain && c.Domain() != domain {
				continue
			}
			if victim < 0 || c.accessed < s.cookies[victim].accessed ||
				(c.accessed == s.cookies[victim].accessed && c.created < s.cookies[victim].created) {
				victim = i
			}
		}
		if ch != nil {
			ch.purge(&s.cookies[victim], s.revisions)
		}
		bytes -= s.cookies[victim].size()
		s.removeAt(victim)
		evicted++
	}
	for s.countDomain(domain) > lim.perDomain {
		evict(true)
	}
	for len(s.cookies) > lim.perSession {
		evict(false)
	}
	for bytes > lim.bytes && len(s.cookies) > 0 {
		evict(false)
	}
	return evicted
}

func (s *Session) countDomain(domain string) int {
	n := 0
	for i := range s.cookies {
		if s.cookies[i].Domain() == domain {
			n++
		}
	}
	return n
}

func (s *Session) bytes() int {
	n := 0
	for i := range s.cookies {
		n += s.cookies[i].size()
	}
	return n
}

// match appends to idx the positions of the cookies to send to o at now,
// in the order to send them (§5.8.3), and marks them as accessed. The
// caller holds s.mu.
func (s *Session) match(o *origin, now int64, idx []int) []int {
	if o.host == "" {
		return idx
	}
	nowSec := unixSeconds(now)
	for i := range s.cookies {
		c := &s.cookies[i]
		if c.expired(now) || (c.flags&flagSecure != 0 && !o.secure) {
			continue
		}
		if c.sameSite != SameSiteNone && o.crossSite &&
			(c.sameSite == SameSiteStrict || !o.topLevelNav || !o.safeMethod) {
			continue
		}
		sc := c.scope.Value()
		if c.flags&flagHostOnly != 0 {
			if o.host != sc.domain {
				continue
			}
		} else if !domainMatch(o.host, sc.domain) {
			continue
		}
		if !pathMatch(o.path, sc.path) {
			continue
		}
		if c.accessed != nowSec {
			c.accessed = nowSec
		}
		idx = append(idx, i)
	}
	return idx
}

func unixSeconds(ns int64) uint32 { return uint32(ns / int64(time.Second)) }

// domainMatch implements "domain-matches" (§5.1.3): host is domain, or a
// name below it; IP addresses only match themselves.
func domainMatch(host, domain string) bool {
	if host == domain {
		return true
	}
	return len(host) > len(domain) && strings.HasSuffix(host, domain) &&
		host[len(host)-len(domain)-1] == '.' && !isIPAddress(host)
}

// pathMatch implements "path-match" (§5.1.4).
func pathMatch(requestPath, cookiePath string) bool {
	if !strings.HasPrefix(requestPath, cookiePath) {
		return false
	}
	return len(requestPath) == len(cookiePath) || cookiePath[len(cookiePath)-1] == '/' ||
		requestPath[len(cookiePath)] == '/'
}

// defaultPath implements the default-path of a request path (§5.1.4).
func defaultPath(p string) string {
	if p == "" || p[0] != '/' {
		return "/"
	}
	i := strings.LastIndexByte(p, '/')
	if i == 0 {
		return "/"
	}
	return p[:i]
}

// canonicalHost returns the canonical form (§5.1.2) of the host in an
// HTTP authority ("host:port", "[v6]:port"): lower case, without port and
// brackets, IDNA A-labels. It returns "" for an unusable authority.
//
// A host longer than a DNS name can be (253 bytes) is unusable: no
// browser can have sent it, and a crafted one would cost the store its
// length in every host-only cookie.
func canonicalHost(authority string) (host string, isIP bool) {
	if len(authority) > maxAuthorityBytes {
		return "", false // without spending IDNA's time on it
	}
	// Fast path: a lower-case ASCII name or IPv4 address, maybe with a port.
	host = authority
	for i := 0; i < len(authority); i++ {
		if c := authority[i]; !canonicalHostByte[c] {
			if c != ':' || i == 0 || !allDigits(authority[i+1:]) {
				return slowCanonicalHost(authority)
			}
			host = authority[:i]
			break
		}
	}
	if host == "" || len(host) > maxHostBytes {
		return "", false
	}
	return host, isIPAddress(host)
}

// Bounds of a usable authority. maxHostBytes is the longest DNS name
// (RFC 1035 §2.3.4, without the final dot); maxAuthorityBytes leaves room
// for the longer spellings that canonicalisation shortens (Unicode
// labels, brackets and port), and bounds the work spent on junk.
const (
	maxHostBytes      = 253
	maxAuthorityBytes = 1024
)

var canonicalHostByte = func() (t [256]bool) {
	for _, c := range []byte("abcdefghijklmnopqrstuvwxyz0123456789-._") {
		t[c] = true
	}
	return t
}()

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return false
		}
	}
	return true
}

// slowCanonicalHost handles the rest: upper case, IPv6, IDNA, junk.
func slowCanonicalHost(authority string) (host string, isIP bool) {
	host = authority
	if strings.HasPrefix(host, "[") {
		end := strings.IndexByte(host, ']')
		if end < 0 {
			return "", false
		}
		host = host[1:end]
		if _, err := netip.ParseAddr(host); err != nil || len(host) > maxHostBytes {
			return "", false // a zone (fe80::1%eth0) can be of any length
		}
		return lowerASCII(host), true
	}
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		if strings.IndexByte(host[:i], ':') >= 0 {
			return "", false // an IPv6 address must be bracketed
		}
		host = host[:i]
	}
	if host == "" {
		return "", false
	}
	if !isASCII(host) {
		var err error
		if host, err = idna.Lookup.ToASCII(host); err != nil {
			return "", false
		}
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; c <= ' ' || c == 0x7f || strings.IndexByte(`"/;<>@\`, c) >= 0 {
			return "", false
		}
	}
	if len(host) > maxHostBytes {
		return "", false
	}
	host = lowerASCII(host)
	return host, isIPAddress(host)
}

func isIPAddress(host string) bool {
	if host == "" {
		return false
	}
	if c := host[len(host)-1]; !isDigit(c) && !strings.Contains(host, ":") {
		return false // cheap test first: IPv4 addresses end in a digit
	}
	_, err := netip.ParseAddr(host)
	return err == nil
}

// isLoopbackHost reports whether browsers treat host as a secure context
// even over http: localhost names and loopback addresses.
func isLoopbackHost(host string, isIP bool) bool {
	if isIP {
		a, err := netip.ParseAddr(host)
		return err == nil && a.IsLoopback()
	}
	return host == "localhost" || strings.HasSuffix(host, ".localhost")
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

func hasSecurePrefix(s string) bool {
	return hasPrefixFold(s, "__Secure-") || hasPrefixFold(s, "__Host-")
}
