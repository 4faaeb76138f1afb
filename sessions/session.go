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
	// revisions holds, for a session that a Store restored with
	// RestoreSessionRevisions, the store's revision of each cookie's
	// record as read, by Cookie.Key. A purge carries it, so that the
	// store deletes that record only. nil for other sessions.
	revisions map[string]string
	// binding is the user the session is bound to (see Binding), or nil.
	binding atomic.Pointer[Binding]
	// movedTo is the session this one was rotated to (MemoryStore), or
	// nil.
	movedTo atomic.Pointer[Session]
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

// RestoreSessionRevisions is RestoreSession for a store that can delete
// a record on condition that it is still the one an exchange read:
// revisions[i] is the store's revision of cookies[i]'s record (any string
// that changes whenever the record is rewritten; "" for none). The
// journal's conditional deletions (Deletion.Revision) carry them.
func RestoreSessionRevisions(id ID, created, lastSeen time.Time, cookies []Cookie, revisions []string) *Session {
	s := RestoreSession(id, created, lastSeen, cookies)
	for i := range cookies {
		if i < len(revisions) && revisions[i] != "" {
			if s.revisions == nil {
				s.revisions = make(map[string]string, len(cookies))
			}
			s.revisions[cookies[i].Key()] = revisions[i]
		}
	}
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
//
// The journal holds at most one operation per cookie identity
// (Cookie.Key): the last one the exchange made. Recording is linear in
// the number of operations: small journals are searched, larger ones
// indexed.
type Changes struct {
	// New is set when the exchange created the session.
	New bool
	// Stored are cookies added or replaced, in no particular order.
	Stored []Cookie
	// Deleted are cookies removed from the jar, in no particular order.
	Deleted []Deletion

	index map[string]journalRef // by Key, once the journal is large
}

// Deletion is a cookie removed from a session's jar.
type Deletion struct {
	// Key is the cookie's Cookie.Key.
	Key string
	// Revision is empty when the backend deleted the cookie (an expired
	// Set-Cookie): the store deletes whatever it holds, since a parallel
	// exchange may have stored one that this exchange's copy lacks.
	// Otherwise the exchange purged the cookie from its copy of the jar
	// (found it expired, or evicted it for the limits), and the store
	// deletes it only if it still holds the revision of its record that
	// the exchange read (see RestoreSessionRevisions): a parallel exchange
	// may have refreshed it.
	Revision string
}

// journalRef is where the journal holds a cookie identity.
type journalRef struct {
	deleted bool // in Deleted, else in Stored
	i       int32
}

// journalIndexAt is the size from which the journal indexes its entries:
// below it, a search is cheaper than a map.
const journalIndexAt = 16

// Empty reports whether there is nothing to write.
func (ch *Changes) Empty() bool {
	return !ch.New && len(ch.Stored) == 0 && len(ch.Deleted) == 0
}

// store records that c was added or replaced.
func (ch *Changes) store(c *Cookie) {
	key := ""
	if ref, ok := ch.find(c, &key); ok {
		if !ref.deleted {
			ch.Stored[ref.i] = *c
			return
		}
		ch.remove(ref)
	}
	ch.Stored = append(ch.Stored, *c)
	ch.indexed(c, &key, journalRef{false, int32(len(ch.Stored) - 1)})
}

// delete records that the backend deleted c.
func (ch *Changes) delete(c *Cookie) {
	ch.deleteIf(c, c.Key(), "")
}

// purge records that the exchange removed c from its copy of the jar
// (expired or evicted). revisions are the session's (Session.revisions):
// the store deletes only the record the exchange read. A cookie the
// store did not hand out (stored by this exchange, or in a session that
// is not restored) leaves nothing to delete.
func (ch *Changes) purge(c *Cookie, revisions map[string]string) {
	key := c.Key()
	if rev, ok := revisions[key]; ok && rev != "" {
		ch.deleteIf(c, key, rev)
		return
	}
	if ref, ok := ch.find(c, &key); ok {
		ch.remove(ref)
	}
}

// deleteIf records a deletion of c (whose Key is key) on condition of
// revision rev, or none.
func (ch *Changes) deleteIf(c *Cookie, key, rev string) {
	if ref, ok := ch.find(c, &key); ok {
		if ref.deleted {
			ch.Deleted[ref.i].Revision = rev
			return
		}
		ch.remove(ref)
	}
	ch.Deleted = append(ch.Deleted, Deletion{Key: key, Revision: rev})
	ch.indexed(c, &key, journalRef{true, int32(len(ch.Deleted) - 1)})
}

// find returns where the journal holds c's identity. *key is c.Key(), or
// "" until someone needs it.
func (ch *Changes) find(c *Cookie, key *string) (journalRef, bool) {
	if ch.index != nil {
		if *key == "" {
			*key = c.Key()
		}
		ref, ok := ch.index[*key]
		return ref, ok
	}
	for i := range ch.Stored {
		if ch.Stored[i].sameIdentity(c) {
			return journalRef{false, int32(i)}, true
		}
	}
	if len(ch.Deleted) == 0 {
		return journalRef{}, false
	}
	if *key == "" {
		*key = c.Key()
	}
	for i := range ch.Deleted {
		if ch.Deleted[i].Key == *key {
			return journalRef{true, int32(i)}, true
		}
	}
	return journalRef{}, false
}

// indexed notes the entry just appended at ref for c, and builds the
// index when the journal outgrows searching.
func (ch *Changes) indexed(c *Cookie, key *string, ref journalRef) {
	if ch.index != nil {
		if *key == "" {
			*key = c.Key()
		}
		ch.index[*key] = ref
		return
	}
	n := len(ch.Stored) + len(ch.Deleted)
	if n < journalIndexAt {
		return
	}
	ch.index = make(map[string]journalRef, 2*n)
	for i := range ch.Stored {
		ch.index[ch.Stored[i].Key()] = journalRef{false, int32(i)}
	}
	for i := range ch.Deleted {
		ch.index[ch.Deleted[i].Key] = journalRef{true, int32(i)}
	}
}

// remove drops the entry at ref, moving its list's last entry into its
// place (order does not matter to a store).
func (ch *Changes) remove(ref journalRef) {
	i := int(ref.i)
	var gone, moved string // keys, when indexed
	if ref.deleted {
		last := len(ch.Deleted) - 1
		gone, moved = ch.Deleted[i].Key, ch.Deleted[last].Key
		ch.Deleted[i] = ch.Deleted[last]
		ch.Deleted[last] = Deletion{}
		ch.Deleted = ch.Deleted[:last]
	} else {
		last := len(ch.Stored) - 1
		if ch.index != nil {
			gone = ch.Stored[i].Key()
			if i != last {
				moved = ch.Stored[last].Key()
			}
		}
		ch.Stored[i] = ch.Stored[last]
		ch.Stored[last] = Cookie{}
		ch.Stored = ch.Stored[:last]
	}
	if ch.index != nil {
		delete(ch.index, gone)
		if moved != gone && moved != "" {
			ch.index[moved] = ref
		}
	}
}
