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
	var acc uint32
	var bits, j int
	for i := 0; i < len(s); i++ {
		v := base64URLValue[s[i]]
		if v == 0xff {
			return id, false
		}
		acc = acc<<6 | uint32(v)
		bits += 6
		if bits >= 8 {
			bits -= 8
			id.b[j] = byte(acc >> bits)
			j++
		}
	}
	// 43 characters carry 258 bits; the 2 spare bits must be zero, so
	// that every id has exactly one spelling.
	if acc&(1<<bits-1) != 0 {
		return ID{}, false
	}
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
