package sessions

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Session is one user's proxy-side session: its id, its age and its jar of
// backend cookies. A Session is safe for concurrent use.
//
// Sessions come from a Store. The memory store hands every exchange of a
// session the same live *Session; a store that serialises sessions hands
// each exchange its own copy and writes back the Changes.
type Session struct {
	id       ID
	created  int64        // UnixNano
	lastSeen atomic.Int64 // UnixNano of the last request in the session
	mu       sync.Mutex
	cookies  []Cookie // in retrieval order: longest path first, then oldest
}

// newSession returns an empty session created at now.
func newSession(id ID, now int64) *Session {
	s := &Session{id: id, created: now}
	s.lastSeen.Store(now)
	return s
}

// RestoreSession rebuilds a session that a Store serialised: its id, when
// it was created and last seen, and its cookies (decoded with
// Cookie.UnmarshalBinary, in any order).
func RestoreSession(id ID, created, lastSeen time.Time, cookies []Cookie) *Session {
	s := newSession(id, created.UnixNano())
	s.lastSeen.Store(lastSeen.UnixNano())
	s.cookies = slices.Clone(cookies)
	slices.SortStableFunc(s.cookies, retrievalOrder)
	return s
}

// ID returns the session's id.
func (s *Session) ID() ID { return s.id }

// Created returns when the session was created.
func (s *Session) Created() time.Time { return time.Unix(0, s.created) }

// LastSeen returns when the session last served a request.
func (s *Session) LastSeen() time.Time { return time.Unix(0, s.lastSeen.Load()) }

// Cookies returns a copy of the cookies in the session's jar, in the order
// they are sent: longest path first, then oldest first.
func (s *Session) Cookies() []Cookie {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.cookies)
}

// retrievalOrder orders cookies as RFC 6265bis §5.8.3 sends them.
func retrievalOrder(a, b Cookie) int {
	if la, lb := len(a.Path()), len(b.Path()); la != lb {
		return lb - la
	}
	switch {
	case a.created < b.created:
		return -1
	case a.created > b.created:
		return 1
	}
	return 0
}

// Changes records what one exchange changed in a session, so that a Store
// can write cookie by cookie instead of rewriting the whole jar: parallel
// exchanges of one session then never undo each other's writes.
type Changes struct {
	// New is set when the exchange created the session.
	New bool
	// Stored are cookies added or replaced, by Cookie.Key.
	Stored []Cookie
	// Deleted are the Keys of cookies removed from the jar.
	Deleted []string
}

// Empty reports whether there is nothing to write.
func (ch *Changes) Empty() bool {
	return !ch.New && len(ch.Stored) == 0 && len(ch.Deleted) == 0
}

func (ch *Changes) store(c *Cookie) {
	k := c.Key()
	ch.Deleted = slices.DeleteFunc(ch.Deleted, func(d string) bool { return d == k })
	for i := range ch.Stored {
		if ch.Stored[i].sameIdentity(c) {
			ch.Stored[i] = *c
			return
		}
	}
	ch.Stored = append(ch.Stored, *c)
}

func (ch *Changes) delete(c *Cookie) {
	ch.Stored = slices.DeleteFunc(ch.Stored, func(d Cookie) bool { return d.sameIdentity(c) })
	if k := c.Key(); !slices.Contains(ch.Deleted, k) {
		ch.Deleted = append(ch.Deleted, k)
	}
}
