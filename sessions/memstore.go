package sessions

import "sync/atomic"

// DefaultMaxMemory is the default byte budget of the memory store: a
// quarter of the 1 GiB memory limit (and GOMEMLIMIT) of the shipped
// Kubernetes manifest. The garbage collector lets the heap grow to about
// twice the live data (GOGC=100) before it collects, and the process
// needs room besides the sessions (gRPC buffers, requests in flight), so
// sessions get a quarter and the process stays near half of its limit
// even when the store is full. It holds about 450,000 sessions of a few
// small cookies, more than DefaultMaxSessions: it binds only when
// sessions are unusually large, as a flood of crafted ones would be.
const DefaultMaxMemory int64 = 256 << 20

// minMaxMemory is the smallest byte budget: room for a dozen sessions at
// the default per-session limits.
const minMaxMemory int64 = 1 << 20

// Heap estimates, measured with BenchmarkSessionHeap and
// BenchmarkAdversarialSessionHeap (Go 1.26, amd64). They err on the high
// side so that the byte budget bounds the real heap.
const (
	// sessionOverheadBytes is a session without cookies: the Session (96
	// bytes), the store's entry (32) and index slot (about 40 with the
	// map's slack), rounded up.
	sessionOverheadBytes = 192
	// cookieOverheadBytes is a cookie's cost besides its name and value:
	// its place in the jar's slice (48 bytes) and the rounding of the
	// allocation that holds its name and value.
	cookieOverheadBytes = 64
	// scopeOverheadBytes is the cost of a scope (domain and path) besides
	// its bytes: unique.Make's copy, its entry in the intern table and
	// the rounding of the copied strings. Measured: about 290 bytes for a
	// 253-byte host, 150 for a 1024-byte path.
	scopeOverheadBytes = 320
	// bindingOverheadBytes is a bound session's Binding (three HMAC
	// strings) and its entries in the store's user, sid and handle
	// indexes, rounded up.
	bindingOverheadBytes = 512
)

// sessionHeapBytes estimates the heap that s takes in a MemoryStore. The
// caller holds s.mu, or s is not shared yet.
//
// Everything a cookie stores counts: name, value, domain and path, and
// the fixed costs around them. Scopes are interned, so one shared by
// several cookies of the session (the usual case: one site, Path=/) is
// counted once; one shared with other sessions is still counted in each,
// which overestimates, on the safe side.
func sessionHeapBytes(s *Session) uint32 {
	n := int64(sessionOverheadBytes)
	if s.binding.Load() != nil {
		n += bindingOverheadBytes
	}
	for i := range s.cookies {
		c := &s.cookies[i]
		n += cookieOverheadBytes + int64(len(c.pair))
		if !scopeCounted(s.cookies[max(i-scopeLookBack, 0):i], c) {
			sc := c.scope.Value()
			n += scopeOverheadBytes + int64(len(sc.domain)+len(sc.path))
		}
	}
	return uint32(min(n, maxEntrySize))
}

// scopeLookBack bounds the search for a cookie's scope among the cookies
// before it, so that an estimate costs linear time. Cookies of one scope
// are usually neighbours: the jar orders them by path length.
const scopeLookBack = 8

// scopeCounted reports whether one of before has c's scope.
func scopeCounted(before []Cookie, c *Cookie) bool {
	for i := range before {
		if before[i].scope == c.scope {
			return true
		}
	}
	return false
}

// sizeTracker is implemented by stores that bound the memory of live
// sessions (the MemoryStore): a session grows after it is committed,
// when later exchanges store cookies into it, and the engine reports the
// new size. The caller holds s.mu.
type sizeTracker interface {
	resized(s *Session)
}

// Use counting. A session's count of uses halves for every freqHalfLife
// that passes, so that it measures recent use: a user who stopped coming
// loses the protection that many uses earned. Counts are exact, one per
// session in the store, rather than a count-min sketch as in TinyLFU: a
// sketch remembers keys that left the cache, but an evicted session never
// comes back (its id is random and dead), and exact counts leave an
// attacker no hash collisions to inflate.
const (
	freqHalfLife = 5 * 60 // seconds
	maxFreq      = 255
	// The count is the low 8 bits of memEntry.uses, and the high 24 bits
	// are when the count last halved, in Unix seconds modulo 2^24 (194
	// days, longer than any session lives between two uses).
	freqBits = 8
	timeMask = 1<<24 - 1
)

// memEntry is a session's place in a MemoryStore.
type memEntry struct {
	prev, next *memEntry // in its segment; guarded by the store's mu
	s          *Session
	uses       atomic.Uint32 // use count and its time, see freqBits
	size       uint32        // estimated heap, and protectedBit; guarded by mu
}

const (
	protectedBit = 1 << 31
	maxEntrySize = protectedBit - 1
)

func newMemEntry(s *Session, size uint32) *memEntry {
	e := &memEntry{s: s, size: size}
	e.uses.Store(uint32(s.created/1e9)&timeMask<<freqBits | 1)
	return e
}

func (e *memEntry) isProtected() bool { return e.size&protectedBit != 0 }
func (e *memEntry) sizeBytes() uint32 { return e.size &^ protectedBit }
func (e *memEntry) setSize(n uint32)  { e.size = e.size&protectedBit | n }
func (e *memEntry) setProtected(p bool) {
	if p {
		e.size |= protectedBit
	} else {
		e.size &^= protectedBit
	}
}

// decay returns the count in uses as of now (UnixNano), and the time of
// its last halving then.
func decay(uses uint32, now int64) (f, since uint32) {
	f, since = uses&(1<<freqBits-1), uses>>freqBits
	elapsed := (uint32(now/1e9) - since) & timeMask
	if elapsed >= 1<<23 {
		return f, since // the clock went back: no decay
	}
	if h := elapsed / freqHalfLife; h > 0 {
		f >>= min(h, freqBits)
		since = (since + h*freqHalfLife) & timeMask
	}
	return f, since
}

// frequency returns e's use count at now.
func (e *memEntry) frequency(now int64) uint32 {
	f, _ := decay(e.uses.Load(), now)
	return f
}

// use counts one use of e at now and returns the new count. It takes no
// lock: lookups of different sessions never contend.
func (e *memEntry) use(now int64) uint32 {
	for {
		old := e.uses.Load()
		f, since := decay(old, now)
		if f < maxFreq {
			f++
		}
		if e.uses.CompareAndSwap(old, since<<freqBits|f) {
			return f
		}
	}
}

// memList is a segment of a MemoryStore: a doubly linked list of
// entries, most recently used first, with its length and bytes.
type memList struct {
	root  memEntry // sentinel: root.next is the front, root.prev the back
	len   int
	bytes int64
}

// init makes l an empty segment, the protected one if protected.
func (l *memList) init(protected bool) {
	l.root.next, l.root.prev = &l.root, &l.root
	l.root.setProtected(protected)
}

// back returns the least recently used entry, or nil.
func (l *memList) back() *memEntry {
	if l.len == 0 {
		return nil
	}
	return l.root.prev
}

func (l *memList) pushFront(e *memEntry) {
	e.prev, e.next = &l.root, l.root.next
	e.prev.next, e.next.prev = e, e
	l.len++
	l.bytes += int64(e.sizeBytes())
	e.setProtected(l.isProtected())
}

func (l *memList) remove(e *memEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
	l.len--
	l.bytes -= int64(e.sizeBytes())
}

func (l *memList) moveToFront(e *memEntry) {
	if l.root.next == e {
		return
	}
	l.remove(e)
	l.pushFront(e)
}

// replace puts e in old's place, which old leaves. The caller adjusts
// the store's bytes.
func (l *memList) replace(old, e *memEntry) {
	e.prev, e.next = old.prev, old.next
	e.prev.next, e.next.prev = e, e
	old.prev, old.next = nil, nil
	l.bytes += int64(e.sizeBytes()) - int64(old.sizeBytes())
	e.setProtected(l.isProtected())
}

// isProtected tells the segments apart: the protected list's sentinel
// carries protectedBit.
func (l *memList) isProtected() bool { return l.root.isProtected() }
