package sessions

import (
	"context"
	"crypto/subtle"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
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

// MemoryStore keeps sessions in process memory, in a scan-resistant 2Q
// cache (hashicorp/golang-lru) bounded by a number of sessions: sessions
// seen once sit in a small "recent" queue, so a flood of one-shot sessions
// (crawlers, attacks) evicts other one-shot sessions rather than the
// sessions of users who come back.
//
// MemoryStore hands out live sessions: all exchanges of one session share
// one *Session, whose mutex keeps its jar consistent.
type MemoryStore struct {
	cache     *lru.TwoQueueCache[[idKeyBytes]byte, *Session]
	size      int
	mu        sync.Mutex // orders Add and Remove, so that evictions can be counted
	evictions atomic.Uint64
}

// NewMemoryStore returns a MemoryStore that holds up to maxSessions
// sessions.
func NewMemoryStore(maxSessions int) (*MemoryStore, error) {
	if maxSessions <= 0 {
		return nil, errors.New("sessions: the memory store needs room for at least one session")
	}
	c, err := lru.New2Q[[idKeyBytes]byte, *Session](maxSessions)
	if err != nil {
		return nil, err
	}
	return &MemoryStore{cache: c, size: maxSessions}, nil
}

// recencyGranularity is how often a session in use moves to the front of
// the LRU order: moving it on every request costs more (a write lock and
// its neighbours' cache lines) than one second of precision is worth.
const recencyGranularity = int64(time.Second)

// Find implements Store.
func (m *MemoryStore) Find(_ context.Context, id ID) (*Session, error) {
	return m.findAt(id, time.Now().UnixNano()), nil
}

// findAt is Find at a time the caller already knows (the Cache's clock).
func (m *MemoryStore) findAt(id ID, now int64) *Session {
	s, ok := m.cache.Peek(id.Key())
	if !ok {
		return nil
	}
	// The first use after creation promotes the session out of 2Q's
	// "recent" queue (scan resistance depends on it); later uses refresh
	// its place at most once per recencyGranularity.
	if seen := s.lastSeen.Load(); seen == s.created || now-seen >= recencyGranularity {
		m.cache.Get(id.Key())
	}
	secret, want := id.Secret(), s.id.Secret()
	if subtle.ConstantTimeCompare(secret[:], want[:]) != 1 {
		return nil
	}
	return s
}

// Commit implements Store. Changes to an existing session are already in
// place, so only new sessions need work.
func (m *MemoryStore) Commit(_ context.Context, s *Session, ch *Changes) error {
	if !ch.New {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	full := m.cache.Len() >= m.size
	m.cache.Add(s.id.Key(), s)
	if full {
		m.evictions.Add(1)
	}
	return nil
}

// Delete implements Store.
func (m *MemoryStore) Delete(_ context.Context, id ID) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.cache.Peek(id.Key()); ok && s.id.Equal(id) {
		m.cache.Remove(id.Key())
	}
	return nil
}

// Len returns the number of sessions held.
func (m *MemoryStore) Len() int { return m.cache.Len() }

// Evictions returns how many sessions were pushed out to make room.
func (m *MemoryStore) Evictions() uint64 { return m.evictions.Load() }
