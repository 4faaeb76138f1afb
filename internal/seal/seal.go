// Package seal is the cryptography of proxysession's encrypted session
// stores: the keys one session's id yields, and the sealing of records
// with them. The Redis store (sessions/redisstore) uses it; a store that
// writes sessions elsewhere must use it too, rather than a second design.
//
// A session id is a public lookup half and a secret half (sessions.ID).
// Every key comes from the secret half by HKDF-SHA256, salted with the
// lookup half and labelled with a context string that names the format
// (such as "proxysession/v3"): a format change is a new context, whose
// keys open nothing written under the old one. Whoever holds the records
// but not the id's secret can neither read nor forge them.
//
// The package knows nothing of sessions or cookies, so that the sessions
// package can import it: it takes the id's halves as bytes.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"hash"
)

// Sizes of a sealed record's parts: a random nonce before the ciphertext
// and the GCM tag after it. A sealed record is Overhead bytes longer
// than its plaintext.
const (
	NonceSize = 12
	TagSize   = 16
	Overhead  = NonceSize + TagSize
	// VerifierSize is the length of a session's verifier.
	VerifierSize = 16
)

// ErrOpen is the error of a record that fails authentication: tampered
// with, truncated, sealed under other keys or with other additional data.
var ErrOpen = errors.New("seal: record fails authentication")

// Keys are one session's keys. They are safe for concurrent use.
type Keys struct {
	aead     cipher.AEAD
	nameKey  []byte
	verifier [VerifierSize]byte
}

// KeysFor derives a session's keys from its id's lookup and secret halves
// under context, which names the format of what they seal.
//
//   - the sealing key: AES-256-GCM, info context+"/seal";
//   - the naming key: HMAC-SHA256 for Name, info context+"/field";
//   - the verifier: 16 bytes, info context+"/verifier".
func KeysFor(lookup, secret [16]byte, context string) (*Keys, error) {
	sealKey, err := hkdf.Key(sha256.New, secret[:], lookup[:], context+"/seal", 32)
	if err != nil {
		return nil, err
	}
	nameKey, err := hkdf.Key(sha256.New, secret[:], lookup[:], context+"/field", 32)
	if err != nil {
		return nil, err
	}
	verifier, err := hkdf.Key(sha256.New, secret[:], lookup[:], context+"/verifier", VerifierSize)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(sealKey)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Keys{aead: aead, nameKey: nameKey, verifier: [VerifierSize]byte(verifier)}, nil
}

// Seal encrypts plaintext with a fresh random nonce and appends the
// record, nonce ‖ ciphertext ‖ tag (len(plaintext)+Overhead bytes), to
// dst. additionalData is authenticated, not stored: bind the record to
// where it belongs (its session, its field), and Open must be given the
// same.
func (k *Keys) Seal(dst, plaintext, additionalData []byte) []byte {
	n := len(dst)
	dst = append(dst, make([]byte, NonceSize)...)
	rand.Read(dst[n:]) // never fails
	return k.aead.Seal(dst, dst[n:n+NonceSize], plaintext, additionalData)
}

// Open authenticates and decrypts a record made by Seal with the same
// additional data, appending the plaintext to dst. Any other record is
// ErrOpen.
func (k *Keys) Open(dst, record, additionalData []byte) ([]byte, error) {
	if len(record) < Overhead {
		return nil, ErrOpen
	}
	out, err := k.aead.Open(dst, record[:NonceSize], record[NonceSize:], additionalData)
	if err != nil {
		return nil, ErrOpen
	}
	return out, nil
}

// Name returns the HMAC-SHA256, under the session's naming key, of an
// identity (such as a cookie's name, domain and path): a name for where
// a record is stored that reveals nothing without the id. Callers may
// truncate it to what keeps collisions negligible among the names of one
// session.
func (k *Keys) Name(identity string) [sha256.Size]byte {
	mac := hmac.New(sha256.New, k.nameKey)
	mac.Write([]byte(identity))
	return [sha256.Size]byte(mac.Sum(nil))
}

// NameHash returns a fresh HMAC under the naming key, for callers that
// name many identities.
func (k *Keys) NameHash() hash.Hash { return hmac.New(sha256.New, k.nameKey) }

// Verifier returns the session's verifier: stored beside its records, it
// lets a store check that an id's secret is right without holding the
// secret. It reveals nothing of the secret or the other keys.
func (k *Keys) Verifier() [VerifierSize]byte { return k.verifier }

// Verify reports, in constant time, whether v is the session's verifier.
func (k *Keys) Verify(v []byte) bool {
	return subtle.ConstantTimeCompare(v, k.verifier[:]) == 1
}
