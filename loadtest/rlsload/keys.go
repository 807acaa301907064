package rlsload

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
)

// KeyDist chooses the descriptor value of each request.
type KeyDist struct {
	kind string // unique, hot, uniform, zipf
	n    uint64
}

// ParseKeys parses --keys: unique | hot | zipf:N | N.
func ParseKeys(s string) (KeyDist, error) {
	switch {
	case s == "unique" || s == "hot":
		return KeyDist{kind: s}, nil
	case strings.HasPrefix(s, "zipf:"):
		n, err := strconv.ParseUint(s[len("zipf:"):], 10, 64)
		if err != nil || n < 1 {
			return KeyDist{}, fmt.Errorf("--keys %q: zipf:N needs a positive integer N", s)
		}
		return KeyDist{kind: "zipf", n: n}, nil
	default:
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || n < 1 {
			return KeyDist{}, fmt.Errorf("--keys %q: want unique, hot, zipf:N or a positive number N of keys", s)
		}
		return KeyDist{kind: "uniform", n: n}, nil
	}
}

func (k KeyDist) String() string {
	switch k.kind {
	case "zipf":
		return fmt.Sprintf("zipf:%d", k.n)
	case "uniform":
		return strconv.FormatUint(k.n, 10)
	}
	return k.kind
}

// Picker draws key indexes; one per worker (rand sources are not shared).
type Picker struct {
	dist KeyDist
	rng  *rand.Rand
	zipf *rand.Zipf
}

// NewPicker returns a picker seeded with seed.
func (k KeyDist) NewPicker(seed uint64) *Picker {
	p := &Picker{dist: k, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	if k.kind == "zipf" && k.n > 1 {
		// s=1.1: a few keys take most traffic, the long tail stays warm.
		p.zipf = rand.NewZipf(p.rng, 1.1, 1, k.n-1)
	}
	return p
}

// Pick returns the key index for request seq.
func (p *Picker) Pick(seq uint64) uint64 {
	switch p.dist.kind {
	case "unique":
		return seq
	case "hot":
		return 0
	case "zipf":
		if p.zipf == nil {
			return 0
		}
		return p.zipf.Uint64()
	default:
		return p.rng.Uint64N(p.dist.n)
	}
}
