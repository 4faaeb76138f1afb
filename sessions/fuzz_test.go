package sessions

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
	"time"
)

// FuzzParseSetCookie checks the Set-Cookie parser and the storage model on
// arbitrary lines: no panic, the parser's invariants hold, and whatever is
// stored survives the store encoding and is sent back byte-exact.
func FuzzParseSetCookie(f *testing.F) {
	for _, s := range []string{
		"a=b", "a=b; Path=/; Domain=example.com; Secure; HttpOnly; SameSite=Lax",
		"__Host-x=1; Secure; Path=/", "x; Max-Age=-1", "=; ;=", "a=\"q;r\"; Expires=Wed, 09 Jun 2021 10:18:14 GMT",
		"a=b; Domain=.com", "a=b; Path=relative; max-age=99999999999999999999",
	} {
		f.Add(s)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	lim := jarLimits{maxLifetime: int64(maxCookieAge), perDomain: 50, perSession: 60, bytes: 8 << 10}
	f.Fuzz(func(t *testing.T, line string) {
		sc, reject := parseSetCookie(line)
		if reject != RejectNone {
			return
		}
		if sc.name == "" && sc.value == "" || len(sc.name)+len(sc.value) > maxNameValueBytes {
			t.Fatalf("accepted %q with name %q value %q", line, sc.name, sc.value)
		}
		if strings.ContainsRune(sc.name, ';') || strings.ContainsRune(sc.value, ';') || strings.ContainsRune(sc.name, '=') ||
			trimWSP(sc.name) != sc.name || trimWSP(sc.value) != sc.value || hasCTL(sc.name+sc.value) {
			t.Fatalf("bad name %q or value %q from %q", sc.name, sc.value, line)
		}
		if sc.hasPath && sc.path != "" && sc.path[0] != '/' {
			t.Fatalf("path %q does not start with /", sc.path)
		}
		o := origin{host: "www.example.com", path: "/a/b", secure: true, safeMethod: true}
		s := newSession(ID{}, now)
		var ch Changes
		res := s.setCookie(&sc, &o, now, &lim, &ch)
		if !res.stored {
			return
		}
		if len(s.cookies) != 1 || len(ch.Stored) != 1 {
			t.Fatalf("stored %d cookies, journal %d", len(s.cookies), len(ch.Stored))
		}
		c := &s.cookies[0]
		if c.Name() != sc.name || c.Value() != sc.value {
			t.Fatalf("stored %q=%q, parsed %q=%q", c.Name(), c.Value(), sc.name, sc.value)
		}
		b, err := c.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var d Cookie
		if err := d.UnmarshalBinary(b); err != nil || d != *c {
			t.Fatalf("encoding round trip: %v, %+v != %+v", err, d, *c)
		}
		if idx := s.match(&origin{host: "www.example.com", path: c.Path(), secure: true, safeMethod: true}, now, nil); len(idx) != 1 {
			t.Fatalf("stored cookie %q not sent back to its own path", line)
		}
	})
}

// FuzzParseCookieDate checks the cookie-date parser: no panic, dates in
// range, and a parsed date reparses to itself from its HTTP form.
func FuzzParseCookieDate(f *testing.F) {
	for _, s := range []string{
		"Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994",
		"Wed Dec 12 2007 08:44:07 GMT-0500 (EST)", "1 Jan 1601 0:0:0", "31 Feb 2020 1:1:1", "99:99:99",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := parseCookieDate(s)
		if !ok {
			return
		}
		if d.Year() < 1601 || d.Year() > 9999 || d.Location() != time.UTC || d.Nanosecond() != 0 {
			t.Fatalf("parseCookieDate(%q) = %v", s, d)
		}
		again, ok := parseCookieDate(d.Format(http.TimeFormat))
		if !ok || !again.Equal(d) {
			t.Fatalf("%v does not reparse from %q: %v %v", d, d.Format(http.TimeFormat), again, ok)
		}
	})
}

// FuzzCookieHeader checks the Cookie header scanner and the header the
// engine builds: no panic, pairs are trimmed and non-empty, rejoining
// them yields the same pairs, and the session cookie never reaches the
// backend.
func FuzzCookieHeader(f *testing.F) {
	for _, s := range []string{"a=b; c=d", " ;;a=b ;", "__Host-proxysession=x; a", "=;=;", "\xff=\xfe; q=\"a;b\""} {
		f.Add(s)
	}
	c, err := New(Config{Logger: discardLogger()})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, header string) {
		var pairs []string
		p := newCookiePairs([]string{header})
		for pair, name, ok := p.next(); ok; pair, name, ok = p.next() {
			if pair == "" || trimWSP(pair) != pair || strings.ContainsRune(pair, ';') || !strings.HasPrefix(trimWSP(pair), name) {
				t.Fatalf("bad pair %q (name %q) in %q", pair, name, header)
			}
			pairs = append(pairs, pair)
		}
		var again []string
		p = newCookiePairs([]string{strings.Join(pairs, "; ")})
		for pair, _, ok := p.next(); ok; pair, _, ok = p.next() {
			again = append(again, pair)
		}
		if strings.Join(again, "\x00") != strings.Join(pairs, "\x00") {
			t.Fatalf("rejoined pairs differ: %q vs %q", again, pairs)
		}

		var x Exchange
		if err := c.Expand(t.Context(), &Request{Scheme: "https", Host: "example.com", Path: "/", Cookies: []string{header}}, &x); err != nil {
			t.Fatal(err)
		}
		if x.RewriteCookie {
			q := newCookiePairs([]string{x.Cookie})
			for _, name, ok := q.next(); ok; _, name, ok = q.next() {
				if name == c.CookieName() {
					t.Fatalf("session cookie forwarded: %q -> %q", header, x.Cookie)
				}
			}
		}
	})
}

// FuzzParseID checks that ParseID accepts exactly the canonical base64url
// encodings of 32 bytes.
func FuzzParseID(f *testing.F) {
	f.Add(newID().CookieValue())
	f.Add(strings.Repeat("A", 42) + "B")
	f.Add(strings.Repeat("_", 43))
	f.Fuzz(func(t *testing.T, s string) {
		id, ok := ParseID(s)
		want, err := base64.RawURLEncoding.Strict().DecodeString(s)
		// encoding/base64 skips CR and LF even in strict mode; a cookie
		// value never holds them.
		wantOK := err == nil && len(want) == idBytes && !strings.ContainsAny(s, "\r\n")
		if ok != wantOK {
			t.Fatalf("ParseID(%q) ok = %v, base64 says %v (%v)", s, ok, wantOK, err)
		}
		if ok && (!bytes.Equal(id.b[:], want) || id.CookieValue() != s) {
			t.Fatalf("ParseID(%q) round trip failed", s)
		}
	})
}
