package sessions

import (
	"encoding/binary"
	"errors"
	"math"
	"time"
	"unique"
)

// SameSite is a cookie's SameSite enforcement mode (RFC 6265bis §5.6.7).
type SameSite uint8

// SameSite modes. SameSiteDefault is a cookie without a (recognised)
// SameSite attribute; the jar enforces it like Lax, as Chromium does.
const (
	SameSiteDefault SameSite = iota
	SameSiteNone
	SameSiteLax
	SameSiteStrict
)

// String returns the attribute value ("Lax", …), or "Default".
func (s SameSite) String() string {
	switch s {
	case SameSiteNone:
		return "None"
	case SameSiteLax:
		return "Lax"
	case SameSiteStrict:
		return "Strict"
	}
	return "Default"
}

// cookieFlags are a stored cookie's boolean fields.
type cookieFlags uint8

const (
	flagHostOnly cookieFlags = 1 << iota
	flagSecure
	flagHTTPOnly
	flagPersistent
)

// scope is where a cookie applies. Scopes are interned: the thousands of
// sessions of one site share a handful of them.
type scope struct {
	domain, path string
}

// noExpiry is the expiry of a non-persistent cookie: it lives as long as
// the session that holds it.
const noExpiry = math.MaxInt64

// Cookie is a cookie held in a session's jar, as RFC 6265bis §5.7 stores
// it. The zero value is not a valid cookie; cookies come from the jar.
//
// The layout is compact because a server holds many sessions: the name and
// value share one string, and the domain and path one interned handle.
type Cookie struct {
	pair     string // "name=value", or the value alone when the name is empty
	scope    unique.Handle[scope]
	created  int64  // UnixNano; unique within a jar, orders equal paths
	expires  int64  // UnixNano, or noExpiry
	accessed uint32 // Unix seconds of the last time it was stored or sent
	nameLen  uint16
	flags    cookieFlags
	sameSite SameSite
}

// Name returns the cookie's name, empty for a nameless cookie.
func (c *Cookie) Name() string { return c.pair[:c.nameLen] }

// Value returns the cookie's value.
func (c *Cookie) Value() string {
	if c.nameLen == 0 {
		return c.pair
	}
	return c.pair[c.nameLen+1:]
}

// Domain returns the cookie's domain: the host that set it for a host-only
// cookie, else the Domain attribute.
func (c *Cookie) Domain() string { return c.scope.Value().domain }

// Path returns the cookie's path.
func (c *Cookie) Path() string { return c.scope.Value().path }

// HostOnly reports whether the cookie is sent only to the host that set it.
func (c *Cookie) HostOnly() bool { return c.flags&flagHostOnly != 0 }

// Secure reports whether the cookie is sent only over secure connections.
func (c *Cookie) Secure() bool { return c.flags&flagSecure != 0 }

// HTTPOnly reports whether the backend set the HttpOnly attribute.
func (c *Cookie) HTTPOnly() bool { return c.flags&flagHTTPOnly != 0 }

// SameSite returns the cookie's SameSite mode.
func (c *Cookie) SameSite() SameSite { return c.sameSite }

// Expires returns the cookie's expiry time, or the zero Time for a cookie
// that lives as long as its session.
func (c *Cookie) Expires() time.Time {
	if c.expires == noExpiry {
		return time.Time{}
	}
	return time.Unix(0, c.expires)
}

// Created returns when the cookie was first stored.
func (c *Cookie) Created() time.Time { return time.Unix(0, c.created) }

// size is what the cookie counts against a session's byte limit.
func (c *Cookie) size() int {
	sc := c.scope.Value()
	return len(c.pair) + len(sc.domain) + len(sc.path)
}

// expired reports whether the cookie has expired at now (UnixNano).
func (c *Cookie) expired(now int64) bool { return c.expires <= now }

// sameIdentity reports whether c and d are the same cookie for the storage
// model: same name, domain, host-only flag and path (§5.7 step 23).
func (c *Cookie) sameIdentity(d *Cookie) bool {
	return c.scope == d.scope && c.Name() == d.Name() &&
		c.flags&flagHostOnly == d.flags&flagHostOnly
}

// Key returns a string that identifies the cookie within its session:
// equal for two cookies exactly when one replaces the other. Stores that
// write cookies one by one use it as the field name (after hashing: it
// contains the cookie's name and domain).
func (c *Cookie) Key() string {
	sc := c.scope.Value()
	b := make([]byte, 0, 1+len(sc.domain)+1+len(sc.path)+1+int(c.nameLen))
	b = append(b, byte(c.flags&flagHostOnly))
	b = append(b, sc.domain...)
	b = append(b, 0)
	b = append(b, sc.path...)
	b = append(b, 0)
	b = append(b, c.Name()...)
	return string(b)
}

// Encoding of a cookie for stores that serialise sessions: a version byte,
// then fixed-size fields, then the variable-size strings with length
// prefixes.
const cookieEncodingV1 = 1

// MarshalBinary encodes the cookie for a Store.
func (c *Cookie) MarshalBinary() ([]byte, error) {
	sc := c.scope.Value()
	return c.appendBinary(make([]byte, 0, 32+len(c.pair)+len(sc.domain)+len(sc.path))), nil
}

// appendBinary appends MarshalBinary's encoding of c to b.
func (c *Cookie) appendBinary(b []byte) []byte {
	sc := c.scope.Value()
	b = append(b, cookieEncodingV1, byte(c.flags), byte(c.sameSite))
	b = binary.BigEndian.AppendUint16(b, c.nameLen)
	b = binary.BigEndian.AppendUint64(b, uint64(c.created))
	b = binary.BigEndian.AppendUint64(b, uint64(c.expires))
	b = binary.BigEndian.AppendUint32(b, c.accessed)
	for _, s := range [...]string{c.pair, sc.domain, sc.path} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

var errBadCookieEncoding = errors.New("sessions: malformed cookie encoding")

// UnmarshalBinary decodes a cookie encoded by MarshalBinary. It rejects
// encodings that could not have come from a valid cookie.
func (c *Cookie) UnmarshalBinary(b []byte) error {
	const fixed = 3 + 2 + 8 + 8 + 4
	if len(b) < fixed || b[0] != cookieEncodingV1 {
		return errBadCookieEncoding
	}
	var d Cookie
	d.flags = cookieFlags(b[1])
	d.sameSite = SameSite(b[2])
	d.nameLen = binary.BigEndian.Uint16(b[3:])
	d.created = int64(binary.BigEndian.Uint64(b[5:]))
	d.expires = int64(binary.BigEndian.Uint64(b[13:]))
	d.accessed = binary.BigEndian.Uint32(b[21:])
	b = b[fixed:]
	var strs [3]string
	for i := range strs {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return errBadCookieEncoding
		}
		strs[i] = string(b[k : k+int(n)])
		b = b[k+int(n):]
	}
	d.pair = strs[0]
	if len(b) != 0 || d.sameSite > SameSiteStrict || d.flags >= flagPersistent<<1 ||
		d.pair == "" || len(d.pair) > maxNameValueBytes+1 ||
		(d.nameLen > 0 && (int(d.nameLen) >= len(d.pair) || d.pair[d.nameLen] != '=')) {
		return errBadCookieEncoding
	}
	d.scope = unique.Make(scope{domain: strs[1], path: strs[2]})
	*c = d
	return nil
}
