package ring

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"sort"
	"testing"
)

func entries(rng *rand.Rand, n int) ([]ProxyEntry, []VoteEntry) {
	var ps []ProxyEntry
	var vs []VoteEntry
	for i := 0; i < n; i++ {
		ps = append(ps, ProxyEntry{ID: fmt.Sprintf("p%d", rng.IntN(5)), Replica: fmt.Sprintf("r%d", rng.IntN(3)), Live: rng.IntN(2) == 0, TS: int64(rng.IntN(20))})
		vs = append(vs, VoteEntry{Endpoint: fmt.Sprintf("e%d", rng.IntN(5)), Checker: fmt.Sprintf("p%d", rng.IntN(5)), Status: uint8(rng.IntN(4)), TS: int64(rng.IntN(20)), Origin: fmt.Sprintf("r%d", rng.IntN(3))})
	}
	return ps, vs
}

func canon(s *State) ([]ProxyEntry, []VoteEntry) {
	ps := s.Proxies()
	sort.Slice(ps, func(i, j int) bool { return ps[i].ID < ps[j].ID })
	var vs []VoteEntry
	s.mu.RLock()
	for _, m := range s.votes {
		for _, v := range m {
			vs = append(vs, v)
		}
	}
	s.mu.RUnlock()
	sort.Slice(vs, func(i, j int) bool { return vs[i].Endpoint+vs[i].Checker < vs[j].Endpoint+vs[j].Checker })
	return ps, vs
}

// Merging the same entries in any order, any number of times, gives the
// same state: replicas converge whatever gossip does.
func TestMergeOrderIndependentAndIdempotent(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for trial := 0; trial < 50; trial++ {
		ps, vs := entries(rng, 40)
		a, b := NewState(), NewState()
		for _, p := range ps {
			a.MergeProxy(p)
		}
		for _, v := range vs {
			a.MergeVote(v)
		}
		rng.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
		rng.Shuffle(len(vs), func(i, j int) { vs[i], vs[j] = vs[j], vs[i] })
		for range 2 {
			for _, v := range vs {
				b.MergeVote(v)
			}
			for _, p := range ps {
				b.MergeProxy(p)
			}
		}
		ap, av := canon(a)
		bp, bv := canon(b)
		if !reflect.DeepEqual(ap, bp) || !reflect.DeepEqual(av, bv) {
			t.Fatalf("trial %d: states differ", trial)
		}
		// Full-state exchange reaches the same content too.
		c := NewState()
		if _, err := c.MergeEncoded(a.Encode()); err != nil {
			t.Fatal(err)
		}
		if n, _ := c.MergeEncoded(b.Encode()); n != 0 {
			t.Fatalf("merging an equal state changed %d entries", n)
		}
	}
}

func TestTombstoneAndNow(t *testing.T) {
	s := NewState()
	s.MergeProxy(ProxyEntry{ID: "p", Replica: "a", Live: true, TS: 100})
	if s.MergeProxy(ProxyEntry{ID: "p", Replica: "a", Live: false, TS: 99}) {
		t.Fatal("an older tombstone must lose")
	}
	if now := s.Now(); now <= 100 {
		t.Fatalf("Now() = %d, must exceed what was seen", now)
	}
	s.MergeProxy(ProxyEntry{ID: "p", Replica: "a", Live: false, TS: s.Now()})
	if p, _ := s.Proxy("p"); p.Live {
		t.Fatal("a newer tombstone must win")
	}
	s.MergeVote(VoteEntry{Endpoint: "e", Checker: "p", Status: 1, TS: 1})
	if len(s.VotesOf("p")) != 1 {
		t.Fatal("vote missing")
	}
	if n := s.GC(0, nil); n != 2 {
		t.Fatalf("GC removed %d entries, want the tombstone and its checker's vote", n)
	}
	s.MergeProxy(ProxyEntry{ID: "orphan", Replica: "dead", Live: true, TS: 5})
	s.MergeProxy(ProxyEntry{ID: "kept", Replica: "up", Live: true, TS: 5})
	if n := s.GC(0, func(r string) bool { return r == "up" }); n != 1 {
		t.Fatalf("GC removed %d entries, want the orphan of a departed replica", n)
	}
	if _, ok := s.Proxy("kept"); !ok {
		t.Fatal("GC removed a live proxy of a live replica")
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(encodeProxy(ProxyEntry{ID: "p", Replica: "r", Live: true, TS: 1}))
	f.Add(encodeVote(VoteEntry{Endpoint: "c/1.2.3.4:80", Checker: "p", Status: 2, TS: 3}))
	f.Add([]byte(`{"p":[{"id":"x"}],"v":[{"e":"a","k":"b"}]}`))
	f.Add([]byte("v{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s := NewState()
		if m, err := decodeMsg(b); err == nil {
			if m.proxy != nil {
				s.MergeProxy(*m.proxy)
			}
			if m.vote != nil {
				s.MergeVote(*m.vote)
			}
		}
		_, _ = s.MergeEncoded(b)
		_ = s.Encode()
	})
}
