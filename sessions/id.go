package sessions

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"log/slog"
)

// ID identifies a session. It is 256 random bits: a 128-bit lookup key and
// a 128-bit secret. Stores find a session by its key and must check the
// secret (the memory store compares it; an encrypting store derives its
// key from it), so a client cannot guess or forge a valid id.
//
// An ID is a credential: String and LogValue redact it. Only CookieValue
// reveals it, for the Set-Cookie header.
type ID struct {
	b [idBytes]byte
}

const (
	idBytes       = 32
	idKeyBytes    = 16
	idEncodedSize = 43 // base64url of 32 bytes, unpadded
)

// newID returns a fresh random id. crypto/rand.Read does not fail.
func newID() ID {
	var id ID
	rand.Read(id.b[:])
	return id
}

// ParseID parses a session cookie value. It accepts exactly the canonical
// unpadded base64url encoding of 32 bytes and never allocates.
func ParseID(s string) (ID, bool) {
	var id ID
	if len(s) != idEncodedSize {
		return id, false
	}
	t := &base64URLValue
	var bad byte        // collects the 0x80 bit of invalid characters
	for g := range 10 { // 40 characters, 30 bytes
		a, b, c, d := t[s[4*g]], t[s[4*g+1]], t[s[4*g+2]], t[s[4*g+3]]
		bad |= a | b | c | d
		v := uint32(a)<<18 | uint32(b)<<12 | uint32(c)<<6 | uint32(d)
		id.b[3*g], id.b[3*g+1], id.b[3*g+2] = byte(v>>16), byte(v>>8), byte(v)
	}
	a, b, c := t[s[40]], t[s[41]], t[s[42]]
	bad |= a | b | c
	v := uint32(a)<<12 | uint32(b)<<6 | uint32(c)
	// 43 characters carry 258 bits; the 2 spare bits must be zero, so
	// that every id has exactly one spelling.
	if bad&0x80 != 0 || v&3 != 0 {
		return ID{}, false
	}
	id.b[30], id.b[31] = byte(v>>10), byte(v>>2)
	return id, true
}

var base64URLValue = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	for i := 0; i < len(alphabet); i++ {
		t[alphabet[i]] = byte(i)
	}
	return t
}()

// CookieValue returns the id as it travels in the session cookie.
func (id ID) CookieValue() string {
	return base64.RawURLEncoding.EncodeToString(id.b[:])
}

// Key returns the lookup half of the id.
func (id ID) Key() [idKeyBytes]byte { return [idKeyBytes]byte(id.b[:idKeyBytes]) }

// Secret returns the secret half of the id.
func (id ID) Secret() [idBytes - idKeyBytes]byte {
	return [idBytes - idKeyBytes]byte(id.b[idKeyBytes:])
}

// Equal reports whether id and other are the same id, in constant time.
func (id ID) Equal(other ID) bool {
	return subtle.ConstantTimeCompare(id.b[:], other.b[:]) == 1
}

// String returns a redacted placeholder: ids must not reach logs.
func (id ID) String() string { return "[redacted session id]" }

// LogValue implements slog.LogValuer with the same redaction.
func (id ID) LogValue() slog.Value { return slog.StringValue(id.String()) }
