package sessions

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// reuseFloodSurvival runs the flood of issue 6 against a raw store:
// `active` users with sessions established by `warmup` requests each,
// then a flood of 2×capacity attack sessions, each created and then used
// k-1 more times (the first at once, the others spread over the next
// seconds, as an attacker keeping many sessions warm would), while every user makes `during`
// requests interleaved with the flood. The clock advances a millisecond
// per request. It returns the share of users whose session survived.
func reuseFloodSurvival(t *testing.T, capacity, active, warmup, during, k int) float64 {
	t.Helper()
	ctx := context.Background()
	m, err := NewMemoryStore(capacity)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC).UnixNano()
	tick := func() int64 { now += int64(time.Millisecond); return now }
	commit := func() ID {
		id := newID()
		if err := m.Commit(ctx, newSession(id, tick()), &Changes{New: true}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	// use is a request of the engine: a lookup, then lastSeen.
	use := func(id ID) bool {
		at := tick()
		s := m.findAt(id, at)
		if s != nil {
			s.lastSeen.Store(at)
		}
		return s != nil
	}
	users := make([]ID, active)
	for i := range users {
		users[i] = commit()
	}
	for range warmup - 1 {
		for _, id := range users {
			use(id)
		}
	}
	// The attacker spaces the uses of a session more than a second
	// apart, so that each counts as a new use for the store's recency
	// too. A step is k+2 requests of a millisecond.
	spread := 1100/(k+2) + 1
	flood := 2 * capacity
	attack := make([]ID, 0, flood)
	userUses := active * during
	next := 0
	for n := range flood {
		attack = append(attack, commit())
		for j := 1; j < k; j++ {
			if i := n - (j-1)*spread; i >= 0 {
				use(attack[i])
			}
		}
		// The users' requests, spread evenly over the flood.
		for ; next < userUses*(n+1)/flood; next++ {
			use(users[next%active])
		}
	}
	found := 0
	for _, id := range users {
		if s := m.findAt(id, tick()); s != nil {
			found++
		}
	}
	return float64(found) / float64(active)
}

// TestMemoryStoreResistsReusedFloods: sessions used twice or five times
// by an attacker do not push out users who use theirs more. The old 2Q
// store kept none of them: a second use was all it took to look
// established.
func TestMemoryStoreResistsReusedFloods(t *testing.T) {
	const capacity, active = 1000, 400
	for _, k := range []int{2, 5} {
		got := reuseFloodSurvival(t, capacity, active, 2, 10, k)
		t.Logf("%d%% of %d active users survived a flood of %d sessions used %d times each", int(100*got), active, 2*capacity, k)
		if got < 0.9 {
			t.Errorf("flood of sessions used %d times: %.1f%% of active users survived, want ≥ 90%%", k, 100*got)
		}
	}
}

// TestCacheResistsReusedFloods is the same flood through the engine,
// whose clock advances a millisecond per request: the attacker's uses are
// requests with its session cookie and no Set-Cookie.
func TestCacheResistsReusedFloods(t *testing.T) {
	const capacity, active, warmup, during = 1000, 400, 2, 10
	for _, k := range []int{2, 5} {
		clock := newTestClock()
		c := newTestCache(t, Config{MaxSessions: capacity, Logger: discardLogger(), Now: clock.Now})
		u := mustURL(t, "https://example.com/app/")
		request := func(jar browserJar) bool {
			clock.Advance(time.Millisecond)
			return expand(t, c, u, jar).HasSession()
		}
		users := make([]browserJar, active)
		for i := range users {
			clock.Advance(time.Millisecond)
			users[i] = exchange(t, c, u, nil, []string{"sid=user"})
		}
		for range warmup - 1 {
			for _, jar := range users {
				request(jar)
			}
		}
		spread := 1100/(k+2) + 1 // uses of an attack session over a second apart
		flood := 2 * capacity
		attack := make([]browserJar, 0, flood)
		userUses := active * during
		next := 0
		for n := range flood {
			clock.Advance(time.Millisecond)
			attack = append(attack, exchange(t, c, u, nil, []string{"bot=1"}))
			for j := 1; j < k; j++ {
				if i := n - (j-1)*spread; i >= 0 {
					request(attack[i])
				}
			}
			for ; next < userUses*(n+1)/flood; next++ {
				request(users[next%active])
			}
		}
		found := 0
		for _, jar := range users {
			if request(jar) {
				found++
			}
		}
		t.Logf("through the engine: %d of %d active users survived a flood of %d sessions used %d times each", found, active, flood, k)
		if found < active*9/10 {
			t.Errorf("flood of sessions used %d times: %d of %d active users survived, want ≥ 90%%", k, found, active)
		}
	}
}

// TestMemoryStoreWrongSecretDoesNotPromote: lookups with the right key
// and a wrong secret must not count as uses. A session that only ever
// gets such lookups is evicted by a flood like one never used; with the
// secret compared after the LRU promotion, it survived.
func TestMemoryStoreWrongSecretDoesNotPromote(t *testing.T) {
	ctx := context.Background()
	const capacity = 100
	m, err := NewMemoryStore(capacity)
	if err != nil {
		t.Fatal(err)
	}
	id := newID()
	if err := m.Commit(ctx, newSession(id, 0), &Changes{New: true}); err != nil {
		t.Fatal(err)
	}
	forged := id
	forged.b[idBytes-1] ^= 1
	for range 10 {
		if s := m.findAt(forged, 0); s != nil {
			t.Fatal("a wrong secret found the session")
		}
	}
	for range capacity {
		if err := m.Commit(ctx, newSession(newID(), 0), &Changes{New: true}); err != nil {
			t.Fatal(err)
		}
	}
	if s := m.findAt(id, 0); s != nil {
		t.Error("a session looked up only with a wrong secret survived a flood: the lookups promoted it")
	}
}

// TestUseCountsDecay: a session's count halves every freqHalfLife, so
// that protection goes to recent use.
func TestUseCountsDecay(t *testing.T) {
	s := newSession(newID(), 1000*int64(time.Second))
	e := newMemEntry(s, 0)
	now := s.created
	for range 20 {
		e.use(now)
	}
	if f := e.frequency(now); f != 21 {
		t.Fatalf("count after 21 uses = %d", f)
	}
	now += freqHalfLife * int64(time.Second)
	if f := e.frequency(now); f != 10 {
		t.Errorf("count one half-life later = %d, want 10", f)
	}
	// Steady use more often than the half-life still decays.
	for range 8 {
		now += freqHalfLife * int64(time.Second) / 2
		e.use(now)
	}
	if f := e.frequency(now); f > 4 {
		t.Errorf("count after 8 uses at half-life/2 intervals = %d, want the decayed rate (≤ 4)", f)
	}
	if f := e.frequency(now + 10*freqHalfLife*int64(time.Second)); f != 0 {
		t.Errorf("count long after = %d", f)
	}
	if f := e.frequency(now - int64(time.Hour)); f == 0 {
		t.Error("a clock that went back erased the count")
	}
	for range 300 {
		e.use(now)
	}
	if f := e.frequency(now); f != maxFreq {
		t.Errorf("count saturates at %d, want %d", f, maxFreq)
	}
}

// TestLongHostsAndPathsAreRejected: a request host longer than a DNS name
// and a default path longer than an attribute may be create no cookie,
// and so no session (issue 5: each would cost the store its length).
func TestLongHostsAndPathsAreRejected(t *testing.T) {
	c := newTestCache(t, Config{Logger: discardLogger()})
	label := strings.Repeat("a", 63)
	long := strings.Repeat(label+".", 4) + "com" // 259 bytes
	ok := strings.Repeat(label+".", 3) + strings.Repeat("b", 57) + ".com"
	if len(ok) != 253 {
		t.Fatalf("len(ok) = %d", len(ok))
	}
	cases := []struct {
		name, host, path string
		want             RejectReason
	}{
		{"long host", long, "/", RejectNoHost},
		{"32 KB host", strings.Repeat("a", 32<<10) + ".com", "/", RejectNoHost},
		{"long host, upper case", strings.ToUpper(long) + ":443", "/", RejectNoHost},
		{"long IPv6 zone", "[fe80::1%" + strings.Repeat("e", 300) + "]", "/", RejectNoHost},
		{"long default path", "example.com", "/" + strings.Repeat("p", 1024) + "/x", RejectPathTooLong},
		{"32 KB default path", "example.com", "/" + strings.Repeat("p", 32<<10) + "/x", RejectPathTooLong},
		{"253-byte host", ok, "/", RejectNone},
		{"1024-byte default path", "example.com", "/" + strings.Repeat("p", 1023) + "/x", RejectNone},
		{"long path, short default", "example.com", "/" + strings.Repeat("p", 32<<10), RejectNone},
	}
	for _, tc := range cases {
		before := c.Stats()
		req := &Request{Scheme: "https", Host: tc.host, Path: tc.path}
		x, _ := roundTrip(t, c, req, &Response{SetCookie: []string{"a=b"}})
		after := c.Stats()
		if tc.want == RejectNone {
			if !x.HasSession() {
				t.Errorf("%s: no session", tc.name)
			}
			continue
		}
		if x.HasSession() || after.SessionsCreated != before.SessionsCreated {
			t.Errorf("%s: a session was created", tc.name)
		}
		if after.CookiesRejected[tc.want] != before.CookiesRejected[tc.want]+1 {
			t.Errorf("%s: not rejected as %v", tc.name, tc.want)
		}
	}
}

// TestMemoryStoreStaysWithinItsByteBudget: a flood of sessions with the
// largest host and default path the jar accepts, and sessions that grow
// after they were created, keep the store's estimate within its budget,
// and the estimate follows what the jars hold.
func TestMemoryStoreStaysWithinItsByteBudget(t *testing.T) {
	const budget = 1 << 20
	m, err := NewMemoryStoreLimits(100_000, budget)
	if err != nil {
		t.Fatal(err)
	}
	c := newTestCache(t, Config{Store: m, Logger: discardLogger()})
	host := strings.Repeat("h", 240) + ".com"
	path := "/" + strings.Repeat("p", 1022) + "/x"
	// A user whose session grows to many cookies after it was created.
	user := exchange(t, c, mustURL(t, "https://example.com/"), nil, []string{"a=1"})
	created := m.Bytes()
	for i := range 20 {
		exchange(t, c, mustURL(t, "https://example.com/"), user, []string{fmt.Sprintf("c%d=%s", i, strings.Repeat("v", 1000))})
	}
	if grown := m.Bytes(); grown < created+20*1000 {
		t.Errorf("after 20 cookies of 1000 bytes the estimate grew from %d to %d: growth is not counted", created, grown)
	}
	for i := range 20_000 {
		var req Request
		if i%2 == 0 {
			req = Request{Scheme: "https", Host: fmt.Sprintf("%06d", i) + host[6:], Path: "/"}
		} else {
			req = Request{Scheme: "https", Host: "example.com", Path: fmt.Sprintf("/%06d", i) + path[7:]}
		}
		if x, _ := roundTrip(t, c, &req, &Response{SetCookie: []string{"t=1"}}); !x.HasSession() {
			t.Fatalf("request %d created no session", i)
		}
		if b := m.Bytes(); b > budget {
			t.Fatalf("after %d sessions the store holds an estimated %d bytes, over its budget of %d", i+1, b, budget)
		}
	}
	if m.Evictions() == 0 || m.Len() >= 20_000 {
		t.Errorf("Len = %d, Evictions = %d: the byte budget did not bind", m.Len(), m.Evictions())
	}
	// The estimate is the sum of the sessions' estimates.
	var sum int64
	m.mu.RLock()
	for _, e := range m.index {
		e.s.mu.Lock()
		if got := sessionHeapBytes(e.s); got != e.sizeBytes() {
			t.Errorf("entry size %d, session estimate %d", e.sizeBytes(), got)
		}
		e.s.mu.Unlock()
		sum += int64(e.sizeBytes())
	}
	if sum != m.bytes || m.probation.bytes+m.protected.bytes != m.bytes || m.probation.len+m.protected.len != len(m.index) {
		t.Errorf("books: sum %d, total %d, segments %d+%d; %d+%d entries of %d", sum, m.bytes,
			m.probation.bytes, m.protected.bytes, m.probation.len, m.protected.len, len(m.index))
	}
	m.mu.RUnlock()
	if _, err := NewMemoryStoreLimits(10, 1000); err == nil {
		t.Error("a budget under 1 MiB was accepted")
	}
	if err := (Config{MaxMemory: 1000}).Validate(); err == nil || !strings.Contains(err.Error(), "max memory") {
		t.Errorf("Validate(MaxMemory: 1000) = %v", err)
	}
}

// TestMemoryStoreBooksUnderConcurrency: sessions that grow in parallel
// exchanges while others are created, promoted and evicted keep the
// store's books exact (run with -race).
func TestMemoryStoreBooksUnderConcurrency(t *testing.T) {
	m, err := NewMemoryStoreLimits(200, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	c := newTestCache(t, Config{Store: m, Logger: discardLogger()})
	u := mustURL(t, "https://example.com/")
	shared := exchange(t, c, u, nil, []string{"a=1"})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 300 {
				req := requestFor(u, shared)
				roundTrip(t, c, req, &Response{SetCookie: []string{fmt.Sprintf("g%d_%d=%s", g, i%40, strings.Repeat("v", 500))}})
				exchange(t, c, u, nil, []string{"one=shot"})
			}
		})
	}
	wg.Wait()
	m.mu.RLock()
	defer m.mu.RUnlock()
	var sum int64
	for _, e := range m.index {
		sum += int64(e.sizeBytes())
	}
	if sum != m.bytes || m.bytes > 1<<20 || m.probation.bytes+m.protected.bytes != m.bytes {
		t.Errorf("books: entries %d, total %d, segments %d+%d, budget %d", sum, m.bytes, m.probation.bytes, m.protected.bytes, 1<<20)
	}
}
