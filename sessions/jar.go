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
func (s *Session) setCookie(sc *setCookie, o *origin, now int64, lim *jarLimits, ch *Changes) storeResult {
	if o.host == "" {
		return storeResult{reject: RejectNoHost}
	}
	if sc.name == "" && hasSecurePrefix(sc.value) {
		return storeResult{reject: RejectPrefix}
	}

	c := Cookie{created: now, expires: noExpiry, accessed: unixSeconds(now), sameSite: sc.sameSite}
	switch {
	case sc.hasMaxAge:
		c.flags |= flagPersistent
		if sc.maxAge <= 0 {
			c.expires = 0
		} else {
			c.expires = now + min(sc.maxAge, lim.maxLifetime/int64(time.Second))*int64(time.Second)
		}
	case sc.hasExpires:
		c.flags |= flagPersistent
		c.expires = now + lim.maxLifetime
		switch {
		case sc.expires.Before(time.Unix(0, 0)):
			c.expires = 0 // UnixNano is undefined before 1678
		case sc.expires.Before(time.Unix(0, c.expires)):
			c.expires = sc.expires.UnixNano()
		}
	}

	domain := sc.domain
	if domain != "" {
		if !isASCII(domain) {
			return storeResult{reject: RejectDomainNotASCII}
		}
		if ps, _ := publicsuffix.PublicSuffix(domain); ps == domain {
			if domain != o.host {
				return storeResult{reject: RejectPublicSuffix}
			}
			domain = ""
		}
	}
	if domain != "" {
		if !domainMatch(o.host, domain) {
			return storeResult{reject: RejectDomainMismatch}
		}
	} else {
		c.flags |= flagHostOnly
		domain = o.host
	}
	path := sc.path
	if path == "" {
		path = defaultPath(o.path)
	}
	if len(path) > maxAttrValueBytes {
		// A Path attribute is at most 1024 bytes (§5.6), but the default
		// path of a request path is not bounded: a crafted long request
		// path would cost the store that many bytes per cookie. No real
		// application has such a directory.
		return storeResult{reject: RejectPathTooLong}
	}
	if sc.secure {
		c.flags |= flagSecure
		if !o.secure {
			return storeResult{reject: RejectSecureFromInsecure}
		}
	} else if !o.secure && s.shadowsSecure(sc.name, domain, path) {
		return storeResult{reject: RejectOverwritesSecure}
	}
	if sc.httpOnly {
		c.flags |= flagHTTPOnly
	}
	if sc.sameSite == SameSiteNone && !sc.secure {
		// Browsers ignore these (§5.7): sent cross-site without Secure,
		// the cookie would ride along on plain-http cross-site requests.
		return storeResult{reject: RejectSameSiteNoneInsecure}
	}
	if sc.sameSite != SameSiteNone && o.crossSite && !o.topLevelNav {
		return storeResult{reject: RejectCrossSite}
	}
	if hasPrefixFold(sc.name, "__Secure-") && !sc.secure {
		return storeResult{reject: RejectPrefix}
	}
	if hasPrefixFold(sc.name, "__Host-") &&
		(!sc.secure || c.flags&flagHostOnly == 0 || !sc.hasPath || path != "/") {
		return storeResult{reject: RejectPrefix}
	}

	if sc.name == "" {
		c.pair = strings.Clone(sc.value)
	} else {
		c.pair = sc.name + "=" + sc.value
		c.nameLen = uint16(len(sc.name))
	}
	c.scope = unique.Make(scope{domain: domain, path: path})

	replace := -1
	for i := range s.cookies {
		if s.cookies[i].sameIdentity(&c) {
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
			ch.delete(&c)
		}
		return storeResult{deleted: true}
	}
	if replace >= 0 {
		// Same identity, so same path and creation time: same place.
		s.cookies[replace] = c
	} else {
		// Creation times order cookies of equal path length, so they must
		// be unique within the jar.
		for i := range s.cookies {
			c.created = max(c.created, s.cookies[i].created+1)
		}
		s.insert(c)
	}
	if ch != nil {
		ch.store(&c)
	}
	return storeResult{stored: true, evicted: s.enforceLimits(domain, now, lim, ch)}
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
