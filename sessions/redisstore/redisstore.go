// Package redisstore is a sessions.Store on Redis or Valkey, shared by
// every proxysession replica, with sessions encrypted at rest.
//
// Each session is one Redis hash. Its key is derived from the session id's
// lookup half by hashing; the raw id is never stored. Each cookie is one
// field, named by an HMAC of the cookie's identity and holding the cookie
// sealed with AES-256-GCM; the keys for both come from the secret half of
// the id (HKDF-SHA256), which only the browser's session cookie carries.
// A Redis dump alone is therefore useless: without the cookie, neither the
// cookies' names nor their values can be read, and a record moved to
// another field or session fails authentication.
//
// Writing cookie by cookie means parallel requests of one session never
// undo each other's writes. Each direction of an exchange costs one round
// trip: a Lua script reads the session and renews its expiry, another
// writes the changed fields. The key's TTL follows the session's absolute
// lifetime and idle timeout.
//
// Parallel exchanges work on their own copies of a session, so the commit
// script is where the session's limits hold: it refuses new cookies beyond
// the per-session count and byte limits, and it deletes a cookie that an
// exchange purged (found expired, or evicted for the limits) only if the
// field still holds the very record that exchange read. A cookie the
// backend deleted on purpose is deleted whatever the field holds.
//
// Each hash also holds a verifier of the id's secret half. The scripts
// compare it before they read, touch or write anything, so an id with the
// right lookup half and a wrong secret neither renews, nor deletes, nor
// writes to the session.
package redisstore

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/proxysession/proxysession/sessions"
)

// Options configure a Store.
type Options struct {
	// Lifetime and IdleTimeout must be the Cache's: they set the keys'
	// expiry (the earlier of the absolute deadline and now + idle).
	Lifetime, IdleTimeout time.Duration
	// MaxCookies and MaxBytes must be the Cache's MaxCookiesPerSession
	// and MaxBytesPerSession: the commit script enforces them on the
	// stored session, which parallel exchanges write to at once.
	// Defaults sessions.DefaultMaxCookiesPerSession and
	// sessions.DefaultMaxBytesPerSession.
	MaxCookies, MaxBytes int
	// KeyPrefix starts every key. Default DefaultKeyPrefix.
	KeyPrefix string
	// Timeout bounds each store operation; keep it well under Envoy's
	// message_timeout (200ms by default). Default 100ms.
	Timeout time.Duration
	// Logger receives undecryptable records (never their contents).
	// Default slog.Default().
	Logger *slog.Logger
	// Now returns the current time. Default time.Now.
	Now func() time.Time
}

// Defaults for Options fields left zero.
const (
	// DefaultKeyPrefix starts every key proxysession writes.
	DefaultKeyPrefix = "proxysession:"
	// DefaultTimeout bounds each store operation: well under Envoy's
	// default ext_proc message_timeout of 200ms.
	DefaultTimeout = 100 * time.Millisecond
)

// Store is a sessions.Store on Redis.
type Store struct {
	client redis.UniversalClient
	opts   Options

	undecryptable atomic.Uint64
	failures      atomic.Uint64
	refused       atomic.Uint64
}

// New returns a Store that keeps sessions in client.
func New(client redis.UniversalClient, opts Options) (*Store, error) {
	if opts.Lifetime <= 0 || opts.IdleTimeout <= 0 {
		return nil, errors.New("redisstore: Lifetime and IdleTimeout must be set to the Cache's")
	}
	if opts.MaxCookies < 0 || opts.MaxBytes < 0 {
		return nil, errors.New("redisstore: MaxCookies and MaxBytes must be the Cache's limits")
	}
	if opts.MaxCookies == 0 {
		opts.MaxCookies = sessions.DefaultMaxCookiesPerSession
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = sessions.DefaultMaxBytesPerSession
	}
	if opts.KeyPrefix == "" {
		opts.KeyPrefix = DefaultKeyPrefix
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Store{client: client, opts: opts}, nil
}

// Fields of a session's hash besides its cookies. Cookie fields are 22
// characters long, so they cannot clash.
const (
	fieldMeta     = "m" // sealed: format version and creation time
	fieldDeadline = "x" // absolute deadline, Unix ms, for the expiry
	fieldLastSeen = "l" // last request, Unix ms
	fieldVerifier = "v" // verifier of the id's secret half
)

// The scripts compare the verifier with Lua's string equality, which is
// not constant-time. What timing could leak is one session's verifier, a
// 128-bit HKDF output that reveals nothing about the secret it comes from,
// and only to someone who already knows the session's lookup half. With
// it they could renew, end or fill the session, but never read or forge
// its records, whose keys come from the secret itself. And timing a
// 16-byte comparison inside Redis through the proxy is not practical.

// findScript reads a session and renews its expiry to the earlier of its
// absolute deadline and now + idle timeout, recording now as its last use.
// It returns the fields as they were before, or nothing, without touching
// the session, when the verifier (ARGV[3]) does not match. Sessions
// written before the verifier existed have none: they are unknown.
var findScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], 'v')
if not v or v ~= ARGV[3] then return {} end
local h = redis.call('HGETALL', KEYS[1])
local deadline = tonumber(redis.call('HGET', KEYS[1], 'x'))
if deadline then
  redis.call('HSET', KEYS[1], 'l', ARGV[1])
  redis.call('PEXPIREAT', KEYS[1], math.min(deadline, tonumber(ARGV[1]) + tonumber(ARGV[2])))
end
return h`)

// deleteScript deletes a session if the verifier (ARGV[1]) matches.
var deleteScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'v') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)

// commitScript writes one exchange's changes to a session and renews its
// expiry. It writes nothing and returns {0, 0} when the verifier does not
// match: the session is gone (a parallel logout must not be undone), or
// the id's secret is wrong. Else it returns {1, refused}.
//
// It works argument by argument (Lua's unpack fails beyond a few thousand
// values). First the deletions: unconditional without a revision (the
// backend deleted the cookie), else only if the field's record still
// starts with the revision the exchange read (it purged the cookie from
// its copy). Then the stored cookies, within the session's limits as it
// stands now: a new field is refused beyond MaxCookies, any write beyond
// MaxBytes. A cookie's bytes are its record's length minus a fixed
// overhead (records are padded to make it so).
//
// ARGV: new ("1"/"0"), verifier, now ms, idle ms, max cookies, max bytes,
// record overhead, number of deletions nd, of stores ns, then for a new
// session its meta record and deadline ms (else empty); then nd
// field/revision pairs and ns field/record pairs.
var commitScript = redis.NewScript(`
local key = KEYS[1]
local v = redis.call('HGET', key, 'v')
if ARGV[1] == '1' then
  if v and v ~= ARGV[2] then return {0, 0} end
  redis.call('HSET', key, 'v', ARGV[2], 'm', ARGV[10], 'x', ARGV[11], 'l', ARGV[3])
elseif not v or v ~= ARGV[2] then
  return {0, 0}
end
local nd, ns = tonumber(ARGV[8]), tonumber(ARGV[9])
local i = 12
for _ = 1, nd do
  local f, rev = ARGV[i], ARGV[i + 1]
  if rev == '' then
    redis.call('HDEL', key, f)
  else
    local rec = redis.call('HGET', key, f)
    if rec and string.sub(rec, 1, #rev) == rev then redis.call('HDEL', key, f) end
  end
  i = i + 2
end
local refused = 0
if ns > 0 then
  local maxn, maxb, over = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  local n, b = 0, 0
  for _, f in ipairs(redis.call('HKEYS', key)) do
    if #f > 1 then
      n = n + 1
      b = b + redis.call('HSTRLEN', key, f) - over
    end
  end
  for _ = 1, ns do
    local f, rec = ARGV[i], ARGV[i + 1]
    local old = redis.call('HSTRLEN', key, f)
    local nb = b + #rec - over
    if old > 0 then nb = nb - (old - over) end
    if nb > maxb or (old == 0 and n >= maxn) then
      refused = refused + 1
    else
      redis.call('HSET', key, f, rec)
      b = nb
      if old == 0 then n = n + 1 end
    end
    i = i + 2
  end
end
local deadline = tonumber(redis.call('HGET', key, 'x'))
if deadline then
  redis.call('PEXPIREAT', key, math.min(deadline, tonumber(ARGV[3]) + tonumber(ARGV[4])))
end
return {1, refused}`)

// sessionKeys is what one session's id yields: its Redis key, the keys
// that seal its records and name its cookie fields, and the verifier of
// its secret.
type sessionKeys struct {
	redisKey string
	aead     cipher.AEAD
	fieldKey []byte
	verifier string
}

// keysFor derives a session's keys from its id.
func (s *Store) keysFor(id sessions.ID) (*sessionKeys, error) {
	lookup, secret := id.Key(), id.Secret()
	sum := sha256.Sum256(append([]byte("proxysession/v1/key\x00"), lookup[:]...))
	sealKey, err := hkdf.Key(sha256.New, secret[:], lookup[:], "proxysession/v1/seal", 32)
	if err != nil {
		return nil, err
	}
	fieldKey, err := hkdf.Key(sha256.New, secret[:], lookup[:], "proxysession/v1/field", 32)
	if err != nil {
		return nil, err
	}
	verifier, err := hkdf.Key(sha256.New, secret[:], lookup[:], "proxysession/v1/verifier", 16)
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
	return &sessionKeys{
		redisKey: s.opts.KeyPrefix + base64.RawURLEncoding.EncodeToString(sum[:]),
		aead:     aead,
		fieldKey: fieldKey,
		verifier: string(verifier),
	}, nil
}

// fieldName names a cookie's field: an HMAC of its identity (which holds
// its name and domain), so the hash reveals neither.
func (k *sessionKeys) fieldName(cookieKey string) string {
	mac := hmac.New(sha256.New, k.fieldKey)
	mac.Write([]byte(cookieKey))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil)[:16])
}

// sealVersion 2 pads cookie records (see cookiePlaintext). Version 1
// records, from before the verifier, belong to sessions that are unknown
// now since they have no verifier.
const sealVersion = 2

// A record is the version byte, the nonce, the ciphertext and the GCM tag.
// Its first revisionBytes (version and random nonce) differ for every
// write: they are the record's revision, which the commit script compares
// before it deletes a purged cookie.
const (
	nonceBytes    = 12
	tagBytes      = 16
	revisionBytes = 1 + nonceBytes
)

// A cookie record's plaintext is the cookie's encoding, zero bytes, and
// the number of zero bytes, padded to exactly the cookie's size (the bytes
// it counts against the session's limit) + plainOverhead. The encoding
// has 25 bytes of fixed fields and three length prefixes of up to 3 bytes
// each (lengths below 2 MiB), so the padding always fits. The commit
// script then knows a cookie's size from its record's length alone:
// recordOverhead less. (The ciphertext's length gave the size away
// within a few bytes before; now it gives it exactly.)
const (
	plainOverhead  = 25 + 3*3 + 1
	recordOverhead = revisionBytes + plainOverhead + tagBytes
)

// cookieSize is what c counts against the session's byte limit (the
// engine's Cookie.size): name, "=" when there is a name, value, domain
// and path.
func cookieSize(c *sessions.Cookie) int {
	n := len(c.Name()) + len(c.Value()) + len(c.Domain()) + len(c.Path())
	if c.Name() != "" {
		n++
	}
	return n
}

// cookiePlaintext encodes c padded to cookieSize(c) + plainOverhead.
func cookiePlaintext(c *sessions.Cookie) ([]byte, error) {
	enc, err := c.MarshalBinary()
	if err != nil {
		return nil, err
	}
	pad := cookieSize(c) + plainOverhead - 1 - len(enc)
	if pad < 0 || pad > 255 {
		return nil, errors.New("cookie encoding does not fit its record")
	}
	plain := make([]byte, len(enc), len(enc)+pad+1)
	copy(plain, enc)
	plain = append(plain, make([]byte, pad)...)
	return append(plain, byte(pad)), nil
}

// openCookie decodes a plaintext made by cookiePlaintext.
func openCookie(plain []byte) (sessions.Cookie, error) {
	var c sessions.Cookie
	if len(plain) == 0 {
		return c, errors.New("empty record")
	}
	pad := int(plain[len(plain)-1])
	if pad+1 > len(plain) {
		return c, errors.New("bad padding")
	}
	if err := c.UnmarshalBinary(plain[:len(plain)-1-pad]); err != nil {
		return c, err
	}
	if len(plain) != cookieSize(&c)+plainOverhead {
		return c, errors.New("bad padding")
	}
	return c, nil
}

// seal encrypts a record for one field of one session: the additional
// data binds it to both.
func (k *sessionKeys) seal(field string, plaintext []byte) string {
	nonce := make([]byte, 1+nonceBytes, 1+nonceBytes+len(plaintext)+tagBytes)
	nonce[0] = sealVersion
	rand.Read(nonce[1:])
	return string(k.aead.Seal(nonce, nonce[1:], plaintext, k.additionalData(field)))
}

func (k *sessionKeys) open(field, record string) ([]byte, error) {
	if len(record) < 1+nonceBytes+tagBytes || record[0] != sealVersion {
		return nil, errors.New("malformed record")
	}
	b := []byte(record)
	return k.aead.Open(nil, b[1:1+nonceBytes], b[1+nonceBytes:], k.additionalData(field))
}

func (k *sessionKeys) additionalData(field string) []byte {
	return []byte(k.redisKey + "\x00" + field)
}

// ctx bounds an operation by the store's timeout.
func (s *Store) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.opts.Timeout)
}

// failed counts and wraps a Redis error.
func (s *Store) failed(op string, err error) error {
	s.failures.Add(1)
	return fmt.Errorf("redis %s: %w", op, err)
}

// Find implements sessions.Store: one round trip that reads the session
// and renews its expiry. A wrong secret finds nothing and changes nothing.
func (s *Store) Find(ctx context.Context, id sessions.ID) (*sessions.Session, error) {
	keys, err := s.keysFor(id)
	if err != nil {
		return nil, err
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	now := s.opts.Now()
	res, err := findScript.Run(ctx, s.client, []string{keys.redisKey},
		now.UnixMilli(), s.opts.IdleTimeout.Milliseconds(), keys.verifier).StringSlice()
	if err != nil {
		return nil, s.failed("find", err)
	}
	if len(res) == 0 {
		return nil, nil
	}
	var (
		created, lastSeen time.Time
		haveMeta          bool
		cookies           []sessions.Cookie
		revisions         []string
	)
	for i := 0; i+1 < len(res); i += 2 {
		field, value := res[i], res[i+1]
		switch field {
		case fieldMeta:
			plain, err := keys.open(field, value)
			if err != nil || len(plain) != 9 || plain[0] != 1 {
				s.undecryptableRecord(ctx, "session", err)
				return nil, nil
			}
			created, haveMeta = time.UnixMilli(int64(binary.BigEndian.Uint64(plain[1:]))), true
		case fieldLastSeen:
			ms, err := strconv.ParseInt(value, 10, 64)
			if err != nil {
				s.undecryptableRecord(ctx, "last-seen", err)
				return nil, nil
			}
			lastSeen = time.UnixMilli(ms)
		case fieldDeadline, fieldVerifier:
		default:
			plain, err := keys.open(field, value)
			var c sessions.Cookie
			if err == nil {
				c, err = openCookie(plain)
			}
			if err == nil && keys.fieldName(c.Key()) != field {
				err = errors.New("record does not belong to its field")
			}
			if err != nil {
				s.undecryptableRecord(ctx, "cookie", err)
				continue // never sent to a backend
			}
			cookies = append(cookies, c)
			revisions = append(revisions, value[:revisionBytes])
		}
	}
	if !haveMeta || lastSeen.IsZero() {
		s.undecryptableRecord(ctx, "session", errors.New("incomplete session record"))
		return nil, nil
	}
	return sessions.RestoreSessionRevisions(id, created, lastSeen, cookies, revisions), nil
}

// undecryptableRecord logs and counts a record that cannot be trusted:
// tampered with, written under another key, or corrupt.
func (s *Store) undecryptableRecord(ctx context.Context, what string, err error) {
	s.undecryptable.Add(1)
	msg := "unknown"
	if err != nil {
		msg = err.Error()
	}
	s.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "ignored a session store record that fails authentication",
		slog.String("record", what), slog.String("error", msg))
}

// commitHeader is the number of commitScript's fixed arguments.
const commitHeader = 11

// Commit implements sessions.Store: one round trip that writes the
// changed cookies field by field, within the session's limits. Cookies
// the limits refuse are counted (Refused) and logged, not an error: the
// exchange's response goes on, and the jar stays within its limits.
func (s *Store) Commit(ctx context.Context, sess *sessions.Session, ch *sessions.Changes) error {
	if ch.Empty() {
		return nil
	}
	keys, err := s.keysFor(sess.ID())
	if err != nil {
		return err
	}
	now := s.opts.Now()
	newFlag, meta, deadline := "0", "", ""
	if ch.New {
		created := sess.Created()
		plain := make([]byte, 9)
		plain[0] = 1
		binary.BigEndian.PutUint64(plain[1:], uint64(created.UnixMilli()))
		newFlag, meta = "1", keys.seal(fieldMeta, plain)
		deadline = strconv.FormatInt(created.Add(s.opts.Lifetime).UnixMilli(), 10)
	}
	args := make([]any, commitHeader, commitHeader+2*len(ch.Deleted)+2*len(ch.Stored))
	copy(args, []any{newFlag, keys.verifier, now.UnixMilli(), s.opts.IdleTimeout.Milliseconds(),
		s.opts.MaxCookies, s.opts.MaxBytes, recordOverhead,
		len(ch.Deleted), 0, meta, deadline})
	for _, d := range ch.Deleted {
		args = append(args, keys.fieldName(d.Key), d.Revision)
	}
	stored, refused := 0, 0
	for i := range ch.Stored {
		c := &ch.Stored[i]
		plain, err := cookiePlaintext(c)
		if err != nil {
			refused++ // beyond any sensible limit: lengths of 2 MiB
			continue
		}
		field := keys.fieldName(c.Key())
		args = append(args, field, keys.seal(field, plain))
		stored++
	}
	args[8] = stored
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	res, err := commitScript.Run(ctx, s.client, []string{keys.redisKey}, args...).Int64Slice()
	if err != nil {
		return s.failed("commit", err)
	}
	if len(res) == 2 {
		refused += int(res[1])
	}
	if refused > 0 {
		s.refused.Add(uint64(refused))
		s.opts.Logger.LogAttrs(ctx, slog.LevelInfo, "refused backend cookies beyond the session limits",
			slog.Int("count", refused))
	}
	return nil
}

// Delete implements sessions.Store. It deletes nothing when the id's
// secret is wrong.
func (s *Store) Delete(ctx context.Context, id sessions.ID) error {
	keys, err := s.keysFor(id)
	if err != nil {
		return err
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	if err := deleteScript.Run(ctx, s.client, []string{keys.redisKey}, keys.verifier).Err(); err != nil {
		return s.failed("delete", err)
	}
	return nil
}

// Ping implements sessions.Pinger: it reports whether Redis answers.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	if err := s.client.Ping(ctx).Err(); err != nil {
		return s.failed("ping", err)
	}
	return nil
}

// StoreStats implements sessions.StatsReporter. Redis holds the
// sessions of every replica, so it does not count them.
func (s *Store) StoreStats() sessions.StoreStats {
	return sessions.StoreStats{
		Sessions: -1, Bytes: -1,
		Failures: s.failures.Load(), Undecryptable: s.undecryptable.Load(), Refused: s.refused.Load(),
	}
}

// Undecryptable returns how many records failed authentication.
func (s *Store) Undecryptable() uint64 { return s.undecryptable.Load() }

// Failures returns how many Redis operations failed.
func (s *Store) Failures() uint64 { return s.failures.Load() }

// Refused returns how many stored cookies the commit script refused
// because the session was at its cookie or byte limit (parallel
// exchanges filled it).
func (s *Store) Refused() uint64 { return s.refused.Load() }

// ClientLogger adapts an slog.Logger to go-redis's internal logger
// (redis.SetLogger), at level Warn: connection failures and the like.
type ClientLogger struct{ Logger *slog.Logger }

// Printf implements go-redis's internal.Logging.
func (l ClientLogger) Printf(ctx context.Context, format string, v ...any) {
	l.Logger.WarnContext(ctx, "redis client: "+fmt.Sprintf(format, v...))
}
