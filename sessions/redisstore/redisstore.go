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
	// KeyPrefix starts every key. Default "proxysession:".
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

// Store is a sessions.Store on Redis.
type Store struct {
	client redis.UniversalClient
	opts   Options

	undecryptable atomic.Uint64
	failures      atomic.Uint64
}

// New returns a Store that keeps sessions in client.
func New(client redis.UniversalClient, opts Options) (*Store, error) {
	if opts.Lifetime <= 0 || opts.IdleTimeout <= 0 {
		return nil, errors.New("redisstore: Lifetime and IdleTimeout must be set to the Cache's")
	}
	if opts.KeyPrefix == "" {
		opts.KeyPrefix = "proxysession:"
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 100 * time.Millisecond
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
)

// findScript reads a session and renews its expiry to the earlier of its
// absolute deadline and now + idle timeout, recording now as its last use.
// It returns the fields as they were before.
var findScript = redis.NewScript(`
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return h end
local deadline = tonumber(redis.call('HGET', KEYS[1], 'x'))
if deadline then
  redis.call('HSET', KEYS[1], 'l', ARGV[1])
  redis.call('PEXPIREAT', KEYS[1], math.min(deadline, tonumber(ARGV[1]) + tonumber(ARGV[2])))
end
return h`)

// commitScript writes fields and deletes fields of a session, and renews
// its expiry. For an existing session (ARGV[1] = "0") it does nothing if
// the session is gone: a parallel logout must not be undone.
//
// ARGV: new, now ms, idle ms, number of field/value pairs n, the n pairs,
// then the fields to delete.
var commitScript = redis.NewScript(`
if ARGV[1] ~= '1' and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = tonumber(ARGV[4])
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 5, 4 + 2 * n)) end
if #ARGV > 4 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 5 + 2 * n)) end
local deadline = tonumber(redis.call('HGET', KEYS[1], 'x'))
if deadline then
  redis.call('PEXPIREAT', KEYS[1], math.min(deadline, tonumber(ARGV[2]) + tonumber(ARGV[3])))
end
return 1`)

// sessionKeys is what one session's id yields: its Redis key, and the keys
// that seal its records and name its cookie fields.
type sessionKeys struct {
	redisKey string
	aead     cipher.AEAD
	fieldKey []byte
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
	}, nil
}

// fieldName names a cookie's field: an HMAC of its identity (which holds
// its name and domain), so the hash reveals neither.
func (k *sessionKeys) fieldName(cookieKey string) string {
	mac := hmac.New(sha256.New, k.fieldKey)
	mac.Write([]byte(cookieKey))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil)[:16])
}

const sealVersion = 1

// seal encrypts a record for one field of one session: the additional
// data binds it to both.
func (k *sessionKeys) seal(field string, plaintext []byte) string {
	nonce := make([]byte, 1+k.aead.NonceSize(), 1+k.aead.NonceSize()+len(plaintext)+k.aead.Overhead())
	nonce[0] = sealVersion
	rand.Read(nonce[1:])
	return string(k.aead.Seal(nonce, nonce[1:], plaintext, k.additionalData(field)))
}

func (k *sessionKeys) open(field, record string) ([]byte, error) {
	n := k.aead.NonceSize()
	if len(record) < 1+n+k.aead.Overhead() || record[0] != sealVersion {
		return nil, errors.New("malformed record")
	}
	b := []byte(record)
	return k.aead.Open(nil, b[1:1+n], b[1+n:], k.additionalData(field))
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
// and renews its expiry.
func (s *Store) Find(ctx context.Context, id sessions.ID) (*sessions.Session, error) {
	keys, err := s.keysFor(id)
	if err != nil {
		return nil, err
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	now := s.opts.Now()
	res, err := findScript.Run(ctx, s.client, []string{keys.redisKey}, now.UnixMilli(), s.opts.IdleTimeout.Milliseconds()).StringSlice()
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
		case fieldDeadline:
		default:
			var c sessions.Cookie
			plain, err := keys.open(field, value)
			if err == nil {
				err = c.UnmarshalBinary(plain)
			}
			if err == nil && keys.fieldName(c.Key()) != field {
				err = errors.New("record does not belong to its field")
			}
			if err != nil {
				s.undecryptableRecord(ctx, "cookie", err)
				continue // never sent to a backend
			}
			cookies = append(cookies, c)
		}
	}
	if !haveMeta || lastSeen.IsZero() {
		s.undecryptableRecord(ctx, "session", errors.New("incomplete session record"))
		return nil, nil
	}
	return sessions.RestoreSession(id, created, lastSeen, cookies), nil
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

// Commit implements sessions.Store: one round trip that writes the
// changed cookies field by field.
func (s *Store) Commit(ctx context.Context, sess *sessions.Session, ch *sessions.Changes) error {
	if !ch.New && len(ch.Stored) == 0 && len(ch.Deleted) == 0 {
		return nil
	}
	keys, err := s.keysFor(sess.ID())
	if err != nil {
		return err
	}
	now := s.opts.Now()
	pairs := make([]any, 0, 2*(len(ch.Stored)+3))
	if ch.New {
		created := sess.Created()
		meta := make([]byte, 9)
		meta[0] = 1
		binary.BigEndian.PutUint64(meta[1:], uint64(created.UnixMilli()))
		pairs = append(pairs,
			fieldMeta, keys.seal(fieldMeta, meta),
			fieldDeadline, created.Add(s.opts.Lifetime).UnixMilli(),
			fieldLastSeen, now.UnixMilli())
	}
	for i := range ch.Stored {
		c := &ch.Stored[i]
		plain, err := c.MarshalBinary()
		if err != nil {
			return err
		}
		field := keys.fieldName(c.Key())
		pairs = append(pairs, field, keys.seal(field, plain))
	}
	newFlag := "0"
	if ch.New {
		newFlag = "1"
	}
	args := append([]any{newFlag, now.UnixMilli(), s.opts.IdleTimeout.Milliseconds(), len(pairs) / 2}, pairs...)
	for _, k := range ch.Deleted {
		args = append(args, keys.fieldName(k))
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	if err := commitScript.Run(ctx, s.client, []string{keys.redisKey}, args...).Err(); err != nil {
		return s.failed("commit", err)
	}
	return nil
}

// Delete implements sessions.Store.
func (s *Store) Delete(ctx context.Context, id sessions.ID) error {
	keys, err := s.keysFor(id)
	if err != nil {
		return err
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	if err := s.client.Del(ctx, keys.redisKey).Err(); err != nil {
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

// Undecryptable returns how many records failed authentication.
func (s *Store) Undecryptable() uint64 { return s.undecryptable.Load() }

// Failures returns how many Redis operations failed.
func (s *Store) Failures() uint64 { return s.failures.Load() }

// ClientLogger adapts an slog.Logger to go-redis's internal logger
// (redis.SetLogger), at level Warn: connection failures and the like.
type ClientLogger struct{ Logger *slog.Logger }

// Printf implements go-redis's internal.Logging.
func (l ClientLogger) Printf(ctx context.Context, format string, v ...any) {
	l.Logger.WarnContext(ctx, "redis client: "+fmt.Sprintf(format, v...))
}
