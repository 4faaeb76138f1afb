package sessions

import (
	"context"
	"crypto/subtle"
	"slices"
	"time"
)

// memBindings are a MemoryStore's indexes of bound sessions. Entries are
// added by Bind and removed by unlink, whatever removes the session
// (eviction, deletion, expiry found by the engine, EndBound): the
// indexes never outlive the sessions they list. Guarded by the store's mu.
type memBindings struct {
	users, sids map[string]map[*memEntry]struct{}
	handles     map[string]*memEntry
	// aliases name rotated sessions by their old id's lookup half, for
	// the rotation's grace period.
	aliases map[[idKeyBytes]byte]memAlias
	aliasOf map[*memEntry][idKeyBytes]byte // the alias naming an entry
	// alive reports whether a session has not ended (the Cache's
	// lifetimes), for CountBound. nil: every session counts.
	alive func(s *Session) bool
}

// memAlias is an old id of a rotated session, valid until until.
type memAlias struct {
	secret [idBytes - idKeyBytes]byte
	to     *memEntry
	until  int64
}

func (m *MemoryStore) setAlive(f func(*Session) bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.bind.alive = f
}

func addTo(idx *map[string]map[*memEntry]struct{}, key string, e *memEntry) {
	if key == "" {
		return
	}
	if *idx == nil {
		*idx = make(map[string]map[*memEntry]struct{})
	}
	set := (*idx)[key]
	if set == nil {
		set = make(map[*memEntry]struct{}, 1)
		(*idx)[key] = set
	}
	set[e] = struct{}{}
}

func removeFrom(idx map[string]map[*memEntry]struct{}, key string, e *memEntry) {
	if set := idx[key]; set != nil {
		delete(set, e)
		if len(set) == 0 {
			delete(idx, key)
		}
	}
}

// unindex removes e, bound by b, from the indexes. The caller holds m.mu.
func (m *MemoryStore) unindex(e *memEntry, b *Binding) {
	removeFrom(m.bind.users, b.UserKey, e)
	removeFrom(m.bind.sids, b.SidKey, e)
	if m.bind.handles[b.Handle] == e {
		delete(m.bind.handles, b.Handle)
	}
}

// index adds e, bound by b, to the indexes. The caller holds m.mu.
func (m *MemoryStore) indexBinding(e *memEntry, b *Binding) {
	addTo(&m.bind.users, b.UserKey, e)
	addTo(&m.bind.sids, b.SidKey, e)
	if b.Handle != "" {
		if m.bind.handles == nil {
			m.bind.handles = make(map[string]*memEntry)
		}
		m.bind.handles[b.Handle] = e
	}
}

// Bind implements UserIndexStore.
func (m *MemoryStore) Bind(_ context.Context, s *Session, b Binding) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.index[s.id.Key()]
	if e == nil || e.s != s {
		return nil // gone
	}
	old := s.binding.Load()
	if old != nil {
		m.unindex(e, old)
	}
	s.binding.Store(&b)
	m.indexBinding(e, &b)
	if old == nil {
		// The binding counts against the byte budget.
		e.setSize(min(e.sizeBytes()+bindingOverheadBytes, maxEntrySize))
		m.bytes += bindingOverheadBytes
		if e.isProtected() {
			m.protected.bytes += bindingOverheadBytes
		} else {
			m.probation.bytes += bindingOverheadBytes
		}
		m.evict()
	}
	return nil
}

// bound returns the entries listed under key. The caller holds m.mu.
func (m *MemoryStore) bound(index BindingIndex, key string) []*memEntry {
	var out []*memEntry
	switch index {
	case IndexUser:
		for e := range m.bind.users[key] {
			out = append(out, e)
		}
	case IndexSid:
		for e := range m.bind.sids[key] {
			out = append(out, e)
		}
	case IndexHandle:
		if e := m.bind.handles[key]; e != nil {
			out = append(out, e)
		}
	}
	return out
}

// EndBound implements UserIndexStore.
func (m *MemoryStore) EndBound(_ context.Context, index BindingIndex, key string) (int, error) {
	if key == "" {
		return 0, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, e := range m.bound(index, key) {
		if m.bind.alive == nil || m.bind.alive(e.s) {
			n++ // not counting sessions that had ended already
		}
		m.unlink(e)
	}
	return n, nil
}

// CountBound implements UserIndexStore.
func (m *MemoryStore) CountBound(_ context.Context, index BindingIndex, key string) (int, error) {
	if key == "" {
		return 0, nil
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	n := 0
	for _, e := range m.bound(index, key) {
		if m.bind.alive == nil || m.bind.alive(e.s) {
			n++
		}
	}
	return n, nil
}

// BoundLen returns the number of index entries the store holds (user,
// sid and handle, and rotation aliases), for tests of their cleanup.
func (m *MemoryStore) BoundLen() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	n := len(m.bind.handles) + len(m.bind.aliases)
	for _, set := range m.bind.users {
		n += len(set)
	}
	for _, set := range m.bind.sids {
		n += len(set)
	}
	return n
}

// findAlias returns the session a rotated id still names within its
// grace period, or nil. The caller holds no lock.
func (m *MemoryStore) findAlias(id ID, now int64) *memEntry {
	key := id.Key()
	m.mu.RLock()
	a, ok := m.bind.aliases[key]
	alive := ok && now < a.until && a.to.s != nil && m.index[a.to.s.id.Key()] == a.to
	m.mu.RUnlock()
	if !ok {
		return nil
	}
	secret := id.Secret()
	if subtle.ConstantTimeCompare(secret[:], a.secret[:]) != 1 {
		return nil
	}
	if !alive {
		m.mu.Lock()
		if b, ok := m.bind.aliases[key]; ok && b == a {
			m.dropAlias(a.to)
		}
		m.mu.Unlock()
		return nil
	}
	return a.to
}

// Rotate implements RotatingStore: the session moves to a new *Session
// under newID, in the same place of the LRU; the old id names it for
// grace. Exchanges still holding the old *Session follow its forward
// pointer when they store cookies (lockCurrent), so none is lost.
func (m *MemoryStore) Rotate(_ context.Context, s *Session, newID ID, graceEnd time.Time) (*Session, error) {
	until := graceEnd.UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.index[s.id.Key()]
	if e == nil || e.s != s || s.movedTo.Load() != nil {
		return nil, nil
	}
	ns := &Session{id: newID, created: s.created, cookies: slices.Clone(s.cookies)}
	ns.lastSeen.Store(s.lastSeen.Load())
	b := s.binding.Load()
	if b != nil {
		m.unindex(e, b)
		nb := *b
		ns.binding.Store(&nb)
	}
	m.dropAlias(e) // an older id of the session ends now
	ne := newMemEntry(ns, e.sizeBytes())
	ne.uses.Store(e.uses.Load())
	if e.isProtected() {
		m.protected.replace(e, ne)
	} else {
		m.probation.replace(e, ne)
	}
	delete(m.index, s.id.Key())
	m.index[newID.Key()] = ne
	if b != nil {
		m.indexBinding(ne, ns.binding.Load())
	}
	s.movedTo.Store(ns)
	if until > s.lastSeen.Load() {
		if m.bind.aliases == nil {
			m.bind.aliases = make(map[[idKeyBytes]byte]memAlias)
			m.bind.aliasOf = make(map[*memEntry][idKeyBytes]byte)
		}
		for _, a := range m.bind.aliases {
			if s.lastSeen.Load() >= a.until {
				m.dropAlias(a.to)
			}
		}
		m.bind.aliases[s.id.Key()] = memAlias{secret: s.id.Secret(), to: ne, until: until}
		m.bind.aliasOf[ne] = s.id.Key()
	}
	return ns, nil
}

// lockCurrent locks s, or the session it was rotated to, and returns the
// locked session.
func lockCurrent(s *Session) *Session {
	for {
		s.mu.Lock()
		next := s.movedTo.Load()
		if next == nil {
			return s
		}
		s.mu.Unlock()
		s = next
	}
}

// dropAlias removes the alias that names e, if any. The caller holds
// m.mu.
func (m *MemoryStore) dropAlias(e *memEntry) {
	if k, ok := m.bind.aliasOf[e]; ok {
		delete(m.bind.aliases, k)
		delete(m.bind.aliasOf, e)
	}
}
