package sessions

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// stateBrowser is a browser of the state file tests: its session cookie
// and what the backend saw with it.
type stateBrowser struct {
	cookie   string // the session cookie's value
	header   string // the Cookie header the backend got for statePage
	cookies  []Cookie
	loggedIn bool
}

const statePage = "/app/x/page"

func stateRequest(b *stateBrowser) *Request {
	req := &Request{Scheme: "https", Host: "shop.example.com", Path: statePage}
	if b != nil {
		req.Cookies = []string{DefaultCookieName + "=" + b.cookie}
	}
	return req
}

// newStateCache returns a Cache on its own memory store.
func newStateCache(t testing.TB, clock *testClock, maxSessions int) (*Cache, *MemoryStore) {
	t.Helper()
	store, err := NewMemoryStore(maxSessions)
	if err != nil {
		t.Fatal(err)
	}
	return newTestCache(t, Config{Store: store, Now: clock.Now, Logger: discardLogger()}), store
}

// stateLogins logs n browsers in: each session gets cookies on several
// paths, with and without expiry (one of which expires soon), set over
// two responses so that their creation times differ; every third
// browser comes back a few times (its session is promoted).
func stateLogins(t *testing.T, c *Cache, clock *testClock, n int) []*stateBrowser {
	t.Helper()
	browsers := make([]*stateBrowser, n)
	for i := range browsers {
		_, edit := roundTrip(t, c, stateRequest(nil), &Response{SetCookie: []string{
			fmt.Sprintf("session_token_q7=tokval-%d-zx; Path=/; Secure; HttpOnly", i),
			fmt.Sprintf("prefs_q7=prefval-%d-zx; Path=/app; Max-Age=86400; SameSite=Strict", i),
			"shortlived_q7=gone; Max-Age=30",
		}})
		if len(edit.SetCookie) != 1 {
			t.Fatalf("login %d: %q", i, edit.SetCookie)
		}
		b := &stateBrowser{cookie: strings.TrimPrefix(strings.SplitN(edit.SetCookie[0], ";", 2)[0], DefaultCookieName+"="), loggedIn: true}
		clock.Advance(time.Millisecond)
		roundTrip(t, c, stateRequest(b), &Response{SetCookie: []string{
			fmt.Sprintf("deep_q7=deepval-%d-zx; Path=/app/x; Expires=Wed, 01 Jan 2031 00:00:00 GMT", i),
			fmt.Sprintf("session_token_q7=tokval-%d-zx-renewed; Path=/; Secure; HttpOnly", i),
		}})
		for range i % 3 {
			roundTrip(t, c, stateRequest(b), nil)
		}
		browsers[i] = b
	}
	return browsers
}

// observe records what the backend sees for each browser, and its jar.
func observe(t *testing.T, c *Cache, browsers []*stateBrowser) {
	t.Helper()
	for i, b := range browsers {
		x, _ := roundTrip(t, c, stateRequest(b), nil)
		if x.HasSession() != b.loggedIn {
			t.Fatalf("browser %d: session %v, logged in %v", i, x.HasSession(), b.loggedIn)
		}
		b.header = x.Cookie
		b.cookies = nil
		if x.session != nil {
			// Expired cookies are never sent; the jar drops them in time,
			// a state file at once.
			for _, ck := range x.session.Cookies() {
				if !ck.expired(c.now().UnixNano()) {
					b.cookies = append(b.cookies, ck)
				}
			}
		}
	}
}

// TestStateFileRoundTrip: 1,000 sessions written and loaded into a new
// store give every browser the same backend cookies, in the same order
// and with the same expiry; logged out sessions stay logged out; cookies
// that expired are gone; the file holds no cookie, name, domain or id.
func TestStateFileRoundTrip(t *testing.T) {
	clock := newTestClock()
	c1, store1 := newStateCache(t, clock, 10_000)
	browsers := stateLogins(t, c1, clock, 1000)
	for i := 0; i < len(browsers); i += 10 {
		// Logout: the backend clears the site's cookies.
		x, _ := roundTrip(t, c1, stateRequest(browsers[i]), &Response{ClearSiteData: []string{`"cookies"`}})
		if x.HasSession() {
			t.Fatal("session survived its logout")
		}
		browsers[i].loggedIn = false
	}
	clock.Advance(time.Minute) // shortlived_q7 expires
	observe(t, c1, browsers)
	if strings.Contains(browsers[1].header, "shortlived") || !strings.Contains(browsers[1].header, "deep_q7=") {
		t.Fatalf("before the restart the backend sees %q", browsers[1].header)
	}

	path := filepath.Join(t.TempDir(), "state")
	opt := StateOptions{Now: clock.Now}
	info, err := store1.SaveStateFile(path, opt)
	if err != nil {
		t.Fatal(err)
	}
	if info.Sessions != 900 || info.Ended != 0 {
		t.Errorf("wrote %+v, want 900 sessions", info)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != info.Bytes {
		t.Fatalf("state file: %v, %v (info %+v)", fi.Mode(), err, info)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"_q7", "tokval", "prefval", "deepval", "example.com", "/app"} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("the state file contains %q", secret)
		}
	}
	for _, b := range browsers {
		id, _ := ParseID(b.cookie)
		key, secret := id.Key(), id.Secret()
		if bytes.Contains(raw, []byte(b.cookie)) || bytes.Contains(raw, key[:8]) || bytes.Contains(raw, secret[:8]) {
			t.Fatal("the state file contains a session id")
		}
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Errorf("the directory holds %d files, want the state file alone", len(ents))
	}

	// The restart: a new process, an hour later.
	clock.Advance(time.Hour)
	c2, store2 := newStateCache(t, clock, 10_000)
	loaded, err := store2.LoadStateFile(path, opt)
	if err != nil || loaded.Sessions != 900 || loaded.Bytes != info.Bytes {
		t.Fatalf("loaded %+v, %v", loaded, err)
	}
	if store2.Len() != 900 || store2.Dormant() != 900 || store2.Bytes() == 0 {
		t.Fatalf("after loading: %d sessions, %d sealed, %d bytes", store2.Len(), store2.Dormant(), store2.Bytes())
	}
	before := make([]stateBrowser, len(browsers))
	for i, b := range browsers {
		before[i] = *b
	}
	observe(t, c2, browsers)
	for i, b := range browsers {
		if b.header != before[i].header {
			t.Errorf("browser %d: the backend saw %q before the restart, %q after", i, before[i].header, b.header)
		}
		if len(b.cookies) != len(before[i].cookies) {
			t.Fatalf("browser %d: %d cookies before, %d after", i, len(before[i].cookies), len(b.cookies))
		}
		for j := range b.cookies {
			// Sending a cookie updates its access time.
			b.cookies[j].accessed, before[i].cookies[j].accessed = 0, 0
			if b.cookies[j] != before[i].cookies[j] {
				t.Errorf("browser %d cookie %d: %+v before, %+v after", i, j, before[i].cookies[j], b.cookies[j])
			}
		}
	}
	if store2.Dormant() != 0 || store2.Len() != 900 || store2.Undecryptable() != 0 {
		t.Errorf("after every browser came back: %d sessions, %d sealed, %d undecryptable", store2.Len(), store2.Dormant(), store2.Undecryptable())
	}
}

// TestStateFileResave: sessions still sealed are written again as they
// are, so that a second restart keeps them; woken ones are written anew.
func TestStateFileResave(t *testing.T) {
	clock := newTestClock()
	c1, store1 := newStateCache(t, clock, 1000)
	browsers := stateLogins(t, c1, clock, 40)
	observe(t, c1, browsers)
	want := make([]string, len(browsers))
	for i, b := range browsers {
		want[i] = b.header
	}
	dir := t.TempDir()
	opt := StateOptions{Now: clock.Now}
	first := filepath.Join(dir, "first")
	if _, err := store1.SaveStateFile(first, opt); err != nil {
		t.Fatal(err)
	}
	c2, store2 := newStateCache(t, clock, 1000)
	if _, err := store2.LoadStateFile(first, opt); err != nil {
		t.Fatal(err)
	}
	// Half the browsers come back, and one gets a new cookie.
	observe(t, c2, browsers[:20])
	roundTrip(t, c2, stateRequest(browsers[0]), &Response{SetCookie: []string{"late_q7=1; Path=/"}})
	if store2.Dormant() != 20 {
		t.Fatalf("%d sealed, want 20", store2.Dormant())
	}
	second := filepath.Join(dir, "second")
	if info, err := store2.SaveStateFile(second, opt); err != nil || info.Sessions != 40 {
		t.Fatalf("second save: %+v, %v", info, err)
	}
	c3, store3 := newStateCache(t, clock, 1000)
	if _, err := store3.LoadStateFile(second, opt); err != nil {
		t.Fatal(err)
	}
	observe(t, c3, browsers)
	for i, b := range browsers {
		w := want[i]
		if i == 0 {
			w += "; late_q7=1" // Path=/, and the newest
		}
		if b.header != w {
			t.Errorf("browser %d after two restarts: %q, want %q", i, b.header, w)
		}
	}
}

// TestStateFileEnded: sessions that their lifetime or idle timeout ended
// are neither written nor loaded.
func TestStateFileEnded(t *testing.T) {
	clock := newTestClock()
	c1, store1 := newStateCache(t, clock, 1000)
	stateLogins(t, c1, clock, 5)
	clock.Advance(90 * time.Minute)
	stateLogins(t, c1, clock, 5)
	clock.Advance(40 * time.Minute) // idle's sessions pass the 2h idle timeout
	path := filepath.Join(t.TempDir(), "state")
	opt := StateOptions{Now: clock.Now}
	info, err := store1.SaveStateFile(path, opt)
	if err != nil || info.Sessions != 5 || info.Ended != 5 {
		t.Fatalf("wrote %+v, %v; want 5 sessions and 5 ended", info, err)
	}
	// Loaded two hours later, the other five have ended too.
	clock.Advance(2 * time.Hour)
	_, store2 := newStateCache(t, clock, 1000)
	loaded, err := store2.LoadStateFile(path, opt)
	if err != nil || loaded.Sessions != 0 || loaded.Ended != 5 || store2.Len() != 0 {
		t.Fatalf("loaded %+v, %v; %d sessions", loaded, err, store2.Len())
	}
}

// TestStateFileSecrets: only the right id opens a sealed session. A
// wrong secret finds nothing and changes nothing; a record changed in
// the file (its checksum fixed) fails authentication and is dropped.
func TestStateFileSecrets(t *testing.T) {
	clock := newTestClock()
	c1, store1 := newStateCache(t, clock, 1000)
	browsers := stateLogins(t, c1, clock, 3)
	path := filepath.Join(t.TempDir(), "state")
	opt := StateOptions{Now: clock.Now}
	if _, err := store1.SaveStateFile(path, opt); err != nil {
		t.Fatal(err)
	}
	c2, store2 := newStateCache(t, clock, 1000)
	if _, err := store2.LoadStateFile(path, opt); err != nil {
		t.Fatal(err)
	}
	id, _ := ParseID(browsers[0].cookie)
	forged := id
	forged.b[31] ^= 1
	if s := store2.findAt(forged, clock.Now().UnixNano()); s != nil {
		t.Fatal("a wrong secret opened a sealed session")
	}
	store2.Delete(context.Background(), forged)
	if store2.Dormant() != 3 {
		t.Fatalf("a wrong secret changed the store: %d sealed", store2.Dormant())
	}
	if s := store2.findAt(id, clock.Now().UnixNano()); s == nil || len(s.Cookies()) != 4 {
		t.Fatalf("the right id: %v", s)
	}
	// Deleting a sealed session with its id ends it unopened.
	ctx := context.Background()
	id1, _ := ParseID(browsers[1].cookie)
	store2.Delete(ctx, id1)
	if store2.Dormant() != 1 || store2.Len() != 2 {
		t.Fatalf("after deleting a sealed session: %d sessions, %d sealed", store2.Len(), store2.Dormant())
	}
	if x, _ := roundTrip(t, c2, stateRequest(browsers[1]), nil); x.HasSession() {
		t.Fatal("a deleted sealed session came back")
	}

	// Someone with write access changes a record and fixes the checksum.
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	raw[stateHeaderBytes+stateRecordHead+seal0] ^= 1
	fixChecksum(raw)
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	c3, store3 := newStateCache(t, clock, 1000)
	if _, err := store3.LoadStateFile(path, opt); err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, b := range browsers {
		if x, _ := roundTrip(t, c3, stateRequest(b), nil); x.HasSession() {
			found++
		}
	}
	if found != 2 || store3.Undecryptable() != 1 || store3.Len() != 2 {
		t.Errorf("%d of 3 sessions found, %d undecryptable, %d held; want 2, 1, 2", found, store3.Undecryptable(), store3.Len())
	}
}

// seal0 is an offset into a record's ciphertext, past its nonce.
const seal0 = 14

func fixChecksum(raw []byte) {
	sum := sha256.Sum256(raw[:len(raw)-sha256.Size])
	copy(raw[len(raw)-sha256.Size:], sum[:])
}

// TestStateFileRejected: a file that is not whole, of another version,
// or not private loads nothing, with an error that says why.
func TestStateFileRejected(t *testing.T) {
	clock := newTestClock()
	c1, store1 := newStateCache(t, clock, 1000)
	stateLogins(t, c1, clock, 5)
	dir := t.TempDir()
	opt := StateOptions{Now: clock.Now}
	good := filepath.Join(dir, "good")
	info, err := store1.SaveStateFile(good, opt)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(raw)) }
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "truncated after 0 bytes"},
		{"another kind of file", []byte("{\"sessions\": []}\n"), "another kind of file"},
		{"truncated header", raw[:20], "truncated after 20 bytes, in the header"},
		{"truncated session", raw[:stateHeaderBytes+stateRecordHead+10], "in session 1 of 5"},
		{"no checksum", raw[:len(raw)-sha256.Size], "in the checksum"},
		{"half a checksum", raw[:len(raw)-10], "in the checksum"},
		{"foreign version", edit(func(b []byte) []byte { binary.BigEndian.PutUint16(b[8:], 2); return b }), "version 2; this proxysession reads version 1"},
		{"flipped bit", edit(func(b []byte) []byte { b[len(b)/2] ^= 4; return b }), "checksum mismatch"},
		{"trailing data", append(bytes.Clone(raw), 0), "data after the checksum"},
		{"more sessions than written", edit(func(b []byte) []byte { b[31]++; fixChecksum(b); return b }), "session 6 of 6"},
		{"absurd record length", edit(func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[stateHeaderBytes+34:], 1<<30)
			return b
		}), "corrupt session 1 of 5"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if err := os.WriteFile(path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			_, store := newStateCache(t, clock, 1000)
			_, err := store.LoadStateFile(path, opt)
			if !errors.Is(err, ErrBadState) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want ErrBadState saying %q", err, tc.want)
			}
			if store.Len() != 0 || store.Bytes() != 0 {
				t.Errorf("a rejected file loaded %d sessions", store.Len())
			}
		})
	}

	t.Run("missing", func(t *testing.T) {
		_, store := newStateCache(t, clock, 1000)
		if _, err := store.LoadStateFile(filepath.Join(dir, "none"), opt); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("err = %v, want fs.ErrNotExist", err)
		}
	})
	t.Run("readable by others", func(t *testing.T) {
		path := filepath.Join(dir, "public")
		if err := os.WriteFile(path, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chmod(path, 0o640)
		_, store := newStateCache(t, clock, 1000)
		if _, err := store.LoadStateFile(path, opt); !errors.Is(err, ErrUnsafeState) || !strings.Contains(err.Error(), "mode 0640") || store.Len() != 0 {
			t.Errorf("err = %v, %d sessions; want ErrUnsafeState naming mode 0640", err, store.Len())
		}
	})
	t.Run("not a regular file", func(t *testing.T) {
		_, store := newStateCache(t, clock, 1000)
		if _, err := store.LoadStateFile(dir, opt); !errors.Is(err, ErrUnsafeState) {
			t.Errorf("err = %v, want ErrUnsafeState", err)
		}
	})
	t.Run("another user's", func(t *testing.T) {
		if runtime.GOOS == "windows" || os.Getuid() != 0 {
			t.Skip("needs root to give a file away")
		}
		path := filepath.Join(dir, "theirs")
		if err := os.WriteFile(path, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(path, 65534, 65534); err != nil {
			t.Skip(err)
		}
		_, store := newStateCache(t, clock, 1000)
		if _, err := store.LoadStateFile(path, opt); !errors.Is(err, ErrUnsafeState) || !strings.Contains(err.Error(), "belongs to uid 65534") || store.Len() != 0 {
			t.Errorf("err = %v, %d sessions; want ErrUnsafeState naming the owner", err, store.Len())
		}
	})
	// The good file still loads, and a save replaces a bad one.
	_, store := newStateCache(t, clock, 1000)
	if loaded, err := store.LoadStateFile(good, opt); err != nil || loaded.Sessions != 5 || loaded.Bytes != info.Bytes {
		t.Fatalf("good file: %+v, %v", loaded, err)
	}
	bad := filepath.Join(dir, "flipped-bit")
	if _, err := store.SaveStateFile(bad, opt); err != nil {
		t.Fatal(err)
	}
	if _, err := store.SaveStateFile(filepath.Join(dir, "no-such-dir", "state"), opt); err == nil {
		t.Error("saving into a missing directory succeeded")
	}
}

// TestStateFileLimits: loaded into a smaller store, the sessions used
// least recently are left out, as eviction would have chosen.
func TestStateFileLimits(t *testing.T) {
	clock := newTestClock()
	c1, store1 := newStateCache(t, clock, 1000)
	browsers := stateLogins(t, c1, clock, 50)
	// The last ten are the most recently used.
	for _, b := range browsers[40:] {
		clock.Advance(2 * time.Second)
		roundTrip(t, c1, stateRequest(b), nil)
	}
	path := filepath.Join(t.TempDir(), "state")
	opt := StateOptions{Now: clock.Now}
	if _, err := store1.SaveStateFile(path, opt); err != nil {
		t.Fatal(err)
	}
	c2, store2 := newStateCache(t, clock, 10)
	loaded, err := store2.LoadStateFile(path, opt)
	if err != nil || loaded.Sessions != 10 || store2.Len() != 10 {
		t.Fatalf("loaded %+v, %v, %d held", loaded, err, store2.Len())
	}
	for _, b := range browsers[40:] {
		if x, _ := roundTrip(t, c2, stateRequest(b), nil); !x.HasSession() {
			t.Error("a recently used session was left out")
		}
	}
}

// TestStateFileWhileServing: the store serves (and sessions come and go)
// while it writes its state; run with -race.
func TestStateFileWhileServing(t *testing.T) {
	clock := newTestClock()
	c1, store1 := newStateCache(t, clock, 1000)
	browsers := stateLogins(t, c1, clock, 100)
	path := filepath.Join(t.TempDir(), "state")
	opt := StateOptions{Now: clock.Now}
	if _, err := store1.SaveStateFile(path, opt); err != nil {
		t.Fatal(err)
	}
	c2, store2 := newStateCache(t, clock, 1000)
	if _, err := store2.LoadStateFile(path, opt); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < len(browsers); i += 4 {
				var x Exchange
				if err := c2.Expand(context.Background(), stateRequest(browsers[i]), &x); err != nil || !x.HasSession() {
					t.Errorf("browser %d: %v, session %v", i, err, x.HasSession())
					return
				}
				resp := &Response{SetCookie: []string{fmt.Sprintf("n=%d", i)}}
				if i%7 == 0 {
					resp = &Response{ClearSiteData: []string{`"*"`}}
				}
				if _, err := c2.Capture(context.Background(), &x, resp); err != nil {
					t.Error(err)
				}
			}
		})
	}
	for range 5 {
		if _, err := store2.SaveStateFile(path, opt); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if _, err := store2.SaveStateFile(path, opt); err != nil {
		t.Fatal(err)
	}
	_, store3 := newStateCache(t, clock, 1000)
	if loaded, err := store3.LoadStateFile(path, opt); err != nil || loaded.Sessions != 100-15 {
		t.Errorf("loaded %+v, %v; want the 85 sessions not logged out", loaded, err)
	}
}

// TestStateFileDormantEnd: once the idle timeout has passed since they
// were written, the sessions still sealed can never be used, and are
// dropped.
func TestStateFileDormantEnd(t *testing.T) {
	clock := newTestClock()
	c1, store1 := newStateCache(t, clock, 1000)
	browsers := stateLogins(t, c1, clock, 10)
	path := filepath.Join(t.TempDir(), "state")
	opt := StateOptions{Now: clock.Now}
	if _, err := store1.SaveStateFile(path, opt); err != nil {
		t.Fatal(err)
	}
	c2, store2 := newStateCache(t, clock, 1000)
	if _, err := store2.LoadStateFile(path, opt); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c2, stateRequest(browsers[0]), nil)
	clock.Advance(DefaultIdleTimeout)
	if x, _ := roundTrip(t, c2, stateRequest(browsers[1]), nil); x.HasSession() {
		t.Error("a session idle for the idle timeout came back")
	}
	if store2.Dormant() != 0 || store2.Len() != 1 {
		t.Errorf("%d sessions, %d sealed; want the one woken", store2.Len(), store2.Dormant())
	}
}

// FuzzReadState: whatever the file holds, loading it never panics, and
// either loads the sessions it counts or nothing at all.
func FuzzReadState(f *testing.F) {
	clock := newTestClock()
	c, store := newStateCache(f, clock, 100)
	for i := range 3 {
		var x Exchange
		if err := c.Expand(context.Background(), stateRequest(nil), &x); err != nil {
			f.Fatal(err)
		}
		if _, err := c.Capture(context.Background(), &x, &Response{SetCookie: []string{fmt.Sprintf("a=%d", i)}}); err != nil {
			f.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if _, err := store.WriteState(&buf, StateOptions{Now: clock.Now}); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte(stateMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := NewMemoryStore(100)
		if err != nil {
			t.Fatal(err)
		}
		info, err := m.ReadState(bytes.NewReader(data), StateOptions{Now: clock.Now})
		if err != nil && (m.Len() != 0 || m.Bytes() != 0 || !errors.Is(err, ErrBadState)) {
			t.Fatalf("rejected (%v) but holds %d sessions", err, m.Len())
		}
		if err == nil && m.Len() != info.Sessions {
			t.Fatalf("loaded %d, holds %d", info.Sessions, m.Len())
		}
	})
}
