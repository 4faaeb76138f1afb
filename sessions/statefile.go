package sessions

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/proxysession/proxysession/internal/seal"
)

// State files keep a MemoryStore's sessions across restarts: the process
// writes them on shutdown (and periodically), and loads them at start.
//
// A state file is as useless without the browsers' session cookies as a
// Redis dump: each session is sealed with keys that internal/seal derives
// from its id's secret half, as the Redis store does, and indexed by the
// verifier derived from the id, never by the id. The process that loads
// the file cannot open a session either: it keeps it sealed ("dormant")
// until a request presents the session's id, which unseals it. A dormant
// session holds its place in the store's segments and counts against its
// limits like a live one; an id with a wrong secret derives another
// verifier and finds nothing.
//
// Format (version 1; integers big-endian):
//
//	header   magic "\x89PSSTATE" ‖ version (2) ‖ zero (6) ‖ written at,
//	         UnixNano (8) ‖ number of sessions (8)
//	session  verifier (16) ‖ flags (1: bit 0 protected) ‖ use count (1) ‖
//	         created, UnixNano (8) ‖ last seen, UnixNano (8) ‖ record
//	         length (4) ‖ record: nonce ‖ ciphertext ‖ tag (internal/seal)
//	trailer  SHA-256 of everything before it
//
// The sessions come in the order of the store's segments, protected then
// probation, least recently used first. A session's creation and last use
// are in the clear, like the Redis store's state field, so that sessions
// ended by time are skipped without the ids; the record's additional data
// binds them. The record opens to: plaintext version (1) ‖ uvarint number
// of cookies ‖ each cookie as uvarint length ‖ Cookie.MarshalBinary, in
// the jar's order. The trailer detects truncation and corruption (not
// tampering: the records' authentication does that); a file that fails
// any check is refused as a whole.
const (
	stateMagic         = "\x89PSSTATE"
	stateVersion       = 1
	stateContext       = "proxysession/state/v1"
	stateHeaderBytes   = 8 + 2 + 6 + 8 + 8
	stateRecordHead    = seal.VerifierSize + 1 + 1 + 8 + 8 + 4
	statePlainVersion  = 1
	stateFlagProtected = 1
	// maxStateRecord bounds one sealed session: far above what the
	// per-session limits allow, it only guards against a corrupt length.
	maxStateRecord = 16 << 20
	// dormantOverheadBytes is a dormant session's heap besides its sealed
	// record: its entry (32 bytes), dormantEntry (96), and its slots in
	// the two maps that index it, rounded up (BenchmarkStateFile reports
	// the measured heap per loaded session).
	dormantOverheadBytes = 256
)

// ErrBadState is the error of a state file that is not one this version
// of proxysession wrote whole: not a state file, another version,
// truncated or corrupt. Nothing of such a file is loaded.
var ErrBadState = errors.New("sessions: not a valid state file")

// StateOptions configure the writing and loading of a state file.
type StateOptions struct {
	// Lifetime and IdleTimeout must be the Cache's: sessions they have
	// ended are neither written nor loaded. Defaults DefaultLifetime and
	// DefaultIdleTimeout.
	Lifetime, IdleTimeout time.Duration
	// Now returns the current time. Default time.Now.
	Now func() time.Time
}

func (o *StateOptions) withDefaults() StateOptions {
	d := *o
	if d.Lifetime <= 0 {
		d.Lifetime = DefaultLifetime
	}
	if d.IdleTimeout <= 0 {
		d.IdleTimeout = min(DefaultIdleTimeout, d.Lifetime)
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	return d
}

// ended reports whether a session created and last seen at these times
// has ended at now.
func (o *StateOptions) ended(created, lastSeen, now int64) bool {
	return now >= created+int64(o.Lifetime) || now >= lastSeen+int64(o.IdleTimeout)
}

// StateInfo describes a state file written or loaded.
type StateInfo struct {
	// Sessions is the number of sessions written, or loaded.
	Sessions int
	// Ended is the number of sessions left out because their lifetime or
	// idle timeout had passed.
	Ended int
	// Bytes is the size of the file.
	Bytes int64
}

// dormantEntry is a session loaded from a state file and still sealed.
type dormantEntry struct {
	e                 *memEntry // its place in the segments
	verifier          [seal.VerifierSize]byte
	created, lastSeen int64
	record            []byte
	// woken is the live entry that replaced it, once its id woke it.
	woken *memEntry
}

func dormantSize(d *dormantEntry) uint32 {
	return uint32(min(int64(dormantOverheadBytes+len(d.record)), maxEntrySize))
}

// stateAD is a record's additional data: its verifier and its times in
// the clear.
func stateAD(verifier [seal.VerifierSize]byte, created, lastSeen int64) []byte {
	b := make([]byte, 0, seal.VerifierSize+16)
	b = append(b, verifier[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(created))
	return binary.BigEndian.AppendUint64(b, uint64(lastSeen))
}

func stateKeys(id ID) (*seal.Keys, error) {
	return seal.KeysFor(id.Key(), id.Secret(), stateContext)
}

// wake unseals the dormant session of id, if there is one and id opens
// it, and puts it in the store in the dormant one's place. It returns the
// session's entry and whether it is protected.
func (m *MemoryStore) wake(id ID, now int64) (*memEntry, bool) {
	m.mu.RLock()
	over := now >= m.dormantEnd
	m.mu.RUnlock()
	if over {
		m.dropDormant(now)
		return nil, false
	}
	keys, err := stateKeys(id)
	if err != nil {
		return nil, false
	}
	v := keys.Verifier()
	m.mu.RLock()
	d := m.dormant[v]
	m.mu.RUnlock()
	if d == nil {
		return nil, false
	}
	s, err := openDormant(keys, id, d)

	key := id.Key()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dormant[v] != d {
		// A parallel lookup woke it, or it was deleted or evicted.
		if e := m.index[key]; e != nil && e.s.id.Equal(id) {
			return e, e.isProtected()
		}
		return nil, false
	}
	if err != nil {
		// The verifier matched but the record does not open: corrupt or
		// forged. It can never be opened; drop it.
		m.unlink(d.e)
		m.undecryptable.Add(1)
		return nil, false
	}
	old := d.e
	e := &memEntry{s: s}
	e.setSize(sessionHeapBytes(s))
	e.uses.Store(old.uses.Load())
	l := &m.probation
	if old.isProtected() {
		l = &m.protected
	}
	l.replace(old, e)
	l.moveToFront(e)
	delete(m.dormant, v)
	delete(m.dormantOf, old)
	d.woken = e
	m.index[key] = e
	m.bytes += int64(e.sizeBytes()) - int64(old.sizeBytes())
	for m.protected.bytes > m.maxProtectedB {
		b := m.protected.back()
		m.protected.remove(b)
		m.probation.pushFront(b)
	}
	m.evict()
	if m.index[key] != e {
		return nil, false // larger than the whole store
	}
	return e, e.isProtected()
}

// openDormant unseals d with keys, the keys of id.
func openDormant(keys *seal.Keys, id ID, d *dormantEntry) (*Session, error) {
	plain, err := keys.Open(nil, d.record, stateAD(d.verifier, d.created, d.lastSeen))
	if err != nil {
		return nil, err
	}
	if len(plain) == 0 || plain[0] != statePlainVersion {
		return nil, ErrBadState
	}
	b := plain[1:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return nil, ErrBadState
	}
	b = b[k:]
	s := newSession(id, d.created)
	s.lastSeen.Store(d.lastSeen)
	s.cookies = make([]Cookie, n)
	for i := range s.cookies {
		l, k := binary.Uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return nil, ErrBadState
		}
		if err := s.cookies[i].UnmarshalBinary(b[k : k+int(l)]); err != nil {
			return nil, err
		}
		b = b[k+int(l):]
	}
	if len(b) != 0 {
		return nil, ErrBadState
	}
	slices.SortStableFunc(s.cookies, retrievalOrder)
	return s, nil
}

// dropDormant drops every dormant session once all of them have ended
// (the idle timeout has passed since the last use of each, or its
// lifetime): they can never be used again, and as long as some are held,
// a lookup of an unknown id costs a key derivation.
func (m *MemoryStore) dropDormant(now int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if now < m.dormantEnd {
		return
	}
	for _, d := range m.dormant {
		m.unlink(d.e)
	}
}

// deleteDormant deletes the dormant session of id, if any.
func (m *MemoryStore) deleteDormant(id ID) {
	keys, err := stateKeys(id)
	if err != nil {
		return
	}
	v := keys.Verifier()
	m.mu.Lock()
	defer m.mu.Unlock()
	if d := m.dormant[v]; d != nil {
		m.unlink(d.e)
	}
}

// Dormant returns the number of sessions loaded from a state file that no
// request has unsealed yet.
func (m *MemoryStore) Dormant() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.dormant)
}

// Undecryptable returns how many sessions of a state file failed
// authentication when their id came to unseal them, and were dropped.
func (m *MemoryStore) Undecryptable() uint64 { return m.undecryptable.Load() }

// stateItem is one session on its way to a state file.
type stateItem struct {
	e                 *memEntry
	s                 *Session      // live, or nil
	d                 *dormantEntry // sealed, or nil
	flags, freq       uint8
	verifier          [seal.VerifierSize]byte
	created, lastSeen int64
	record            []byte
}

// WriteState writes the store's sessions to w in the state file format
// (see LoadStateFile). Sessions that opt's lifetimes have ended, and
// expired cookies, are left out. The store keeps serving meanwhile: it is
// locked only to list its sessions, and each session only to encode it;
// a session deleted while the file is written is left out if its
// deletion came before the list of sessions was checked again, just
// before writing.
func (m *MemoryStore) WriteState(w io.Writer, opt StateOptions) (StateInfo, error) {
	opt = opt.withDefaults()
	now := opt.Now().UnixNano()
	var info StateInfo

	items := m.snapshot(now)
	// Seal the live sessions, in parallel: deriving each session's keys
	// costs more than encrypting it.
	workers := min(runtime.GOMAXPROCS(0), max(len(items)/256, 1))
	var wg sync.WaitGroup
	chunk := (len(items) + workers - 1) / workers
	for lo := 0; lo < len(items); lo += chunk {
		part := items[lo:min(lo+chunk, len(items))]
		wg.Go(func() {
			var plain []byte
			for i := range part {
				plain = part[i].seal(now, plain)
			}
		})
	}
	wg.Wait()

	// Leave out what ended meanwhile (time, logout, eviction).
	kept := items[:0]
	m.mu.RLock()
	for _, it := range items {
		switch {
		case it.record == nil || opt.ended(it.created, it.lastSeen, now):
			info.Ended++
			continue
		case it.s != nil && m.index[it.s.id.Key()] != it.e:
			continue
		case it.d != nil && m.dormantOf[it.e] != it.d && (it.d.woken == nil || m.index[it.d.woken.s.id.Key()] != it.d.woken):
			continue
		}
		kept = append(kept, it)
	}
	m.mu.RUnlock()

	cw := &countingWriter{w: w}
	bw := bufio.NewWriterSize(cw, 256<<10)
	h := sha256.New()
	out := io.MultiWriter(bw, h)
	hdr := make([]byte, 0, stateHeaderBytes)
	hdr = append(hdr, stateMagic...)
	hdr = binary.BigEndian.AppendUint16(hdr, stateVersion)
	hdr = append(hdr, make([]byte, 6)...)
	hdr = binary.BigEndian.AppendUint64(hdr, uint64(now))
	hdr = binary.BigEndian.AppendUint64(hdr, uint64(len(kept)))
	out.Write(hdr)
	rec := make([]byte, 0, stateRecordHead)
	for _, it := range kept {
		rec = append(rec[:0], it.verifier[:]...)
		rec = append(rec, it.flags, it.freq)
		rec = binary.BigEndian.AppendUint64(rec, uint64(it.created))
		rec = binary.BigEndian.AppendUint64(rec, uint64(it.lastSeen))
		rec = binary.BigEndian.AppendUint32(rec, uint32(len(it.record)))
		out.Write(rec)
		out.Write(it.record)
	}
	bw.Write(h.Sum(nil))
	if err := bw.Flush(); err != nil {
		return info, fmt.Errorf("sessions: writing state: %w", err)
	}
	info.Sessions = len(kept)
	info.Bytes = cw.n
	return info, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// snapshot lists the store's sessions in the order of the state file:
// protected, then probation, least recently used first.
func (m *MemoryStore) snapshot(now int64) []stateItem {
	m.mu.RLock()
	defer m.mu.RUnlock()
	items := make([]stateItem, 0, len(m.index)+len(m.dormant))
	for _, l := range []*memList{&m.protected, &m.probation} {
		var flags uint8
		if l.isProtected() {
			flags = stateFlagProtected
		}
		for e := l.root.prev; e != &l.root; e = e.prev {
			it := stateItem{e: e, s: e.s, flags: flags, freq: uint8(e.frequency(now))}
			if e.s == nil {
				d := m.dormantOf[e]
				it.d, it.verifier, it.created, it.lastSeen, it.record = d, d.verifier, d.created, d.lastSeen, d.record
			}
			items = append(items, it)
		}
	}
	return items
}

// seal encodes and seals a live session's item; plain is a buffer to
// reuse, returned grown. A session whose keys cannot be derived is left
// without a record, and out of the file.
func (it *stateItem) seal(now int64, plain []byte) []byte {
	s := it.s
	if s == nil {
		return plain
	}
	it.created, it.lastSeen = s.created, s.lastSeen.Load()
	plain = append(plain[:0], statePlainVersion)
	s.mu.Lock()
	n := 0
	for i := range s.cookies {
		if !s.cookies[i].expired(now) {
			n++
		}
	}
	plain = binary.AppendUvarint(plain, uint64(n))
	for i := range s.cookies {
		c := &s.cookies[i]
		if c.expired(now) {
			continue
		}
		// The length goes before the encoding: reserve one byte, the
		// usual size of the uvarint, and move the encoding if not.
		at := len(plain)
		plain = c.appendBinary(append(plain, 0))
		if l := len(plain) - at - 1; l < 0x80 {
			plain[at] = byte(l)
		} else {
			enc := bytes.Clone(plain[at+1:])
			plain = append(binary.AppendUvarint(plain[:at], uint64(l)), enc...)
		}
	}
	s.mu.Unlock()
	keys, err := stateKeys(s.id)
	if err != nil {
		return plain
	}
	it.verifier = keys.Verifier()
	it.record = keys.Seal(nil, plain, stateAD(it.verifier, it.created, it.lastSeen))
	return plain
}

// ReadState loads the sessions of a state file read from r, as dormant
// sessions that their ids will unseal (see LoadStateFile). It checks the
// whole file before it loads anything: a file that is not a valid state
// file of this version (ErrBadState) loads nothing. Sessions that opt's
// lifetimes have ended are left out; so are sessions beyond the store's
// limits, the least recently used first.
func (m *MemoryStore) ReadState(r io.Reader, opt StateOptions) (StateInfo, error) {
	opt = opt.withDefaults()
	st := stateReader{r: r, h: sha256.New()}
	st.tr = io.TeeReader(r, st.h)
	savedAt, recs, err := st.readAll()
	if err != nil {
		return st.info, err
	}
	m.install(recs, savedAt, opt, &st.info)
	return st.info, nil
}

// stateReader reads and checks a state file, counting its bytes.
type stateReader struct {
	r    io.Reader
	h    hash.Hash // of everything before the trailer
	tr   io.Reader // r, hashed into h
	info StateInfo
}

// loadedSession is one session of a state file, checked but not
// installed.
type loadedSession struct {
	d           *dormantEntry
	flags, freq uint8
}

func (st *stateReader) bad(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadState, fmt.Sprintf(format, args...))
}

// read fills b from the hashed stream.
func (st *stateReader) read(b []byte, what string) error {
	n, err := io.ReadFull(st.tr, b)
	st.info.Bytes += int64(n)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return st.bad("truncated after %d bytes, in %s", st.info.Bytes, what)
	}
	if err != nil {
		return fmt.Errorf("sessions: reading state: %w", err)
	}
	return nil
}

// readAll checks the whole file, header to trailer, and returns when it
// was written and its sessions.
func (st *stateReader) readAll() (savedAt int64, recs []loadedSession, err error) {
	savedAt, count, err := st.readHeader()
	if err != nil {
		return 0, nil, err
	}
	recs = make([]loadedSession, 0, min(count, 1<<16))
	seen := make(map[[seal.VerifierSize]byte]struct{}, min(count, 1<<16))
	for i := uint64(0); i < count; i++ {
		rec, err := st.readSession(fmt.Sprintf("session %d of %d", i+1, count))
		if err != nil {
			return 0, nil, err
		}
		if _, dup := seen[rec.d.verifier]; dup {
			return 0, nil, st.bad("corrupt session %d of %d: a second copy of a session", i+1, count)
		}
		seen[rec.d.verifier] = struct{}{}
		recs = append(recs, rec)
	}
	sum := st.h.Sum(nil)
	trailer := make([]byte, sha256.Size)
	n, err := io.ReadFull(st.r, trailer)
	st.info.Bytes += int64(n)
	if err != nil {
		return 0, nil, st.bad("truncated after %d bytes, in the checksum", st.info.Bytes)
	}
	if !bytes.Equal(sum, trailer) {
		return 0, nil, st.bad("checksum mismatch: the file is corrupt")
	}
	if n, _ := st.r.Read(make([]byte, 1)); n != 0 {
		return 0, nil, st.bad("data after the checksum")
	}
	return savedAt, recs, nil
}

// readHeader checks the file's header and returns when the file was
// written and how many sessions it holds.
func (st *stateReader) readHeader() (savedAt int64, count uint64, err error) {
	hdr := make([]byte, stateHeaderBytes)
	if err := st.read(hdr[:len(stateMagic)], "the header"); err != nil {
		return 0, 0, err
	}
	if string(hdr[:len(stateMagic)]) != stateMagic {
		return 0, 0, st.bad("no state file header: another kind of file")
	}
	if err := st.read(hdr[len(stateMagic):], "the header"); err != nil {
		return 0, 0, err
	}
	if v := binary.BigEndian.Uint16(hdr[8:]); v != stateVersion {
		return 0, 0, st.bad("version %d; this proxysession reads version %d", v, stateVersion)
	}
	if !bytes.Equal(hdr[10:16], make([]byte, 6)) {
		return 0, 0, st.bad("corrupt header")
	}
	return int64(binary.BigEndian.Uint64(hdr[16:])), binary.BigEndian.Uint64(hdr[24:]), nil
}

// readSession reads one session's record.
func (st *stateReader) readSession(what string) (loadedSession, error) {
	head := make([]byte, stateRecordHead)
	if err := st.read(head, what); err != nil {
		return loadedSession{}, err
	}
	d := &dormantEntry{
		verifier: [seal.VerifierSize]byte(head),
		created:  int64(binary.BigEndian.Uint64(head[18:])),
		lastSeen: int64(binary.BigEndian.Uint64(head[26:])),
	}
	flags, freq := head[16], head[17]
	n := binary.BigEndian.Uint32(head[34:])
	if flags&^stateFlagProtected != 0 || n < seal.Overhead || n > maxStateRecord || d.lastSeen < d.created {
		return loadedSession{}, st.bad("corrupt %s", what)
	}
	d.record = make([]byte, n)
	if err := st.read(d.record, what); err != nil {
		return loadedSession{}, err
	}
	return loadedSession{d, flags, freq}, nil
}

// install adds the checked sessions that have not ended to the store, as
// dormant entries in their segments, within the store's limits.
func (m *MemoryStore) install(recs []loadedSession, savedAt int64, opt StateOptions, info *StateInfo) {
	now := opt.Now().UnixNano()
	since := uint32(savedAt/1e9) & timeMask << freqBits
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dormant == nil {
		m.dormant = make(map[[seal.VerifierSize]byte]*dormantEntry, len(recs))
		m.dormantOf = make(map[*memEntry]*dormantEntry, len(recs))
	}
	for _, rec := range recs {
		d := rec.d
		if opt.ended(d.created, d.lastSeen, now) {
			info.Ended++
			continue
		}
		if _, dup := m.dormant[d.verifier]; dup {
			continue
		}
		m.dormantEnd = max(m.dormantEnd, min(d.created+int64(opt.Lifetime), d.lastSeen+int64(opt.IdleTimeout)))
		e := &memEntry{}
		e.setSize(dormantSize(d))
		e.uses.Store(since | uint32(rec.freq))
		d.e = e
		m.dormant[d.verifier] = d
		m.dormantOf[e] = d
		if rec.flags&stateFlagProtected != 0 {
			m.protected.pushFront(e)
		} else {
			m.probation.pushFront(e)
		}
		m.bytes += int64(e.sizeBytes())
		info.Sessions++
	}
	// The limits may be lower than the writer's.
	for m.protected.len > m.maxProtected || m.protected.bytes > m.maxProtectedB {
		b := m.protected.back()
		m.protected.remove(b)
		m.probation.pushFront(b)
	}
	before := m.evictions.Load()
	m.evict()
	info.Sessions -= int(m.evictions.Load() - before)
}

// ErrUnsafeState is the error of a state file that others could read or
// change: owned by another user, or accessible to the group or others.
// It is not loaded.
var ErrUnsafeState = errors.New("sessions: state file not private to this user")

// SaveStateFile writes the store's sessions to the state file at path
// (see WriteState), atomically: into a new file of mode 0600 in the same
// directory, synced, renamed over path, and the directory synced. A
// crash leaves either the old file or the new one.
func (m *MemoryStore) SaveStateFile(path string, opt StateOptions) (StateInfo, error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return StateInfo{}, fmt.Errorf("sessions: writing state file: %w", err)
	}
	tmp := f.Name()
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return StateInfo{}, fmt.Errorf("sessions: writing state file: %w", err)
	}
	info, err := m.WriteState(f, opt)
	if err != nil {
		return info, err
	}
	if err := f.Sync(); err != nil {
		return info, fmt.Errorf("sessions: writing state file: %w", err)
	}
	if err := f.Close(); err != nil {
		return info, fmt.Errorf("sessions: writing state file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return info, fmt.Errorf("sessions: writing state file: %w", err)
	}
	done = true
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return info, fmt.Errorf("sessions: writing state file: syncing its directory: %w", err)
		}
	}
	return info, nil
}

// LoadStateFile loads the state file at path into the store (see
// ReadState), after checking that it is a regular file that belongs to
// this process's user and that no one else may read or write (mode 0600
// or stricter); otherwise it loads nothing and the error wraps
// ErrUnsafeState. A missing file is an error that wraps fs.ErrNotExist.
//
// Loaded sessions stay sealed until a request presents their id: the
// file holds nothing that opens them. Their first lookup derives the
// keys (a few microseconds, once); as long as any are still sealed, a
// lookup of an unknown id costs that derivation too.
func (m *MemoryStore) LoadStateFile(path string, opt StateOptions) (StateInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return StateInfo{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return StateInfo{}, err
	}
	if !fi.Mode().IsRegular() {
		return StateInfo{}, fmt.Errorf("%w: %s is not a regular file", ErrUnsafeState, path)
	}
	if uid, ok := fileOwner(fi); ok && uid != os.Getuid() {
		return StateInfo{}, fmt.Errorf("%w: %s belongs to uid %d, this process runs as uid %d", ErrUnsafeState, path, uid, os.Getuid())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return StateInfo{}, fmt.Errorf("%w: %s has mode %#o; proxysession writes it 0600, and loads it only if no group or other user can read or write it (in Kubernetes, set fsGroupChangePolicy: OnRootMismatch)", ErrUnsafeState, path, perm)
	}
	return m.ReadState(bufio.NewReaderSize(f, 256<<10), opt)
}
