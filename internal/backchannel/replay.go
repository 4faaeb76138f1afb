package backchannel

import (
	"sync"
	"time"
)

type replayResult int

const (
	replayNew  replayResult = iota // recorded
	replaySeen                     // already recorded, not expired
	replayFull                     // not recorded: the cache is full
)

// replayCache remembers the jti of accepted logout tokens until each
// could no longer be accepted (its exp, or iat + the maximum age), and
// at most limit of them.
type replayCache struct {
	mu    sync.Mutex
	limit int
	seen  map[string]time.Time // jti → forget after
}

func newReplayCache(limit int) *replayCache {
	return &replayCache{limit: limit, seen: make(map[string]time.Time)}
}

// add records jti until until, unless it is already recorded.
func (c *replayCache) add(jti string, until, now time.Time) replayResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.seen[jti]; ok {
		if now.Before(t) {
			return replaySeen
		}
		delete(c.seen, jti)
	}
	if len(c.seen) >= c.limit {
		for k, t := range c.seen {
			if !now.Before(t) {
				delete(c.seen, k)
			}
		}
		if len(c.seen) >= c.limit {
			return replayFull
		}
	}
	c.seen[jti] = until
	return replayNew
}

// remove forgets jti.
func (c *replayCache) remove(jti string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.seen, jti)
}
