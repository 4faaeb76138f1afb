package sessions

import (
	"context"
	"crypto/subtle"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxysession/proxysession/internal/seal"
)

// Store keeps sessions between requests. Like scs's stores, a Store
// reports a missing session as (nil, nil): "not found" is not an error.
// Errors mean the store itself failed, and the caller fails closed.
type Store interface {
	// Find returns the session with the given id, or nil when there is
	// none or its secret does not match.
	Find(ctx context.Context, id ID) (*Session, error)
	// Commit persists a new session (ch.New) or the changes an exchange
	// made to an existing one. A store that hands out live sessions has
	// nothing to write for an existing session; a store that serialises
	// sessions writes ch cookie by cookie.
	Commit(ctx context.Context, s *Session, ch *Changes) error
	// Delete ends the session with the given id. Deleting a missing
	// session is not an error.
	Delete(ctx context.Context, id ID) error
}

// liveStore is implemented by stores that hand out live sessions (the
// MemoryStore): what an exchange changes in a found session is stored at
// once, so the engine keeps no journal of Changes for them, and a lookup
// cannot fail, so the engine calls it with the time it already read.
type liveStore interface {
	findAt(id ID, now int64) *Session
}

// Pinger is implemented by stores that can be unreachable; the Cache's
// Check uses it to report readiness.
type Pinger interface {
	Ping(ctx context.Context) error
}

// MemoryStore keeps sessions in process memory, bounded both by a number
// of sessions and by an estimate of the heap they take (see
// NewMemoryStoreLimits), in a segmented LRU with frequency-based
// admission:
//
//   - A new session enters a "probation" segment, which absorbs floods of
//     one-shot sessions (crawlers, attacks): when the store is full, the
//     least recently used session on probation goes first.
//   - A session used again asks to move to a "protected" segment of at
//     most 3/4 of the store. When that segment is full, the session gets
//     in only if it has been used more often, recently, than the protected
//     session that would make room for it; that one goes back on
//     probation. An attacker who reuses each flood session a few times
//     therefore cannot push out users whose sessions see more use.
//   - Use counts are exact, per session, and halve for every 5 minutes
//     (freqHalfLife) that pass, so that sessions which stopped being used
//     lose their protection.
//
// Sessions on probation, and sessions that grow beyond the byte budget,
// are evicted before protected ones. The trade-off is that an attacker
// who uses each of its sessions as often as real users use theirs is
// indistinguishable from them: frequency protects established users
// against cheap floods, not against a flood as busy as the users.
//
// MemoryStore hands out live sessions: all exchanges of one session share
// one *Session, whose mutex keeps its jar consistent.
//
// SaveStateFile and LoadStateFile keep the sessions across restarts, in a
// file sealed like the Redis store's records: loaded sessions stay sealed
// until a request presents their id.
type MemoryStore struct {
	// mu guards index, the segments and the entries' list fields and
	// sizes. Lookups take it shared; everything that reorders takes it
	// exclusively.
	mu                   sync.RWMutex
	index                map[[idKeyBytes]byte]*memEntry
	probation, protected memList
	bytes                int64 // estimated heap of all sessions held

	maxSessions, maxProtected int
	maxBytes, maxProtectedB   int64

	// Sessions loaded from a state file and still sealed (see
	// LoadStateFile): they hold places in the segments like live ones,
	// but are indexed by their verifier until their id wakes them.
	// Guarded by mu.
	dormant   map[[seal.VerifierSize]byte]*dormantEntry
	dormantOf map[*memEntry]*dormantEntry
	// dormantEnd is when every dormant session has ended (UnixNano).
	dormantEnd int64

	evictions     atomic.Uint64
	undecryptable atomic.Uint64

	bind memBindings // guarded by mu
}

// NewMemoryStore returns a MemoryStore that holds up to maxSessions
// sessions within DefaultMaxMemory bytes.
func NewMemoryStore(maxSessions int) (*MemoryStore, error) {
	return NewMemoryStoreLimits(maxSessions, DefaultMaxMemory)
}

// NewMemoryStoreLimits returns a MemoryStore that holds up to maxSessions
// sessions whose estimated heap (sessionHeapBytes: the session, its
// cookies and the store's own bookkeeping) totals at most maxBytes.
func NewMemoryStoreLimits(maxSessions int, maxBytes int64) (*MemoryStore, error) {
	if maxSessions <= 0 {
		return nil, errors.New("sessions: the memory store needs room for at least one session")
	}
	if maxBytes < minMaxMemory {
		return nil, errors.New("sessions: the memory store needs at least 1 MiB")
	}
	m := &MemoryStore{
		index:       make(map[[idKeyBytes]byte]*memEntry),
		maxSessions: maxSessions,
		// The protected segment leaves at least a quarter of the store to
		// probation, so that new users can always get a session.
		maxProtected:  maxSessions - maxSessions/4,
		maxBytes:      maxBytes,
		maxProtectedB: maxBytes - maxBytes/4,
	}
	m.probation.init(false)
	m.protected.init(true)
	return m, nil
}

// recencyGranularity is how often a protected session in use moves to
// the front of the LRU order: moving it on every request costs more (a
// write lock and its neighbours' cache lines) than one second of
// precision is worth.
const recencyGranularity = int64(time.Second)

// Find implements Store.
func (m *MemoryStore) Find(_ context.Context, id ID) (*Session, error) {
	return m.findAt(id, time.Now().UnixNano()), nil
}

// findAt is Find at a time the caller already knows (the Cache's clock).
func (m *MemoryStore) findAt(id ID, now int64) *Session {
	key := id.Key()
	m.mu.RLock()
	e := m.index[key]
	protected := e != nil && e.isProtected()
	dormant := e == nil && len(m.dormant) > 0
	aliased := e == nil && len(m.bind.aliases) > 0
	m.mu.RUnlock()
	if aliased {
		// Perhaps the old id of a rotated session, within its grace.
		if a := m.findAlias(id, now); a != nil {
			a.use(now)
			return a.s
		}
	}
	if e == nil {
		if !dormant {
			return nil
		}
		// Perhaps a session from the state file, whose id unseals it.
		if e, protected = m.wake(id, now); e == nil {
			return nil
		}
	}
	s := e.s
	// The secret is checked before the lookup counts as a use: a client
	// that knows only the key half of an id cannot keep a session alive
	// or promote it.
	secret, want := id.Secret(), s.id.Secret()
	if subtle.ConstantTimeCompare(secret[:], want[:]) != 1 {
		return nil
	}
	f := e.use(now)
	switch seen := s.lastSeen.Load(); {
	case !protected:
		// Every use of a session on probation asks for promotion: its
		// count has just grown, and the first use after creation is
		// what scan resistance depends on.
		m.promote(e, f, now)
	case seen == s.created || now-seen >= recencyGranularity:
		m.refresh(e)
	}
	return s
}

// promote moves e from probation to the protected segment if there is
// room, or if it has been used more often than every protected session
// that must make room for it, which go back on probation. Otherwise e
// moves to the front of probation: it is in use.
func (m *MemoryStore) promote(e *memEntry, f uint32, now int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.index[e.s.id.Key()] != e || e.isProtected() {
		return // evicted, deleted or promoted meanwhile
	}
	size := int64(e.sizeBytes())
	// Find the protected sessions that would have to make room, from the
	// least recently used, without moving any of them yet.
	n, freed, v := m.protected.len, int64(0), m.protected.root.prev
	for n >= m.maxProtected || m.protected.bytes-freed+size > m.maxProtectedB {
		if v == &m.protected.root || v.frequency(now) >= f {
			m.probation.moveToFront(e)
			return
		}
		n, freed, v = n-1, freed+int64(v.sizeBytes()), v.prev
	}
	for m.protected.len > n {
		d := m.protected.back()
		m.protected.remove(d)
		m.probation.pushFront(d)
	}
	m.probation.remove(e)
	m.protected.pushFront(e)
}

// refresh moves a protected session to the front of its segment.
func (m *MemoryStore) refresh(e *memEntry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.index[e.s.id.Key()] == e && e.isProtected() {
		m.protected.moveToFront(e)
	}
}

// Commit implements Store. Changes to an existing session are already in
// place (resized accounts for their size), so only new sessions need
// work.
func (m *MemoryStore) Commit(_ context.Context, s *Session, ch *Changes) error {
	if !ch.New {
		return nil
	}
	// The session is not visible to other exchanges yet: no need for s.mu.
	e := newMemEntry(s, sessionHeapBytes(s))
	m.mu.Lock()
	defer m.mu.Unlock()
	key := s.id.Key()
	if old := m.index[key]; old != nil {
		m.unlink(old) // cannot happen with random ids; keep the books right
	}
	m.index[key] = e
	m.probation.pushFront(e)
	m.bytes += int64(e.sizeBytes())
	m.evict()
	return nil
}

// resized implements sizeTracker: it records the new size of a live
// session whose jar an exchange changed. The caller holds s.mu, so that
// the sizes of one session are recorded in the order its jar changed
// (the store never takes a session's lock, so the lock order is s.mu,
// then m.mu).
func (m *MemoryStore) resized(s *Session) {
	size := sessionHeapBytes(s)
	key := s.id.Key()
	m.mu.RLock()
	e := m.index[key]
	same := e == nil || e.s != s || e.sizeBytes() == size
	m.mu.RUnlock()
	if same {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if e = m.index[key]; e == nil || e.s != s {
		return
	}
	delta := int64(size) - int64(e.sizeBytes())
	e.setSize(size)
	m.bytes += delta
	if e.isProtected() {
		m.protected.bytes += delta
		// A protected segment grown past its share goes back to probation
		// from its least recently used end.
		for m.protected.bytes > m.maxProtectedB {
			d := m.protected.back()
			m.protected.remove(d)
			m.probation.pushFront(d)
		}
	} else {
		m.probation.bytes += delta
	}
	m.evict()
}

// evict removes sessions, least valuable first (probation before
// protected, least recently used first), until the store is within its
// limits. The caller holds m.mu.
func (m *MemoryStore) evict() {
	for len(m.index)+len(m.dormant) > m.maxSessions || m.bytes > m.maxBytes {
		v := m.probation.back()
		if v == nil {
			v = m.protected.back()
		}
		if v == nil {
			return
		}
		m.unlink(v)
		m.evictions.Add(1)
	}
}

// unlink removes e from its segment and the index. The caller holds m.mu.
func (m *MemoryStore) unlink(e *memEntry) {
	if e.isProtected() {
		m.protected.remove(e)
	} else {
		m.probation.remove(e)
	}
	if e.s == nil {
		d := m.dormantOf[e]
		delete(m.dormant, d.verifier)
		delete(m.dormantOf, e)
	} else {
		delete(m.index, e.s.id.Key())
		if b := e.s.binding.Load(); b != nil {
			m.unindex(e, b)
		}
		if len(m.bind.aliasOf) > 0 {
			m.dropAlias(e)
		}
	}
	m.bytes -= int64(e.sizeBytes())
}

// Delete implements Store.
func (m *MemoryStore) Delete(_ context.Context, id ID) error {
	m.mu.Lock()
	if e := m.index[id.Key()]; e != nil && e.s.id.Equal(id) {
		m.unlink(e)
		m.mu.Unlock()
		return nil
	}
	dormant := len(m.dormant) > 0
	m.mu.Unlock()
	if dormant {
		m.deleteDormant(id)
	}
	return nil
}

// Len returns the number of sessions held, sealed ones from a state file
// included.
func (m *MemoryStore) Len() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.index) + len(m.dormant)
}

// Bytes returns the estimated heap of the sessions held, which the store
// keeps within its byte budget.
func (m *MemoryStore) Bytes() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.bytes
}

// Evictions returns how many sessions were pushed out to make room.
func (m *MemoryStore) Evictions() uint64 { return m.evictions.Load() }

// StoreStats implements StatsReporter.
func (m *MemoryStore) StoreStats() StoreStats {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return StoreStats{Sessions: len(m.index) + len(m.dormant), Bytes: m.bytes, Evictions: m.evictions.Load(), Undecryptable: m.undecryptable.Load()}
}
