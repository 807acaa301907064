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
	var stack [8]State
	var fitStack [8]bool
	states, fits := stack[:0], fitStack[:0]
	rejected := false
	for i := range items {
		it := &items[i]
		s := m.read(it, now, nowUS)
		f := Fits(it, s, nowUS)
		states, fits = append(states, s), append(fits, f)
		if !f && it.Enforce {
			rejected = true
		}
	}
	for i := range items {
		it := &items[i]
		charged := !rejected && fits[i]
		if charged && it.Hits > 0 {
			m.charge(it, states[i], now, nowUS)
		}
		results[i] = Outcome(it, states[i], !fits[i], charged, nowUS)
	}
	return nil
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

func (m *Memory) charge(it *Item, s State, now time.Time, nowUS int64) {
	u := it.Unit.Microseconds()
	h := int64(it.Hits)
	switch it.Algorithm {
	case rules.SlidingWindow:
		k := WindowKey(it.Key, WindowStart(now, it.Unit))
		m.add(k, h, nowUS, nowUS+2*u)
	case rules.TokenBucket:
		t, _ := Emission(it)
		tat := max(s.A, nowUS) + h*t
		m.vals[it.Key] = memVal{v: tat, expireUS: tat}
	default:
		m.add(WindowKey(it.Key, WindowStart(now, it.Unit)), h, nowUS, nowUS+u)
	}
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
