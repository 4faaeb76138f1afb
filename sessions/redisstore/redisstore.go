// Package redisstore is a sessions.Store on Redis or Valkey, shared by
// every proxysession replica, with sessions encrypted at rest.
//
// Each session is one Redis hash. Its key is a verifier of the session
// id, derived from both halves; the raw id is never stored. Each cookie is
// one field, named by an HMAC of the cookie's identity and holding the
// cookie sealed with AES-256-GCM; the keys for all three come from the
// secret half of the id (HKDF-SHA256, internal/seal), which only the
// browser's session cookie carries.
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
// Since the key is the verifier of the id's secret half, an id with the
// right lookup half and a wrong secret names another key: it neither
// renews, nor deletes, nor writes to the session.
package redisstore

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/redis/go-redis/v9"

	"github.com/proxysession/proxysession/internal/seal"
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
	// WaitReplicas, when above 0, makes each write wait until that many
	// replicas have it (Redis WAIT, on the write's connection), for half
	// of Timeout at most; a write they do not confirm in time still
	// succeeds, and is counted (UnderReplicated). Not with a
	// *redis.ClusterClient (WAIT must reach the key's master).
	WaitReplicas int
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
	// underReplicated counts writes WaitReplicas did not confirm.
	underReplicated atomic.Uint64

	// homes holds the home domain of each session Find returned, by
	// weak.Pointer[sessions.Session], until the session is collected.
	homes sync.Map
}

// New returns a Store that keeps sessions in client.
func New(client redis.UniversalClient, opts Options) (*Store, error) {
	if opts.Lifetime <= 0 || opts.IdleTimeout <= 0 {
		return nil, errors.New("redisstore: Lifetime and IdleTimeout must be set to the Cache's")
	}
	if opts.MaxCookies < 0 || opts.MaxBytes < 0 {
		return nil, errors.New("redisstore: MaxCookies and MaxBytes must be the Cache's limits")
	}
	if _, cluster := client.(*redis.ClusterClient); opts.WaitReplicas < 0 || opts.WaitReplicas > 0 && cluster {
		return nil, errors.New("redisstore: WaitReplicas must not be negative, and is not for a cluster")
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

// The format of a session's hash (version 3). Every key and name comes
// from internal/seal under formatContext, so a hash of another format is
// never found: the key derivation changed with it.
//
//	key   prefix + base64url(the session's verifier: 16 bytes of HKDF)
//	"s"   state, in the clear for the scripts: absolute deadline ‖ last
//	      request, Unix ms, 6 bytes big-endian each
//	"m"   meta, sealed: the session's creation (UnixNano, 8 bytes) ‖ its
//	      home domain (the rest), which its cookies' records may omit
//	head  a cookie: its field is the first 8 bytes of the HMAC of its
//	      identity (Cookie.Key); its record is size ‖ nonce ‖ ciphertext ‖
//	      tag, size the cookie's bytes against the session's limit
//	      (uvarint, in the clear for the commit script), the additional
//	      data binding it to the session, the field and the size
//	tail  when the record is longer than 64 bytes, its first 63 stay in
//	      the head's field and the rest goes to a field named by the head's
//	      first 7 bytes
//
// Redis keeps a hash whose fields and values are all at most 64 bytes
// long (hash-max-listpack-value), and at most 128 of them, in one compact
// listpack; a single longer value turns it into a hash table, which costs
// several times as much for a small session. Hence the binary state, the
// short names, the compact cookie encoding (cookiePlaintext) and the
// split records. The names' lengths tell the fields apart: 1 byte for the
// state and meta, 8 for a cookie, 7 for a tail. 64 bits of HMAC keep the
// chance that two of a session's 300 cookies share a field (or 56 bits, a
// tail) below 10⁻¹²; a stranger cannot aim at one without the id.
const (
	formatContext = "proxysession/v3"
	fieldState    = "s"
	fieldMeta     = "m"
	headNameBytes = 8
	tailNameBytes = 7
	// A record of up to maxValue bytes stays whole; a longer one keeps
	// splitAt bytes (the longest a listpack stores with a 1-byte header)
	// in its head.
	maxValue   = 64
	splitAt    = 63
	stateBytes = 6 + 6
)

// Version 2 of the format kept the verifier in a field of a hash named by
// the lookup half alone, and the scripts compared it, in Lua, which is not
// constant-time. Naming the hash by the verifier does the same check with
// Redis's own key lookup, and saves the field. A 128-bit HKDF output, it
// reveals nothing about the secret it comes from; whoever reads it in a
// dump could renew, end or fill the session through Redis, but never read
// or forge its records, whose keys come from the secret itself.

// luaNum6 decodes a 6-byte big-endian number at position i of a string
// (Unix ms are below 2^48, and exact in Lua's doubles).
const luaNum6 = `
local function num6(s, i)
  local n = 0
  for j = i, i + 5 do n = n * 256 + string.byte(s, j) end
  return n
end
`

// findScript reads a session and renews its expiry to the earlier of its
// absolute deadline and now (ARGV[1]) + idle timeout (ARGV[2]), recording
// now (ARGV[3], 6 bytes) as its last use. It returns the fields as they
// were before, or nothing when there is no session (no state: a hash of
// another format is not one).
var findScript = redis.NewScript(luaNum6 + `
local s = redis.call('HGET', KEYS[1], 's')
if not s or #s ~= 12 then return {} end
local h = redis.call('HGETALL', KEYS[1])
if redis.call('HEXISTS', KEYS[1], 'f') == 1 then return h end
redis.call('HSET', KEYS[1], 's', string.sub(s, 1, 6) .. ARGV[3])
redis.call('PEXPIREAT', KEYS[1], math.min(num6(s, 1), tonumber(ARGV[1]) + tonumber(ARGV[2])))
return h`)

// commitScript writes one exchange's changes to a session and renews its
// expiry. It writes nothing and returns {0, 0} when an existing session
// has no state: it is gone (a parallel logout must not be undone). (A
// wrong secret names another key, where there is no session either.)
// Else it returns {1, refused}.
//
// It works argument by argument (Lua's unpack fails beyond a few thousand
// values). First the deletions: unconditional without a revision (the
// backend deleted the cookie), else only if the head still starts with
// the revision the exchange read (it purged the cookie from its copy).
// Then the stored cookies, within the session's limits as it stands now:
// a new field is refused beyond MaxCookies, any write beyond MaxBytes. A
// cookie's bytes are the size its record starts with.
//
// ARGV: new ("1"/"0"), now ms, idle ms, max cookies, max bytes,
// number of deletions nd, of stores ns, then for a new session its state
// and meta (else empty); then nd head/tail/revision triples and ns
// head/tail/head record/tail record quadruples (an empty tail record
// deletes the tail).
var commitScript = redis.NewScript(luaNum6 + `
local function size(rec)
  local n, m = 0, 1
  for i = 1, 4 do
    local b = string.byte(rec, i)
    if not b then return 0 end
    n = n + (b % 128) * m
    if b < 128 then return n end
    m = m * 128
  end
  return n
end
local key = KEYS[1]
local s = redis.call('HGET', key, 's')
if ARGV[1] == '1' then
  s = ARGV[8]
  redis.call('HSET', key, 's', s, 'm', ARGV[9])
elseif not s or #s ~= 12 then
  return {0, 0}
elseif redis.call('HEXISTS', key, 'f') == 1 then
  return {2, 0}
end
local nd, ns = tonumber(ARGV[6]), tonumber(ARGV[7])
local i = 10
for _ = 1, nd do
  local f, t, rev = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if rev == '' then
    redis.call('HDEL', key, f, t)
  else
    local rec = redis.call('HGET', key, f)
    if rec and string.sub(rec, 1, #rev) == rev then redis.call('HDEL', key, f, t) end
  end
  i = i + 3
end
local refused = 0
if ns > 0 then
  local maxn, maxb = tonumber(ARGV[4]), tonumber(ARGV[5])
  local n, b = 0, 0
  for _, f in ipairs(redis.call('HKEYS', key)) do
    if #f == 8 then
      n = n + 1
      b = b + size(redis.call('HGET', key, f))
    end
  end
  for _ = 1, ns do
    local f, t, head, tail = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local old = redis.call('HGET', key, f)
    local nb = b + size(head)
    if old then nb = nb - size(old) end
    if nb > maxb or (not old and n >= maxn) then
      refused = refused + 1
    else
      redis.call('HSET', key, f, head)
      if tail == '' then redis.call('HDEL', key, t) else redis.call('HSET', key, t, tail) end
      b = nb
      if not old then n = n + 1 end
    end
    i = i + 4
  end
end
redis.call('PEXPIREAT', key, math.min(num6(s, 1), tonumber(ARGV[2]) + tonumber(ARGV[3])))
return {1, refused}`)

// sessionKeys is what one session's id yields: its Redis key (named by
// the verifier of its secret) and its keys (internal/seal).
type sessionKeys struct {
	redisKey string
	keys     *seal.Keys
}

// keysFor derives a session's keys from its id.
func (s *Store) keysFor(id sessions.ID) (*sessionKeys, error) {
	lookup, secret := id.Key(), id.Secret()
	keys, err := seal.KeysFor(lookup, secret, formatContext)
	if err != nil {
		return nil, err
	}
	v := keys.Verifier()
	return &sessionKeys{
		redisKey: s.opts.KeyPrefix + base64.RawURLEncoding.EncodeToString(v[:]),
		keys:     keys,
	}, nil
}

// fields names a cookie's head and tail fields: an HMAC of its identity
// (which holds its name and domain), so the hash reveals neither.
func (k *sessionKeys) fields(cookieKey string) (head, tail string) {
	mac := k.keys.Name(cookieKey)
	return string(mac[:headNameBytes]), string(mac[:tailNameBytes])
}

// additionalData binds a record to its session and field, and for a
// cookie to the size before it.
func (k *sessionKeys) additionalData(field, size string) []byte {
	return []byte(k.redisKey + "\x00" + field + "\x00" + size)
}

// appendMs appends a Unix ms time as 6 bytes big-endian (until 10889 AD).
func appendMs(b []byte, t time.Time) []byte {
	ms := uint64(max(t.UnixMilli(), 0))
	return append(b, byte(ms>>40), byte(ms>>32), byte(ms>>24), byte(ms>>16), byte(ms>>8), byte(ms))
}

func readMs(b string) time.Time {
	var ms int64
	for i := range 6 {
		ms = ms<<8 | int64(b[i])
	}
	return time.UnixMilli(ms)
}

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

// sealCookie returns c's head and tail records ("" for none).
func (k *sessionKeys) sealCookie(c *sessions.Cookie, head string, sessionCreated int64, home string, haveHome bool) (string, string, error) {
	plain, err := cookiePlaintext(c, sessionCreated, home, haveHome)
	if err != nil {
		return "", "", err
	}
	size := binary.AppendUvarint(nil, uint64(cookieSize(c)))
	rec := string(k.keys.Seal(size, plain, k.additionalData(head, string(size))))
	if len(rec) <= maxValue {
		return rec, "", nil
	}
	return rec[:splitAt], rec[splitAt:], nil
}

// openCookie opens a cookie's record (head and tail joined) and checks
// that it belongs to its field.
func (k *sessionKeys) openCookie(head, rec string, sessionCreated int64, home string, haveHome bool) (sessions.Cookie, error) {
	var c sessions.Cookie
	size, n := binary.Uvarint([]byte(rec[:min(len(rec), binary.MaxVarintLen64)]))
	if n <= 0 {
		return c, errors.New("malformed record")
	}
	plain, err := k.keys.Open(nil, []byte(rec[n:]), k.additionalData(head, rec[:n]))
	if err != nil {
		return c, err
	}
	if c, err = openPlaintext(plain, sessionCreated, home, haveHome); err != nil {
		return c, err
	}
	if h, _ := k.fields(c.Key()); h != head {
		return c, errors.New("record does not belong to its field")
	}
	if uint64(cookieSize(&c)) != size {
		return c, errors.New("record does not match its size")
	}
	return c, nil
}

// revisionOf is a record's revision: its size and nonce, which differ for
// every write. The commit script compares it before it deletes a purged
// cookie.
func revisionOf(rec string) string {
	_, n := binary.Uvarint([]byte(rec[:min(len(rec), binary.MaxVarintLen64)]))
	return rec[:max(n, 0)+seal.NonceSize]
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
	return s.find(ctx, id, true)
}

// find is Find; follow says whether a rotated session's old id leads to
// the new session (else it finds the old copy, for Rotate).
func (s *Store) find(parent context.Context, id sessions.ID, follow bool) (*sessions.Session, error) {
	keys, err := s.keysFor(id)
	if err != nil {
		return nil, err
	}
	ctx, cancel := s.ctx(parent)
	defer cancel()
	now := s.opts.Now()
	res, err := findScript.Run(ctx, s.client, []string{keys.redisKey},
		now.UnixMilli(), s.opts.IdleTimeout.Milliseconds(), appendMs(nil, now)).StringSlice()
	if err != nil {
		return nil, s.failed("find", err)
	}
	if len(res) == 0 {
		return nil, nil
	}
	fields := make(map[string]string, len(res)/2)
	for i := 0; i+1 < len(res); i += 2 {
		fields[res[i]] = res[i+1]
	}
	state := fields[fieldState]
	meta, err := keys.keys.Open(nil, []byte(fields[fieldMeta]), keys.additionalData(fieldMeta, ""))
	if err != nil || len(meta) < 8 || len(state) != stateBytes {
		if err == nil {
			err = errors.New("incomplete session record")
		}
		s.undecryptableRecord(ctx, "session", err)
		return nil, nil
	}
	if fwd, ok := fields[fieldForward]; ok && follow {
		cancel()
		next, ok := keys.openForward(fwd)
		if !ok {
			s.undecryptableRecord(ctx, "forward", errors.New("bad forward record"))
			return nil, nil
		}
		return s.find(parent, next, false)
	}
	created, home := int64(binary.BigEndian.Uint64(meta)), string(meta[8:])
	var (
		cookies   []sessions.Cookie
		revisions []string
	)
	for head, rec := range fields {
		if len(head) != headNameBytes {
			continue
		}
		rec += fields[head[:tailNameBytes]]
		c, err := keys.openCookie(head, rec, created, home, true)
		if err != nil {
			s.undecryptableRecord(ctx, "cookie", err)
			continue // never sent to a backend
		}
		cookies = append(cookies, c)
		revisions = append(revisions, revisionOf(rec))
	}
	sess := sessions.RestoreSessionRevisions(id, time.Unix(0, created), readMs(state[6:]), cookies, revisions)
	s.rememberHome(sess, home)
	if u := fields[fieldUser]; u != "" {
		sess.SetBinding(sessions.Binding{UserKey: u, SidKey: fields[fieldSid], Handle: fields[fieldHandle]})
	}
	return sess, nil
}

// rememberHome notes a session's home domain for Commit, for as long as
// the session is in use: the exchange that found it commits it.
func (s *Store) rememberHome(sess *sessions.Session, home string) {
	p := weak.Make(sess)
	if _, loaded := s.homes.LoadOrStore(p, home); !loaded {
		runtime.AddCleanup(sess, func(p weak.Pointer[sessions.Session]) { s.homes.Delete(p) }, p)
	}
}

// homeOf returns the home domain noted for sess, if any. Without it,
// records carry their cookies' domains.
func (s *Store) homeOf(sess *sessions.Session) (string, bool) {
	home, ok := s.homes.Load(weak.Make(sess))
	if !ok {
		return "", false
	}
	return home.(string), true
}

// homeDomain picks a new session's home domain: the domain most of its
// first cookies have.
func homeDomain(cookies []sessions.Cookie) string {
	best, count := "", 0
	seen := map[string]int{}
	for i := range cookies {
		d := cookies[i].Domain()
		seen[d]++
		if seen[d] > count {
			best, count = d, seen[d]
		}
	}
	return best
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
const commitHeader = 9

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
	created := sess.Created()
	newFlag, state, meta := "0", "", ""
	home, haveHome := s.homeOf(sess)
	if ch.New {
		home, haveHome = homeDomain(ch.Stored), true
		st := appendMs(nil, created.Add(s.opts.Lifetime))
		plain := binary.BigEndian.AppendUint64(nil, uint64(created.UnixNano()))
		newFlag, state = "1", string(appendMs(st, now))
		meta = string(keys.keys.Seal(nil, append(plain, home...), keys.additionalData(fieldMeta, "")))
		s.rememberHome(sess, home)
	}
	args := make([]any, commitHeader, commitHeader+3*len(ch.Deleted)+4*len(ch.Stored))
	copy(args, []any{newFlag, now.UnixMilli(), s.opts.IdleTimeout.Milliseconds(),
		s.opts.MaxCookies, s.opts.MaxBytes, len(ch.Deleted), 0, state, meta})
	for _, d := range ch.Deleted {
		head, tail := keys.fields(d.Key)
		args = append(args, head, tail, d.Revision)
	}
	stored, refused := 0, 0
	for i := range ch.Stored {
		c := &ch.Stored[i]
		head, tail := keys.fields(c.Key())
		headRec, tailRec, err := keys.sealCookie(c, head, created.UnixNano(), home, haveHome)
		if err != nil {
			refused++
			continue
		}
		args = append(args, head, tail, headRec, tailRec)
		stored++
	}
	args[6] = stored
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	var res []int64
	if s.opts.WaitReplicas > 0 {
		res, err = s.commitReplicated(ctx, keys.redisKey, args)
	} else {
		res, err = commitScript.Run(ctx, s.client, []string{keys.redisKey}, args...).Int64Slice()
	}
	if err != nil {
		return s.failed("commit", err)
	}
	if len(res) == 2 && res[0] == 2 && !ch.New {
		// Rotated meanwhile: the changes go to the new session.
		return s.commitForwarded(ctx, keys, sess, ch)
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
	_, err = s.deleteKey(ctx, keys.redisKey)
	return err
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

// commitReplicated runs the commit script and WAIT in one pipeline, so on
// one connection: WAIT counts the replicas that have that connection's
// writes. A NOSCRIPT reply (a new master) sends the script itself.
func (s *Store) commitReplicated(ctx context.Context, key string, args []any) ([]int64, error) {
	run := func(eval func(context.Context, redis.Scripter, []string, ...any) *redis.Cmd) (*redis.Cmd, *redis.Cmd) {
		pipe := s.client.Pipeline()
		cmd := eval(ctx, pipe, []string{key}, args...)
		wait := pipe.Do(ctx, "wait", s.opts.WaitReplicas, (s.opts.Timeout / 2).Milliseconds())
		pipe.Exec(ctx) // the errors are the commands'
		return cmd, wait
	}
	cmd, wait := run(commitScript.EvalSha)
	if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
		cmd, wait = run(commitScript.Eval)
	}
	res, err := cmd.Int64Slice()
	if err != nil {
		return nil, err
	}
	if n, err := wait.Int64(); err != nil || n < int64(s.opts.WaitReplicas) {
		s.underReplicated.Add(1)
	}
	return res, nil
}

// UnderReplicated returns how many writes the replicas did not confirm
// within the time Options.WaitReplicas allows.
func (s *Store) UnderReplicated() uint64 { return s.underReplicated.Load() }
