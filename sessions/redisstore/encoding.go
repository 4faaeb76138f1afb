package redisstore

import (
	"encoding/binary"
	"errors"
	"math"
	"strings"

	"github.com/proxysession/proxysession/sessions"
)

// A cookie's record holds a compact encoding of the cookie, rather than
// Cookie.MarshalBinary's fixed-size one, so that a session of a few small
// cookies fits Redis's listpack (see the format above). It is transcoded
// from MarshalBinary's version 1 layout (version, flags, SameSite, name
// length, created, expires, accessed, then the pair, domain and path with
// uvarint lengths), and back to it for UnmarshalBinary:
//
//	header   flags (low 4 bits) | SameSite << 4 | home << 6 | root << 7
//	varint   created − the session's creation, ns (zigzag)
//	varint   accessed − the session's creation, s (zigzag)
//	varint   expires − created, ns (zigzag), if the persistent flag is set
//	domain   uvarint length and bytes, unless home: the session's home domain
//	path     uvarint length and bytes, unless root: "/"
//	pair     "name=value", or "=value" for a nameless cookie, to the end
//
// A cookie this cannot express (or a MarshalBinary of another version) is
// stored as rawHeader followed by MarshalBinary's bytes. rawHeader is
// SameSite=None without Secure, which the jar never stores.
const (
	encodingV1 = 1
	v1Fixed    = 3 + 2 + 8 + 8 + 4
	rawHeader  = byte(sessions.SameSiteNone) << 4
	homeBit    = 1 << 6
	rootBit    = 1 << 7
	persistent = 1 << 3 // MarshalBinary's flag for a cookie with an expiry
	noExpiry   = math.MaxInt64
)

var errEncoding = errors.New("malformed cookie encoding")

// v1 is a cookie as MarshalBinary's version 1 lays it out.
type v1 struct {
	flags, sameSite    byte
	nameLen            uint16
	created, expires   int64
	accessed           uint32
	pair, domain, path string
}

func parseV1(b []byte) (v v1, ok bool) {
	if len(b) < v1Fixed || b[0] != encodingV1 {
		return v, false
	}
	v.flags, v.sameSite = b[1], b[2]
	v.nameLen = binary.BigEndian.Uint16(b[3:])
	v.created = int64(binary.BigEndian.Uint64(b[5:]))
	v.expires = int64(binary.BigEndian.Uint64(b[13:]))
	v.accessed = binary.BigEndian.Uint32(b[21:])
	b = b[v1Fixed:]
	for _, s := range []*string{&v.pair, &v.domain, &v.path} {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return v, false
		}
		*s, b = string(b[k:k+int(n)]), b[k+int(n):]
	}
	return v, len(b) == 0
}

func (v *v1) marshal() []byte {
	b := make([]byte, 0, v1Fixed+len(v.pair)+len(v.domain)+len(v.path)+9)
	b = append(b, encodingV1, v.flags, v.sameSite)
	b = binary.BigEndian.AppendUint16(b, v.nameLen)
	b = binary.BigEndian.AppendUint64(b, uint64(v.created))
	b = binary.BigEndian.AppendUint64(b, uint64(v.expires))
	b = binary.BigEndian.AppendUint32(b, v.accessed)
	for _, s := range []string{v.pair, v.domain, v.path} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

// cookiePlaintext encodes c for a session created at sessionCreated
// (UnixNano) whose home domain is home (if haveHome).
func cookiePlaintext(c *sessions.Cookie, sessionCreated int64, home string, haveHome bool) ([]byte, error) {
	enc, err := c.MarshalBinary()
	if err != nil {
		return nil, err
	}
	v, ok := parseV1(enc)
	hasExpiry := v.flags&persistent != 0
	if !ok || v.flags >= 16 || v.sameSite >= 4 || hasExpiry != (v.expires != noExpiry) ||
		(v.nameLen > 0 && strings.IndexByte(v.pair, '=') != int(v.nameLen)) || (v.nameLen == 0 && v.pair == "") {
		return append([]byte{rawHeader}, enc...), nil
	}
	header := v.flags | v.sameSite<<4
	isHome := haveHome && v.domain == home
	if isHome {
		header |= homeBit
	}
	if v.path == "/" {
		header |= rootBit
	}
	if header == rawHeader {
		return append([]byte{rawHeader}, enc...), nil
	}
	b := make([]byte, 0, 1+3*binary.MaxVarintLen64+len(v.domain)+len(v.path)+len(v.pair)+5)
	b = append(b, header)
	b = binary.AppendVarint(b, v.created-sessionCreated)
	b = binary.AppendVarint(b, int64(v.accessed)-sessionCreated/1e9)
	if hasExpiry {
		b = binary.AppendVarint(b, v.expires-v.created)
	}
	if !isHome {
		b = binary.AppendUvarint(b, uint64(len(v.domain)))
		b = append(b, v.domain...)
	}
	if v.path != "/" {
		b = binary.AppendUvarint(b, uint64(len(v.path)))
		b = append(b, v.path...)
	}
	if v.nameLen == 0 {
		b = append(b, '=')
	}
	return append(b, v.pair...), nil
}

// openPlaintext decodes what cookiePlaintext encoded.
func openPlaintext(b []byte, sessionCreated int64, home string, haveHome bool) (sessions.Cookie, error) {
	var c sessions.Cookie
	if len(b) == 0 {
		return c, errEncoding
	}
	header := b[0]
	if header == rawHeader {
		return c, c.UnmarshalBinary(b[1:])
	}
	v := v1{flags: header & 15, sameSite: header >> 4 & 3}
	b = b[1:]
	varint := func() int64 {
		n, k := binary.Varint(b)
		if k <= 0 {
			b = nil
			return 0
		}
		b = b[k:]
		return n
	}
	str := func() (string, bool) {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return "", false
		}
		s := string(b[k : k+int(n)])
		b = b[k+int(n):]
		return s, true
	}
	v.created = sessionCreated + varint()
	v.accessed = uint32(sessionCreated/1e9 + varint())
	v.expires = noExpiry
	if v.flags&persistent != 0 {
		v.expires = v.created + varint()
	}
	if b == nil {
		return c, errEncoding
	}
	ok := true
	switch {
	case header&homeBit == 0:
		v.domain, ok = str()
	case haveHome:
		v.domain = home
	default:
		return c, errEncoding
	}
	if header&rootBit != 0 {
		v.path = "/"
	} else if ok {
		v.path, ok = str()
	}
	if !ok || len(b) == 0 {
		return c, errEncoding
	}
	if b[0] == '=' {
		v.pair = string(b[1:])
	} else {
		i := strings.IndexByte(string(b), '=')
		if i <= 0 {
			return c, errEncoding
		}
		v.nameLen, v.pair = uint16(i), string(b)
	}
	return c, c.UnmarshalBinary(v.marshal())
}
