// Package assign decides which proxies check which endpoints: k checkers per
// endpoint by rendezvous (highest random weight) hashing, preferring the
// endpoint's zone for the first checker and other zones for the rest, with a
// cap on any proxy's share. It is a pure function of its input, so every HDS
// replica computes the same answer from the same gossiped state.
package assign

import (
	"hash/fnv"
	"math"
	"sort"
)

// Proxy is a connected checker.
type Proxy struct {
	ID   string
	Zone string
	Caps uint8 // bit set of the protocols it can check
}

// Target is an endpoint to check.
type Target struct {
	Key  string
	Zone string
	Need uint8 // the protocol bit its check needs
}

// Config tunes the assignment.
type Config struct {
	// K is the number of checkers per endpoint (at most the eligible proxies).
	K int
	// LoadFactor caps a proxy at ceil(LoadFactor × mean load); <= 0 means no
	// cap. When every eligible proxy is at the cap, coverage wins and the cap
	// is exceeded.
	LoadFactor float64
	// MaxPerProxy is a hard ceiling on any proxy's checks, even when that
	// leaves endpoints with fewer than K checkers (0: none). It protects a
	// proxy from being handed thousands of checks while a replica's view
	// holds only a few proxies.
	MaxPerProxy int
}

// Result maps both ways. Slices are in a fixed order: checkers by rank,
// targets by key.
type Result struct {
	ByTarget map[string][]string
	ByProxy  map[string][]string
	Cap      int
}

// Compute assigns checkers to targets.
func Compute(cfg Config, proxies []Proxy, targets []Target) *Result {
	res := &Result{ByTarget: make(map[string][]string, len(targets)), ByProxy: map[string][]string{}}
	k := cfg.K
	if k <= 0 || len(proxies) == 0 {
		for _, t := range targets {
			res.ByTarget[t.Key] = nil // uncovered
		}
		return res
	}
	ps := append([]Proxy(nil), proxies...)
	sort.Slice(ps, func(i, j int) bool { return ps[i].ID < ps[j].ID })
	ph := make([]uint64, len(ps))
	for i, p := range ps {
		ph[i] = mix(hashString(p.ID))
	}

	type tgt struct {
		t Target
		h uint64
	}
	ts := make([]tgt, len(targets))
	slots := 0
	eligibleFor := map[uint8]int{}
	for i, t := range targets {
		ts[i] = tgt{t, hashString(t.Key)}
		n, ok := eligibleFor[t.Need]
		if !ok {
			for _, p := range ps {
				if p.Caps&t.Need == t.Need {
					n++
				}
			}
			eligibleFor[t.Need] = n
		}
		slots += min(k, n)
	}
	// Pseudo-random but fixed processing order, so that where the cap binds
	// it does not systematically favour targets with small keys.
	sort.Slice(ts, func(i, j int) bool {
		if ts[i].h != ts[j].h {
			return ts[i].h < ts[j].h
		}
		return ts[i].t.Key < ts[j].t.Key
	})
	capacity := math.MaxInt
	if cfg.LoadFactor > 0 {
		capacity = int(math.Ceil(cfg.LoadFactor * float64(slots) / float64(len(ps))))
		res.Cap = capacity
	}
	hard := math.MaxInt
	if cfg.MaxPerProxy > 0 {
		hard = cfg.MaxPerProxy
		capacity = min(capacity, hard)
	}
	load := make([]int, len(ps))
	chosen := make([]int, 0, k)
	zones := map[string]bool{}

	for _, x := range ts {
		chosen = chosen[:0]
		clear(zones)
		for slot := 0; slot < k; slot++ {
			best := pick(ps, ph, load, chosen, zones, x.t, x.h, slot, capacity)
			if best < 0 {
				best = pick(ps, ph, load, chosen, zones, x.t, x.h, slot, hard)
			}
			if best < 0 {
				break
			}
			chosen = append(chosen, best)
			zones[ps[best].Zone] = true
			load[best]++
		}
		ids := make([]string, len(chosen))
		for i, c := range chosen {
			ids[i] = ps[c].ID
			res.ByProxy[ps[c].ID] = append(res.ByProxy[ps[c].ID], x.t.Key)
		}
		res.ByTarget[x.t.Key] = ids
	}
	for _, v := range res.ByProxy {
		sort.Strings(v)
	}
	return res
}

// pick returns the best proxy for one slot: first by zone tier (slot 0: the
// target's own zone; later slots: a zone not used yet), then by HRW score.
func pick(ps []Proxy, ph []uint64, load, chosen []int, zones map[string]bool, t Target, th uint64, slot, capacity int) int {
	best, bestTier := -1, 2
	var bestScore uint64
outer:
	for i := range ps {
		if ps[i].Caps&t.Need != t.Need || load[i] >= capacity {
			continue
		}
		for _, c := range chosen {
			if c == i {
				continue outer
			}
		}
		tier := 1
		if slot == 0 {
			if t.Zone != "" && ps[i].Zone == t.Zone {
				tier = 0
			}
		} else if !zones[ps[i].Zone] {
			tier = 0
		}
		score := mix(th ^ ph[i])
		if tier < bestTier || (tier == bestTier && score > bestScore) {
			best, bestTier, bestScore = i, tier, score
		}
	}
	return best
}

func hashString(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// mix is splitmix64's finalizer: it turns the xor of two hashes into a
// well-spread score.
func mix(z uint64) uint64 {
	z ^= z >> 30
	z *= 0xbf58476d1ce4e5b9
	z ^= z >> 27
	z *= 0x94d049bb133111eb
	z ^= z >> 31
	return z
}

// Moved counts checker slots that differ between two results for the same
// targets: how much work a change moved.
func Moved(a, b *Result) int {
	n := 0
	for key, nb := range b.ByTarget {
		old := map[string]bool{}
		for _, p := range a.ByTarget[key] {
			old[p] = true
		}
		for _, p := range nb {
			if !old[p] {
				n++
			}
		}
	}
	return n
}
