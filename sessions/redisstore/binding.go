package redisstore

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/proxysession/proxysession/sessions"
)

// Bindings (sessions.UserIndexStore). A bound session's hash holds the
// binding's HMACs in the clear, for the scripts: "u" the user's, "i" the
// sid's, "h" the handle. Each user and each sid has an index, a sorted
// set of the Redis keys of its sessions (verifiers: they do not lead to
// the cookie), scored by each session's absolute deadline, whose own
// TTL is the latest of those deadlines; a handle is a string key naming
// its session's key, expiring with it.
//
// The indexes never grow without bound, even when a session expires
// without anyone deleting it (idle timeout, eviction by maxmemory: there
// is no keyspace notification to rely on): members past their deadline
// are dropped (ZREMRANGEBYSCORE) and members whose session is gone are
// dropped (EXISTS) whenever the index is bound to, counted or ended, so
// an index holds at most its live sessions plus those bound since.
//
// Every script touches one key, so the store works on Redis Cluster,
// where a session and its user's index live in different slots.
const (
	fieldUser    = "u"
	fieldSid     = "i"
	fieldHandle  = "h"
	fieldForward = "f" // a rotated session: the sealed new id

	userIndexPrefix = "u:"
	sidIndexPrefix  = "i:"
	handlePrefix    = "h:"
)

// bindScript records a binding in a session's hash. ARGV: user, sid,
// handle. It returns {} when there is no session, else {deadline ms,
// old user, old sid, old handle}.
var bindScript = redis.NewScript(luaNum6 + `
local s = redis.call('HGET', KEYS[1], 's')
if not s or #s ~= 12 then return {} end
if redis.call('HEXISTS', KEYS[1], 'f') == 1 then return {} end
local old = redis.call('HMGET', KEYS[1], 'u', 'i', 'h')
redis.call('HSET', KEYS[1], 'u', ARGV[1], 'i', ARGV[2], 'h', ARGV[3])
return {tostring(num6(s, 1)), old[1] or '', old[2] or '', old[3] or ''}`)

// indexScript adds a member (ARGV[2]) with its deadline (ARGV[1]) to an
// index, drops members past their deadline (now: ARGV[3]) and sets the
// index's expiry to its latest deadline.
var indexScript = redis.NewScript(`
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
return redis.call('ZCARD', KEYS[1])`)

// deleteScript deletes a session and returns its binding {user, sid,
// handle}, "" for none, so that the caller can clean the indexes.
var deleteScript = redis.NewScript(`
local b = redis.call('HMGET', KEYS[1], 'u', 'i', 'h')
local n = redis.call('DEL', KEYS[1])
return {n, b[1] or '', b[2] or '', b[3] or ''}`)

// forwardScript marks a rotated session: ARGV[1] the sealed new id,
// ARGV[2] the end of the grace (ms), ARGV[3] now (ms). It drops the binding, which moves
// to the new session, and returns it as deleteScript does.
var forwardScript = redis.NewScript(`
local s = redis.call('HGET', KEYS[1], 's')
if not s or #s ~= 12 then return {0, '', '', ''} end
local b = redis.call('HMGET', KEYS[1], 'u', 'i', 'h')
redis.call('HDEL', KEYS[1], 'u', 'i', 'h')
redis.call('HSET', KEYS[1], 'f', ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or ttl > tonumber(ARGV[2]) - tonumber(ARGV[3]) then redis.call('PEXPIREAT', KEYS[1], ARGV[2]) end
return {1, b[1] or '', b[2] or '', b[3] or ''}`)

func (s *Store) indexKey(index sessions.BindingIndex, key string) string {
	switch index {
	case sessions.IndexUser:
		return s.opts.KeyPrefix + userIndexPrefix + key
	case sessions.IndexSid:
		return s.opts.KeyPrefix + sidIndexPrefix + key
	}
	return s.opts.KeyPrefix + handlePrefix + key
}

// Bind implements sessions.UserIndexStore.
func (s *Store) Bind(ctx context.Context, sess *sessions.Session, b sessions.Binding) error {
	keys, err := s.keysFor(sess.ID())
	if err != nil {
		return err
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	res, err := bindScript.Run(ctx, s.client, []string{keys.redisKey}, b.UserKey, b.SidKey, b.Handle).StringSlice()
	if err != nil {
		return s.failed("bind", err)
	}
	if len(res) != 4 {
		return nil // gone
	}
	deadline := res[0]
	s.unindex(ctx, keys.redisKey, res[1], res[2], res[3], b)
	now := strconv.FormatInt(s.opts.Now().UnixMilli(), 10)
	for _, ix := range []struct {
		index sessions.BindingIndex
		key   string
	}{{sessions.IndexUser, b.UserKey}, {sessions.IndexSid, b.SidKey}} {
		if ix.key == "" {
			continue
		}
		idx := s.indexKey(ix.index, ix.key)
		n, err := indexScript.Run(ctx, s.client, []string{idx}, deadline, keys.redisKey, now).Int()
		if err != nil {
			return s.failed("bind", err)
		}
		if n > 1 {
			if _, err := s.prune(ctx, idx); err != nil {
				return err
			}
		}
	}
	if b.Handle != "" {
		ms, _ := strconv.ParseInt(deadline, 10, 64)
		pipe := s.client.Pipeline()
		pipe.Set(ctx, s.indexKey(sessions.IndexHandle, b.Handle), keys.redisKey, 0)
		pipe.PExpireAt(ctx, s.indexKey(sessions.IndexHandle, b.Handle), time.UnixMilli(ms))
		if _, err := pipe.Exec(ctx); err != nil {
			return s.failed("bind", err)
		}
	}
	sess.SetBinding(b)
	return nil
}

// unindex removes a session's key from the indexes of an old binding
// (user, sid, handle), except where the new binding keeps it. Failures
// are left to pruning.
func (s *Store) unindex(ctx context.Context, member, user, sid, handle string, keep sessions.Binding) {
	pipe := s.client.Pipeline()
	if user != "" && user != keep.UserKey {
		pipe.ZRem(ctx, s.indexKey(sessions.IndexUser, user), member)
	}
	if sid != "" && sid != keep.SidKey {
		pipe.ZRem(ctx, s.indexKey(sessions.IndexSid, sid), member)
	}
	if handle != "" && handle != keep.Handle {
		pipe.Del(ctx, s.indexKey(sessions.IndexHandle, handle))
	}
	if pipe.Len() > 0 {
		pipe.Exec(ctx)
	}
}

// members returns an index's members after dropping those past their
// deadline and those whose session is gone.
func (s *Store) prune(ctx context.Context, idx string) ([]string, error) {
	now := strconv.FormatInt(s.opts.Now().UnixMilli(), 10)
	if err := s.client.ZRemRangeByScore(ctx, idx, "-inf", now).Err(); err != nil {
		return nil, s.failed("index", err)
	}
	members, err := s.client.ZRange(ctx, idx, 0, -1).Result()
	if err != nil {
		return nil, s.failed("index", err)
	}
	if len(members) == 0 {
		return nil, nil
	}
	// Per-key EXISTS, pipelined: the sessions live in other slots.
	pipe := s.client.Pipeline()
	exists := make([]*redis.IntCmd, len(members))
	for i, m := range members {
		exists[i] = pipe.Exists(ctx, m)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, s.failed("index", err)
	}
	live := members[:0]
	var gone []any
	for i, m := range members {
		if exists[i].Val() == 1 {
			live = append(live, m)
		} else {
			gone = append(gone, m)
		}
	}
	if len(gone) > 0 {
		if err := s.client.ZRem(ctx, idx, gone...).Err(); err != nil {
			return nil, s.failed("index", err)
		}
	}
	return live, nil
}

// deleteKey deletes a session by its Redis key and cleans its indexes.
// It reports whether the session existed.
func (s *Store) deleteKey(ctx context.Context, key string) (bool, error) {
	res, err := deleteScript.Run(ctx, s.client, []string{key}).Slice()
	if err != nil {
		return false, s.failed("delete", err)
	}
	if len(res) != 4 {
		return false, errors.New("redis delete: unexpected reply")
	}
	user, _ := res[1].(string)
	sid, _ := res[2].(string)
	handle, _ := res[3].(string)
	s.unindex(ctx, key, user, sid, handle, sessions.Binding{})
	n, _ := res[0].(int64)
	return n == 1, nil
}

// EndBound implements sessions.UserIndexStore.
func (s *Store) EndBound(ctx context.Context, index sessions.BindingIndex, key string) (int, error) {
	if key == "" {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*s.opts.Timeout)
	defer cancel()
	idx := s.indexKey(index, key)
	var members []string
	if index == sessions.IndexHandle {
		m, err := s.client.Get(ctx, idx).Result()
		if errors.Is(err, redis.Nil) {
			return 0, nil
		}
		if err != nil {
			return 0, s.failed("end", err)
		}
		members = []string{m}
	} else {
		var err error
		if members, err = s.prune(ctx, idx); err != nil {
			return 0, err
		}
	}
	n := 0
	for _, m := range members {
		ok, err := s.deleteKey(ctx, m)
		if err != nil {
			return n, err
		}
		if ok {
			n++
		}
	}
	return n, nil
}

// CountBound implements sessions.UserIndexStore.
func (s *Store) CountBound(ctx context.Context, index sessions.BindingIndex, key string) (int, error) {
	if key == "" {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*s.opts.Timeout)
	defer cancel()
	if index == sessions.IndexHandle {
		m, err := s.client.Get(ctx, s.indexKey(index, key)).Result()
		if errors.Is(err, redis.Nil) {
			return 0, nil
		}
		if err != nil {
			return 0, s.failed("count", err)
		}
		n, err := s.client.Exists(ctx, m).Result()
		if err != nil {
			return 0, s.failed("count", err)
		}
		return int(n), nil
	}
	live, err := s.prune(ctx, s.indexKey(index, key))
	return len(live), err
}

// IndexLen returns the number of members of a user's index, for tests of
// its bounds.
func (s *Store) IndexLen(ctx context.Context, userKey string) (int64, error) {
	return s.client.ZCard(ctx, s.indexKey(sessions.IndexUser, userKey)).Result()
}

// sealForward seals a new id under an old session's keys.
func (k *sessionKeys) sealForward(next sessions.ID) string {
	return string(k.keys.Seal(nil, []byte(next.CookieValue()), k.additionalData(fieldForward, "")))
}

// openForward opens a forward record.
func (k *sessionKeys) openForward(rec string) (sessions.ID, bool) {
	plain, err := k.keys.Open(nil, []byte(rec), k.additionalData(fieldForward, ""))
	if err != nil {
		return sessions.ID{}, false
	}
	return sessions.ParseID(string(plain))
}

// commitForwarded applies an exchange's changes, made to a session that
// was rotated since it read it, to the new session.
func (s *Store) commitForwarded(ctx context.Context, keys *sessionKeys, sess *sessions.Session, ch *sessions.Changes) error {
	rec, err := s.client.HGet(ctx, keys.redisKey, fieldForward).Result()
	if errors.Is(err, redis.Nil) {
		return nil // the grace is over: the old id is gone
	}
	if err != nil {
		return s.failed("commit", err)
	}
	next, ok := keys.openForward(rec)
	if !ok {
		s.undecryptableRecord(ctx, "forward", errors.New("bad forward record"))
		return nil
	}
	moved := sessions.RestoreSession(next, sess.Created(), sess.LastSeen(), nil)
	if home, ok := s.homeOf(sess); ok {
		s.rememberHome(moved, home)
	}
	return s.Commit(ctx, moved, ch)
}

// Rotate implements sessions.RotatingStore. The jar is copied to the new
// id's key (sealed under its keys), then the old key gets a forward
// record and expires at graceEnd: until then, finds through the old id
// read the new session and commits through it are applied to the new
// session. Finally the old key is read again and what parallel commits
// wrote to it before the forward record is copied too, so no cookie is
// lost. The binding moves to the new session when the Cache binds it.
func (s *Store) Rotate(ctx context.Context, sess *sessions.Session, newID sessions.ID, graceEnd time.Time) (*sessions.Session, error) {
	oldKeys, err := s.keysFor(sess.ID())
	if err != nil {
		return nil, err
	}
	first, err := s.find(ctx, sess.ID(), false)
	if err != nil || first == nil {
		return nil, err
	}
	if _, err := s.client.HGet(ctx, oldKeys.redisKey, fieldForward).Result(); err == nil {
		return nil, nil // rotated already
	}
	home, _ := s.homeOf(first)
	copyTo := func(from *sessions.Session, to *sessions.Session, isNew bool) error {
		ch := &sessions.Changes{New: isNew, Stored: from.Cookies()}
		if isNew {
			s.rememberHome(to, home)
		}
		if ch.Empty() {
			return nil
		}
		return s.Commit(ctx, to, ch)
	}
	ns := sessions.RestoreSession(newID, first.Created(), first.LastSeen(), nil)
	if err := copyTo(first, ns, true); err != nil {
		return nil, err
	}
	rctx, cancel := s.ctx(ctx)
	res, err := forwardScript.Run(rctx, s.client, []string{oldKeys.redisKey}, oldKeys.sealForward(newID),
		graceEnd.UnixMilli(), s.opts.Now().UnixMilli()).Slice()
	cancel()
	if err != nil {
		return nil, s.failed("rotate", err)
	}
	if len(res) == 4 {
		user, _ := res[1].(string)
		sid, _ := res[2].(string)
		handle, _ := res[3].(string)
		s.unindex(ctx, oldKeys.redisKey, user, sid, handle, sessions.Binding{})
		if user != "" {
			ns.SetBinding(sessions.Binding{UserKey: user, SidKey: sid, Handle: handle})
		}
	}
	// Commits that reached the old key before the forward record.
	if again, err := s.find(ctx, sess.ID(), false); err == nil && again != nil {
		if err := copyTo(again, ns, false); err != nil {
			return nil, err
		}
	}
	final, err := s.find(ctx, newID, false)
	if err != nil || final == nil {
		return nil, err
	}
	if b, ok := ns.Binding(); ok {
		final.SetBinding(b)
	}
	return final, nil
}
