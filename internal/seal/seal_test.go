package seal

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
)

func keysFor(t *testing.T, lookup, secret [16]byte) *Keys {
	t.Helper()
	k, err := KeysFor(lookup, secret, "test/v1")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func randomHalf() (b [16]byte) {
	rand.Read(b[:])
	return b
}

func TestSealOpen(t *testing.T) {
	k := keysFor(t, randomHalf(), randomHalf())
	ad := []byte("session\x00field")
	for _, plain := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("cookie"), 1000)} {
		rec := k.Seal([]byte("prefix"), plain, ad)
		if !bytes.HasPrefix(rec, []byte("prefix")) || len(rec) != len("prefix")+len(plain)+Overhead {
			t.Fatalf("record of %d bytes: %d bytes", len(plain), len(rec))
		}
		rec = rec[len("prefix"):]
		got, err := k.Open(nil, rec, ad)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("Open: %q, %v", got, err)
		}
		if again := k.Seal(nil, plain, ad); bytes.Equal(again[:NonceSize], rec[:NonceSize]) {
			t.Error("two seals share a nonce")
		}
	}
}

func TestOpenRejects(t *testing.T) {
	lookup, secret := randomHalf(), randomHalf()
	k := keysFor(t, lookup, secret)
	ad := []byte("session\x00field")
	rec := k.Seal(nil, []byte("sid=1"), ad)
	other := secret
	other[0] ^= 1
	otherLookup := lookup
	otherLookup[15] ^= 1
	cases := map[string]struct {
		keys *Keys
		rec  []byte
		ad   []byte
	}{
		"tampered ciphertext": {k, flip(rec, NonceSize), ad},
		"tampered nonce":      {k, flip(rec, 0), ad},
		"tampered tag":        {k, flip(rec, len(rec)-1), ad},
		"truncated":           {k, rec[:len(rec)-1], ad},
		"too short":           {k, rec[:Overhead-1], ad},
		"empty":               {k, nil, ad},
		"wrong field":         {k, rec, []byte("session\x00other")},
		"no additional data":  {k, rec, nil},
		"other secret":        {keysFor(t, lookup, other), rec, ad},
		"other lookup":        {keysFor(t, otherLookup, secret), rec, ad},
	}
	for name, c := range cases {
		if got, err := c.keys.Open(nil, c.rec, c.ad); !errors.Is(err, ErrOpen) || got != nil {
			t.Errorf("%s: %q, %v; want ErrOpen", name, got, err)
		}
	}
	other2, err := KeysFor(lookup, secret, "test/v2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other2.Open(nil, rec, ad); !errors.Is(err, ErrOpen) {
		t.Errorf("another context opened the record: %v", err)
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 1
	return c
}

// TestKeysPerID: every part of the id, and the context, changes every
// key; the same inputs give the same keys.
func TestKeysPerID(t *testing.T) {
	lookup, secret := randomHalf(), randomHalf()
	a, b := keysFor(t, lookup, secret), keysFor(t, lookup, secret)
	if a.Verifier() != b.Verifier() || a.Name("c") != b.Name("c") {
		t.Fatal("the same id gives other keys")
	}
	if got, err := b.Open(nil, a.Seal(nil, []byte("v"), nil), nil); err != nil || string(got) != "v" {
		t.Fatalf("the same id cannot open its records: %v", err)
	}
	otherSecret, otherLookup := secret, lookup
	otherSecret[7] ^= 1
	otherLookup[7] ^= 1
	ctx, err := KeysFor(lookup, secret, "test/v2")
	if err != nil {
		t.Fatal(err)
	}
	for name, o := range map[string]*Keys{
		"secret":  keysFor(t, lookup, otherSecret),
		"lookup":  keysFor(t, otherLookup, secret),
		"context": ctx,
	} {
		if o.Verifier() == a.Verifier() {
			t.Errorf("other %s, same verifier", name)
		}
		if o.Name("c") == a.Name("c") {
			t.Errorf("other %s, same names", name)
		}
	}
	if a.Name("c") == a.Name("d") {
		t.Error("two identities, one name")
	}
	v := a.Verifier()
	if !a.Verify(v[:]) || a.Verify(v[:15]) || a.Verify(flip(v[:], 3)) {
		t.Error("Verify")
	}
	h := a.NameHash()
	h.Write([]byte("c"))
	if n := a.Name("c"); !bytes.Equal(h.Sum(nil), n[:]) {
		t.Error("NameHash differs from Name")
	}
}
