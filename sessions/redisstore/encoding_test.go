package redisstore

import (
	"testing"

	"github.com/proxysession/proxysession/sessions"
)

// cookieOf builds a cookie through MarshalBinary's version 1 layout.
func cookieOf(t *testing.T, v v1) sessions.Cookie {
	t.Helper()
	var c sessions.Cookie
	if err := c.UnmarshalBinary(v.marshal()); err != nil {
		t.Fatalf("%+v: %v", v, err)
	}
	return c
}

func TestCookiePlaintextRoundTrip(t *testing.T) {
	const created = int64(1_700_000_000_123_456_789)
	base := v1{flags: 1 | 4, sameSite: 2, nameLen: 3, created: created + 2, expires: noExpiry,
		accessed: uint32(created / 1e9), pair: "sid=" + "00000000000000000000000000000000042", domain: "app.example.com", path: "/"}
	cases := map[string]func(v *v1){
		"home, root":      func(v *v1) {},
		"other domain":    func(v *v1) { v.domain = "example.com"; v.flags &^= 1 },
		"other path":      func(v *v1) { v.path = "/account" },
		"persistent":      func(v *v1) { v.flags |= persistent; v.expires = v.created + 30*24*3600*1e9 + 17 },
		"nameless":        func(v *v1) { v.nameLen, v.pair = 0, "=a=b" },
		"value with =":    func(v *v1) { v.pair = "sid=a=b" },
		"empty value":     func(v *v1) { v.pair = "sid=" },
		"strict secure":   func(v *v1) { v.flags |= 2; v.sameSite = 3 },
		"created earlier": func(v *v1) { v.created = created - 5e9; v.accessed = uint32(created/1e9) + 3600 },
		"raw header":      func(v *v1) { v.flags, v.sameSite, v.domain, v.path = 0, 1, "example.com", "/x" },
	}
	for name, change := range cases {
		v := base
		change(&v)
		c := cookieOf(t, v)
		want, _ := c.MarshalBinary()
		for _, haveHome := range []bool{true, false} {
			plain, err := cookiePlaintext(&c, created, "app.example.com", haveHome)
			if err != nil {
				t.Fatal(err)
			}
			if name == "raw header" && plain[0] != rawHeader {
				t.Errorf("%s: header %#x, want the raw encoding", name, plain[0])
			}
			got, err := openPlaintext(plain, created, "app.example.com", haveHome)
			if err != nil {
				t.Errorf("%s (home %v): %v", name, haveHome, err)
				continue
			}
			if enc, _ := got.MarshalBinary(); string(enc) != string(want) {
				t.Errorf("%s (home %v): decoded %x, want %x", name, haveHome, enc, want)
			}
		}
	}
	// The benchmark's cookie takes 42 bytes instead of MarshalBinary's 83.
	c := cookieOf(t, base)
	if plain, _ := cookiePlaintext(&c, created, "app.example.com", true); len(plain) != 42 {
		t.Errorf("compact encoding of %q: %d bytes, want 42", c.Name(), len(plain))
	}
}

func TestOpenPlaintextRejects(t *testing.T) {
	for name, plain := range map[string]string{
		"empty":            "",
		"truncated varint": "\x85\x80",
		"home unknown":     "\x45\x00\x00sid=1",
		"no name":          "\xc5\x00\x00sid",
		"bad raw":          "\x10\x01",
		"long domain":      "\x85\x00\x00\x7fa",
	} {
		home := name != "home unknown"
		if _, err := openPlaintext([]byte(plain), 0, "h", home); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}
