package limiter

import (
	"context"
	"sync"
	"time"

	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

// Memory is the embedded backend for a single replica without Redis. It has
// exactly the semantics of the Redis backend (same Fits/Outcome functions),
// with one lock making each request atomic.
type Memory struct {
	mu        sync.Mutex
	vals      map[string]memVal
	nextSweep int64
}

type memVal struct {
	v        int64
	expireUS int64
}

// NewMemory returns an empty memory backend.
func NewMemory() *Memory { return &Memory{vals: map[string]memVal{}} }

func (m *Memory) get(k string, nowUS int64) int64 {
	v, ok := m.vals[k]
	if !ok || v.expireUS <= nowUS {
		return 0
	}
	return v.v
}

// Check implements Backend.
func (m *Memory) Check(_ context.Context, now time.Time, items []Item, results []Result) error {
	nowUS := now.UnixMicro()
	m.mu.Lock()
	defer m.mu.Unlock()
	if nowUS >= m.nextSweep {
		m.sweep(nowUS)
		m.nextSweep = nowUS + int64(time.Second/time.Microsecond)
	}
	// Items are evaluated in order, each seeing the hits charged by the items
	// before it (like the Redis script); a rejected request is undone.
	var undoBuf [8]undo
	undos := undoBuf[:0]
	for i := range items {
		it := &items[i]
		s := m.read(it, now, nowUS)
		f := Fits(it, s, nowUS)
		if f && it.Hits > 0 {
			undos = append(undos, m.charge(it, s, now, nowUS))
		}
		results[i] = Outcome(it, s, !f, f, nowUS)
	}
	if Rejected(items, results) {
		// Last charge first: a key repeated in the request gets back the
		// value it had before the first copy.
		for i := len(undos) - 1; i >= 0; i-- {
			u := undos[i]
			if u.existed {
				m.vals[u.key] = u.prev
			} else {
				delete(m.vals, u.key)
			}
		}
		for i := range results {
			if results[i].Charged {
				results[i] = Outcome(&items[i], m.read(&items[i], now, nowUS), false, false, nowUS)
			}
		}
	}
	return nil
}

// undo restores one counter.
type undo struct {
	key     string
	prev    memVal
	existed bool
}

func (m *Memory) read(it *Item, now time.Time, nowUS int64) State {
	switch it.Algorithm {
	case rules.SlidingWindow:
		ws := WindowStart(now, it.Unit)
		return State{
			A: m.get(WindowKey(it.Key, ws-int64(it.Unit/time.Second)), nowUS),
			B: m.get(WindowKey(it.Key, ws), nowUS),
		}
	case rules.TokenBucket:
		return State{A: m.get(it.Key, nowUS)}
	default:
		return State{A: m.get(WindowKey(it.Key, WindowStart(now, it.Unit)), nowUS)}
	}
}

func (m *Memory) charge(it *Item, s State, now time.Time, nowUS int64) undo {
	u := it.Unit.Microseconds()
	h := int64(it.Hits)
	var k string
	switch it.Algorithm {
	case rules.SlidingWindow:
		k = WindowKey(it.Key, WindowStart(now, it.Unit))
	case rules.TokenBucket:
		k = it.Key
	default:
		k = WindowKey(it.Key, WindowStart(now, it.Unit))
	}
	prev, existed := m.vals[k]
	switch it.Algorithm {
	case rules.SlidingWindow:
		m.add(k, h, nowUS, nowUS+2*u)
	case rules.TokenBucket:
		t, _ := Emission(it)
		tat := max(s.A, nowUS) + h*t
		m.vals[k] = memVal{v: tat, expireUS: tat}
	default:
		m.add(k, h, nowUS, nowUS+u)
	}
	return undo{key: k, prev: prev, existed: existed}
}

// add increments k, setting its expiry only when it is created (as the Lua
// script sets the TTL once per window key).
func (m *Memory) add(k string, h, nowUS, expireUS int64) {
	v, ok := m.vals[k]
	if !ok || v.expireUS <= nowUS {
		v = memVal{expireUS: expireUS}
	}
	v.v += h
	m.vals[k] = v
}

func (m *Memory) sweep(nowUS int64) {
	for k, v := range m.vals {
		if v.expireUS <= nowUS {
			delete(m.vals, k)
		}
	}
}

// Len is the number of live counters (for tests and metrics).
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.vals)
}
