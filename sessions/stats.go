package sessions

import "sync/atomic"

// RejectReason says why a backend's Set-Cookie was not stored.
type RejectReason uint8

// Reasons for rejecting a Set-Cookie. Each follows a rule of RFC 6265bis
// §5.6–5.7 or of proxysession's session policy.
const (
	RejectNone                 RejectReason = iota
	RejectControlChar                       // the line holds a control character
	RejectTooLarge                          // name and value exceed 4096 bytes
	RejectEmpty                             // empty name and value
	RejectNoHost                            // the request had no usable host
	RejectDomainNotASCII                    // non-ASCII Domain attribute
	RejectPublicSuffix                      // Domain is a public suffix
	RejectDomainMismatch                    // Domain does not cover the request host
	RejectSecureFromInsecure                // Secure cookie set over an insecure origin
	RejectOverwritesSecure                  // insecure origin shadowing a Secure cookie
	RejectPrefix                            // __Secure-/__Host- prefix rules not met
	RejectCrossSite                         // SameSite cookie set by a cross-site request
	RejectSessionName                       // uses the proxy's session cookie name
	RejectSessionEnded                      // set in the response that ended the session
	RejectSameSiteNoneInsecure              // SameSite=None without Secure (§5.7 step 16)
	RejectSessionConflict                   // the request carried two different valid sessions
	RejectPathTooLong                       // the stored path would exceed 1024 bytes
	numRejectReasons
)

var rejectNames = [numRejectReasons]string{
	"none", "control_char", "too_large", "empty", "no_host", "domain_not_ascii",
	"public_suffix", "domain_mismatch", "secure_from_insecure", "overwrites_secure",
	"prefix", "cross_site", "session_cookie_name", "session_ended",
	"samesite_none_insecure", "session_conflict", "path_too_long",
}

// String returns the reason as a metric label value, e.g. "public_suffix".
func (r RejectReason) String() string {
	if r < numRejectReasons {
		return rejectNames[r]
	}
	return "unknown"
}

// EndReason says why a session ended.
type EndReason uint8

// Reasons a session ends.
const (
	EndExpired     EndReason = iota // absolute lifetime reached
	EndIdle                         // idle timeout reached
	EndEvicted                      // pushed out of a full memory store
	EndLogout                       // the backend sent Clear-Site-Data: "cookies"
	EndUserLogout                   // the backend ended every session of the user (LogoutHeader)
	EndAdmin                        // ended by an operator (Cache.EndUserSessions and the like)
	EndBackchannel                  // ended by the identity provider (back-channel logout)
	numEndReasons
)

// notEnded is no EndReason: the session goes on. It is not counted, and
// its String is "unknown".
const notEnded = numEndReasons

var endNames = [numEndReasons]string{"expired", "idle", "evicted", "logout", "user_logout", "admin", "backchannel"}

// String returns the reason as a metric label value, e.g. "idle".
func (r EndReason) String() string {
	if r < numEndReasons {
		return endNames[r]
	}
	return "unknown"
}

// StoreStats are a Store's own counters, for stores that keep them
// (StatsReporter).
type StoreStats struct {
	// Sessions is the number of sessions held, or -1 when the store
	// cannot count them cheaply (a shared store).
	Sessions int
	// Bytes is the estimated heap of the sessions held (the memory
	// store's byte budget), or -1.
	Bytes int64
	// Evictions counts sessions pushed out to make room.
	Evictions uint64
	// Failures counts operations that failed (the store was unreachable
	// or timed out): the requests concerned got 503.
	Failures uint64
	// Undecryptable counts records that failed authentication (tampered
	// with, or corrupt) and were ignored.
	Undecryptable uint64
	// Refused counts cookies the store itself refused to keep, enforcing
	// the per-session limits on writes that raced each other.
	Refused uint64
}

// StatsReporter is implemented by stores that count their own events;
// Cache.Stats includes them.
type StatsReporter interface {
	StoreStats() StoreStats
}

// Stats is a snapshot of a Cache's counters since it was created.
type Stats struct {
	SessionsCreated uint64
	// SessionsEnded has an entry for every EndReason.
	SessionsEnded map[EndReason]uint64
	// SessionsActive is the number of sessions the store holds, or -1
	// when the store cannot count them.
	SessionsActive int
	// Store are the store's own counters (all zero, Sessions and Bytes
	// -1, for a store that is not a StatsReporter).
	Store StoreStats
	// UnknownSessionIDs counts session cookies presented with an id that
	// is malformed, unknown, evicted or expired.
	UnknownSessionIDs uint64
	// SessionConflicts counts requests that carried two different valid
	// session cookies and were served without a session.
	SessionConflicts uint64
	CookiesStored    uint64 // backend cookies stored or replaced
	CookiesDeleted   uint64 // backend cookies deleted by the backend (expired on arrival)
	CookiesEvicted   uint64 // cookies pushed out by the per-session limits
	CookiesPassed    uint64 // pass-through cookies sent on to the browser
	// Rotations counts session ids replaced by new ones (a login, or the
	// backend's RotateHeader).
	Rotations uint64
	// CookiesRejected has an entry for every RejectReason but RejectNone.
	CookiesRejected map[RejectReason]uint64
}

// counters are the live, concurrently updated values behind Stats.
type counters struct {
	sessionsCreated   atomic.Uint64
	sessionsEnded     [numEndReasons]atomic.Uint64
	unknownSessionIDs atomic.Uint64
	sessionConflicts  atomic.Uint64
	cookiesStored     atomic.Uint64
	cookiesDeleted    atomic.Uint64
	cookiesEvicted    atomic.Uint64
	cookiesPassed     atomic.Uint64
	rotations         atomic.Uint64
	cookiesRejected   [numRejectReasons]atomic.Uint64
}

func (c *counters) snapshot() Stats {
	s := Stats{
		SessionsCreated:   c.sessionsCreated.Load(),
		SessionsEnded:     make(map[EndReason]uint64, numEndReasons),
		SessionsActive:    -1,
		UnknownSessionIDs: c.unknownSessionIDs.Load(),
		SessionConflicts:  c.sessionConflicts.Load(),
		CookiesStored:     c.cookiesStored.Load(),
		CookiesDeleted:    c.cookiesDeleted.Load(),
		CookiesEvicted:    c.cookiesEvicted.Load(),
		CookiesPassed:     c.cookiesPassed.Load(),
		Rotations:         c.rotations.Load(),
		CookiesRejected:   make(map[RejectReason]uint64, numRejectReasons-1),
	}
	for r := range numEndReasons {
		s.SessionsEnded[r] = c.sessionsEnded[r].Load()
	}
	for r := RejectNone + 1; r < numRejectReasons; r++ {
		s.CookiesRejected[r] = c.cookiesRejected[r].Load()
	}
	return s
}
