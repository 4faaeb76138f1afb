package sessions

import (
	"context"
	"sync"
	"testing"

	lru "github.com/hashicorp/golang-lru/v2"
)

// plainLRUStore is a Store on a plain LRU, for comparison only: it shows
// that the scan-resistance test can fail.
type plainLRUStore struct {
	cache *lru.Cache[[idKeyBytes]byte, *Session]
}

func (p *plainLRUStore) Find(_ context.Context, id ID) (*Session, error) {
	s, ok := p.cache.Get(id.Key())
	if !ok {
		return nil, nil
	}
	return s, nil
}

func (p *plainLRUStore) Commit(_ context.Context, s *Session, ch *Changes) error {
	if ch.New {
		p.cache.Add(s.id.Key(), s)
	}
	return nil
}

func (p *plainLRUStore) Delete(_ context.Context, id ID) error {
	p.cache.Remove(id.Key())
	return nil
}

// survivalAfterFlood creates `active` sessions in use, then floods the
// store with one-shot sessions, ten times its capacity, while the active
// sessions keep being used, each once per 2×capacity new sessions (a
// plain LRU forgets them in between), and returns the share of active
// sessions still found at the end.
func survivalAfterFlood(t *testing.T, store Store, capacity, active int) float64 {
	t.Helper()
	ctx := context.Background()
	ids := make([]ID, active)
	for i := range ids {
		ids[i] = newID()
		if err := store.Commit(ctx, newSession(ids[i], 0), &Changes{New: true}); err != nil {
			t.Fatal(err)
		}
	}
	use := func(i int) {
		if _, err := store.Find(ctx, ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	for i := range ids {
		use(i)
	}
	next := 0
	for n := range 10 * capacity {
		if err := store.Commit(ctx, newSession(newID(), 0), &Changes{New: true}); err != nil {
			t.Fatal(err)
		}
		// Spread the active sessions' requests over the flood.
		if n%(2*capacity/active) == 0 {
			use(next % active)
			next++
		}
	}
	found := 0
	for _, id := range ids {
		if s, _ := store.Find(ctx, id); s != nil {
			found++
		}
	}
	return float64(found) / float64(active)
}

func TestMemoryStoreIsScanResistant(t *testing.T) {
	const capacity, active = 1000, 400
	mem, err := NewMemoryStore(capacity)
	if err != nil {
		t.Fatal(err)
	}
	got := survivalAfterFlood(t, mem, capacity, active)
	t.Logf("memory store: %.1f%% of active sessions survived a flood of %d one-shot sessions", 100*got, 10*capacity)
	if got < 0.9 {
		t.Errorf("only %.1f%% of active sessions survived, want ≥ 90%%", 100*got)
	}
	if ev := mem.Evictions(); ev != 10*capacity+active-capacity {
		t.Errorf("Evictions = %d, want %d", ev, 10*capacity+active-capacity)
	}
	if mem.Len() != capacity {
		t.Errorf("Len = %d, want %d", mem.Len(), capacity)
	}

	plain, err := lru.New[[idKeyBytes]byte, *Session](capacity)
	if err != nil {
		t.Fatal(err)
	}
	if got := survivalAfterFlood(t, &plainLRUStore{plain}, capacity, active); got >= 0.9 {
		t.Errorf("a plain LRU kept %.1f%% of active sessions: the test does not measure scan resistance", 100*got)
	} else {
		t.Logf("plain LRU: %.1f%% survived", 100*got)
	}
}

func TestMemoryStoreChecksSecret(t *testing.T) {
	ctx := context.Background()
	m, err := NewMemoryStore(10)
	if err != nil {
		t.Fatal(err)
	}
	id := newID()
	if err := m.Commit(ctx, newSession(id, 0), &Changes{New: true}); err != nil {
		t.Fatal(err)
	}
	forged := id
	forged.b[idBytes-1] ^= 1
	if s, err := m.Find(ctx, forged); s != nil || err != nil {
		t.Errorf("Find with a wrong secret = %v, %v", s, err)
	}
	if err := m.Delete(ctx, forged); err != nil {
		t.Fatal(err)
	}
	if s, _ := m.Find(ctx, id); s == nil {
		t.Error("Delete with a wrong secret removed the session")
	}
	if err := m.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if s, _ := m.Find(ctx, id); s != nil {
		t.Error("Delete did not remove the session")
	}
	if _, err := NewMemoryStore(0); err == nil {
		t.Error("NewMemoryStore(0) succeeded")
	}
}

func TestMemoryStoreConcurrentUse(t *testing.T) {
	ctx := context.Background()
	m, err := NewMemoryStore(50)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 500 {
				id := newID()
				if err := m.Commit(ctx, newSession(id, 0), &Changes{New: true}); err != nil {
					t.Error(err)
				}
				m.Find(ctx, id)
				if id.b[0]%2 == 0 {
					m.Delete(ctx, id)
				}
			}
		})
	}
	wg.Wait()
	if m.Len() > 50 {
		t.Errorf("Len = %d beyond capacity", m.Len())
	}
}

func TestCookieEncodingRejectsGarbage(t *testing.T) {
	c := newTestCache(t, Config{})
	u := mustURL(t, "https://example.com/")
	b := exchange(t, c, u, nil, []string{"a=b; Path=/x; Secure; SameSite=Strict; Max-Age=60"})
	id, _ := ParseID(b[c.CookieName()])
	s, _ := c.Store().Find(context.Background(), id)
	ck := s.Cookies()[0]
	enc, err := ck.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var d Cookie
	if err := d.UnmarshalBinary(enc); err != nil || d != ck {
		t.Fatalf("round trip: %v", err)
	}
	if d.Name() != "a" || d.Value() != "b" || d.Path() != "/x" || d.Domain() != "example.com" || !d.Secure() ||
		!d.HostOnly() || d.HTTPOnly() || d.SameSite() != SameSiteStrict || d.Expires().IsZero() {
		t.Errorf("decoded cookie = %+v", d)
	}
	for i := range enc {
		bad := append([]byte(nil), enc[:i]...)
		if err := d.UnmarshalBinary(bad); err == nil {
			t.Errorf("truncated encoding (%d of %d bytes) accepted", i, len(enc))
		}
	}
	if err := d.UnmarshalBinary(append(enc, 0)); err == nil {
		t.Error("encoding with trailing garbage accepted")
	}
	restored := RestoreSession(id, s.Created(), s.LastSeen(), []Cookie{d})
	if got := restored.Cookies(); len(got) != 1 || got[0] != ck {
		t.Errorf("RestoreSession cookies = %+v", got)
	}
}

// TestChangesCarryTheJarsCookies: what a serialising store is told to
// write is exactly what the jar holds, creation times included (they
// order cookies of equal path length).
func TestChangesCarryTheJarsCookies(t *testing.T) {
	s := newSession(newID(), 1000)
	var ch Changes
	o := origin{host: "example.com", path: "/", secure: true}
	lim := jarLimits{maxLifetime: int64(maxCookieAge), perDomain: 50, perSession: 60, bytes: 8 << 10}
	for _, line := range []string{"a=1", "b=2", "c=3"} {
		sc, _ := parseSetCookie(line)
		s.setCookie(&sc, &o, 1000, &lim, &ch)
	}
	if len(ch.Stored) != 3 {
		t.Fatalf("journal holds %d cookies", len(ch.Stored))
	}
	for i, c := range s.cookies {
		if ch.Stored[i] != c {
			t.Errorf("journal cookie %d = %+v, jar holds %+v", i, ch.Stored[i], c)
		}
	}
}

// TestCacheIsScanResistant is the flood of TestMemoryStoreIsScanResistant
// through the engine, where sessions in use mostly take the store's
// Peek path: their first use must still promote them.
func TestCacheIsScanResistant(t *testing.T) {
	const capacity, active = 1000, 400
	c := newTestCache(t, Config{MaxSessions: capacity, Logger: discardLogger()})
	u := mustURL(t, "https://example.com/")
	jars := make([]browserJar, active)
	for i := range jars {
		jars[i] = exchange(t, c, u, nil, []string{"a=1"})
		expand(t, c, u, jars[i]) // in use
	}
	next := 0
	for n := range 10 * capacity {
		exchange(t, c, u, nil, []string{"bot=1"})
		if n%(2*capacity/active) == 0 {
			expand(t, c, u, jars[next%active])
			next++
		}
	}
	found := 0
	for _, jar := range jars {
		if x := expand(t, c, u, jar); x.HasSession() {
			found++
		}
	}
	if found < active*9/10 {
		t.Errorf("%d of %d sessions in use survived the flood, want ≥ 90%%", found, active)
	}
}
