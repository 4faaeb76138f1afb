package sessions

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// journalCookie returns a cookie as the jar stores it from a Set-Cookie
// line received from https://example.com/ at a time just after 0 (each
// cookie a little later: creation times are unique in a jar).
func journalCookie(t testing.TB, line string) Cookie {
	t.Helper()
	journalClock++
	now := journalClock
	s := newSession(ID{}, now)
	sc, reason := parseSetCookie(line)
	if reason != RejectNone {
		t.Fatalf("%q: %v", line, reason)
	}
	o := origin{host: "example.com", path: "/", secure: true}
	lim := jarLimits{maxLifetime: int64(maxCookieAge), perDomain: 50, perSession: 60, bytes: 8 << 10}
	if res := s.setCookie(&sc, &o, now, &lim, nil); !res.stored {
		t.Fatalf("%q not stored: %+v", line, res)
	}
	return s.cookies[0]
}

var journalClock int64

// journalState is what a journal asks a store to do, by Key: "store:"
// and the pair, "delete" (unconditional), or "purge:" and the revision
// (a deletion on condition of that revision).
func journalState(t *testing.T, ch *Changes) map[string]string {
	t.Helper()
	got := map[string]string{}
	add := func(k, op string) {
		if prev, dup := got[k]; dup {
			t.Fatalf("journal holds %q twice: %s and %s", k, prev, op)
		}
		got[k] = op
	}
	for i := range ch.Stored {
		add(ch.Stored[i].Key(), "store:"+ch.Stored[i].pair)
	}
	for _, d := range ch.Deleted {
		if d.Revision == "" {
			add(d.Key, "delete")
		} else {
			add(d.Key, "purge:"+d.Revision)
		}
	}
	if ch.index != nil {
		if len(ch.index) != len(got) {
			t.Fatalf("index holds %d keys, journal %d", len(ch.index), len(got))
		}
		for k, ref := range ch.index {
			var at string
			if ref.deleted {
				at = ch.Deleted[ref.i].Key
			} else {
				at = ch.Stored[ref.i].Key()
			}
			if at != k {
				t.Fatalf("index points %q at %q", k, at)
			}
		}
	}
	return got
}

// TestChangesLastOperationWins: the journal holds one operation per
// cookie identity, the last; a purge carries the revision the store
// handed out, and a purge of a cookie the store never had leaves nothing.
// Small journals (searched) and large ones (indexed) alike.
func TestChangesLastOperationWins(t *testing.T) {
	for _, filler := range []int{0, 3, journalIndexAt, 100} {
		t.Run(fmt.Sprint(filler), func(t *testing.T) {
			var ch Changes
			want := map[string]string{}
			for i := range filler {
				c := journalCookie(t, fmt.Sprintf("f%d=1", i))
				ch.store(&c)
				want[c.Key()] = "store:" + c.pair
			}
			a1, a2 := journalCookie(t, "a=1"), journalCookie(t, "a=2")
			b := journalCookie(t, "b=1")
			c := journalCookie(t, "c=1")
			d := journalCookie(t, "d=1")
			otherPath := journalCookie(t, "a=3; Path=/x")
			revs := map[string]string{a1.Key(): "rev-a", c.Key(): "rev-c"}

			ch.store(&a1)
			ch.store(&a2) // replaces
			ch.store(&otherPath)
			if got := journalState(t, &ch); got[a1.Key()] != "store:a=2" || got[otherPath.Key()] != "store:a=3" {
				t.Fatalf("after two stores of a: %v", got)
			}
			ch.delete(&a2)
			if got := journalState(t, &ch); got[a1.Key()] != "delete" {
				t.Fatalf("store then delete: %q", got[a1.Key()])
			}
			ch.store(&a1)
			if got := journalState(t, &ch); got[a1.Key()] != "store:a=1" {
				t.Fatalf("delete then store: %q", got[a1.Key()])
			}
			ch.purge(&a1, revs)
			want[a1.Key()] = "purge:rev-a" // the revision read, though the exchange rewrote it since
			want[otherPath.Key()] = "store:a=3"

			ch.store(&b)
			ch.purge(&b, revs) // stored by this exchange only: nothing to write

			ch.purge(&c, revs)
			ch.delete(&c) // the backend's deletion wins
			ch.delete(&c)
			want[c.Key()] = "delete"

			ch.delete(&d)
			ch.purge(&d, nil) // cannot happen in the jar; last operation wins all the same
			if got := journalState(t, &ch); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("journal\n%v\nwant\n%v", got, want)
			}
			if ch.Empty() {
				t.Error("Empty")
			}
		})
	}
}

// TestChangesMatchModel runs random operations on a few identities and
// compares the journal with a map of the last operation per identity.
func TestChangesMatchModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, identities := range []int{2, 10, 60} {
		cookies := make([]Cookie, 2*identities) // two values per identity
		revs := map[string]string{}
		for i := range cookies {
			cookies[i] = journalCookie(t, fmt.Sprintf("n%d=%d", i/2, i%2))
			if i%4 == 0 {
				revs[cookies[i].Key()] = fmt.Sprintf("r%d", i)
			}
		}
		for range 200 {
			var ch Changes
			model := map[string]string{}
			for range rng.IntN(4 * identities) {
				c := &cookies[rng.IntN(len(cookies))]
				k := c.Key()
				switch rng.IntN(3) {
				case 0:
					ch.store(c)
					model[k] = "store:" + c.pair
				case 1:
					ch.delete(c)
					model[k] = "delete"
				case 2:
					ch.purge(c, revs)
					if rev, ok := revs[k]; ok {
						model[k] = "purge:" + rev
					} else {
						delete(model, k)
					}
				}
			}
			if got := journalState(t, &ch); fmt.Sprint(got) != fmt.Sprint(model) {
				t.Fatalf("journal\n%v\nmodel\n%v", got, model)
			}
		}
	}
}

// TestJarJournalsPurgesAndDeletions: in a restored session, the jar
// journals a cookie it finds expired or evicts as a purge with the
// store's revision, and a backend's expired Set-Cookie as a deletion.
func TestJarJournalsPurgesAndDeletions(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	old := journalCookie(t, "old=1")
	expiring := journalCookie(t, "tok=1; Max-Age=60")
	gone := journalCookie(t, "gone=1")
	s := RestoreSessionRevisions(newID(), now, now, []Cookie{old, expiring, gone}, []string{"r-old", "r-tok", "r-gone"})
	o := origin{host: "example.com", path: "/", secure: true}
	lim := jarLimits{maxLifetime: int64(maxCookieAge), perDomain: 50, perSession: 3, bytes: 8 << 10}
	var ch Changes
	at := now.Add(time.Hour).UnixNano() // tok has expired
	for _, line := range []string{"gone=; Max-Age=0", "new1=1", "new2=1", "new3=1"} {
		sc, _ := parseSetCookie(line)
		s.setCookie(&sc, &o, at, &lim, &ch)
	}
	// tok goes when new1 arrives; new3 makes four, and old, the least
	// recently used, goes.
	want := map[string]string{
		gone.Key():     "delete",
		expiring.Key(): "purge:r-tok",
		old.Key():      "purge:r-old",
	}
	for _, c := range s.cookies {
		want[c.Key()] = "store:" + c.pair
	}
	if got := journalState(t, &ch); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("journal\n%v\nwant\n%v", got, want)
	}
	if len(s.cookies) != 3 {
		t.Errorf("jar holds %d cookies", len(s.cookies))
	}
}

// BenchmarkJournal stores one response's Set-Cookie lines in a session
// with a journal, as the engine does for a store that serialises
// sessions: the common few cookies, and 30,000 lines (half new cookies,
// most evicted again by the limits, half deletions).
func BenchmarkJournal(b *testing.B) {
	o := origin{host: "example.com", path: "/", secure: true}
	lim := jarLimits{maxLifetime: int64(maxCookieAge), perDomain: DefaultMaxCookiesPerDomain,
		perSession: DefaultMaxCookiesPerSession, bytes: DefaultMaxBytesPerSession}
	few := []string{"sid=" + benchCookieValue(1) + "; Path=/; HttpOnly", "user=" + benchCookieValue(2), "prefs=" + benchCookieValue(3)}
	var many []string
	for i := range 15000 {
		many = append(many, fmt.Sprintf("c%d=v", i), fmt.Sprintf("d%d=; Max-Age=0", i))
	}
	for _, lines := range [][]string{few, many} {
		parsed := make([]setCookie, len(lines))
		for i, line := range lines {
			parsed[i], _ = parseSetCookie(line)
		}
		b.Run(fmt.Sprint(len(lines)), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				s := newSession(ID{}, 1000)
				var ch Changes
				for i := range parsed {
					s.setCookie(&parsed[i], &o, 1000, &lim, &ch)
				}
			}
		})
	}
}
