package limiter

import (
	"hash/maphash"
	"sync"
)

// OverCache remembers counters known to be over limit until the time a 1-hit
// request could fit again, so repeated requests for them are answered without
// the backend. It is safe because counters only grow within their window
// (and a token bucket's arrival time only moves forward) whichever replica
// charges them.
type OverCache struct {
	seed   maphash.Seed
	shards [32]overShard
	max    int
}

type overShard struct {
	mu sync.Mutex
	m  map[string]int64 // key -> until (µs since epoch)
}

// NewOverCache returns a cache holding at most maxEntries keys.
func NewOverCache(maxEntries int) *OverCache {
	c := &OverCache{seed: maphash.MakeSeed(), max: max(maxEntries/32, 1)}
	for i := range c.shards {
		c.shards[i].m = map[string]int64{}
	}
	return c
}

func (c *OverCache) shard(key string) *overShard {
	return &c.shards[maphash.String(c.seed, key)%uint64(len(c.shards))]
}

// Over reports whether key is known over limit at nowUS, and until when.
func (c *OverCache) Over(key string, nowUS int64) (int64, bool) {
	s := c.shard(key)
	s.mu.Lock()
	until, ok := s.m[key]
	if ok && until <= nowUS {
		delete(s.m, key)
		ok = false
	}
	s.mu.Unlock()
	return until, ok
}

// Put records key as over limit until untilUS.
func (c *OverCache) Put(key string, untilUS, nowUS int64) {
	s := c.shard(key)
	s.mu.Lock()
	if len(s.m) >= c.max {
		for k, u := range s.m {
			if u <= nowUS {
				delete(s.m, k)
			}
		}
	}
	if len(s.m) < c.max {
		s.m[key] = untilUS
	}
	s.mu.Unlock()
}

// Clear forgets everything (after a rule reload, limits may have changed).
func (c *OverCache) Clear() {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		clear(s.m)
		s.mu.Unlock()
	}
}

// Len is the number of cached keys.
func (c *OverCache) Len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}
