package assign

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

func fleet(n, m int, zones []string) ([]Proxy, []Target) {
	ps := make([]Proxy, n)
	for i := range ps {
		ps[i] = Proxy{ID: fmt.Sprintf("proxy-%04d", i), Zone: zones[i%len(zones)], Caps: 1 | 2}
	}
	ts := make([]Target, m)
	for i := range ts {
		ts[i] = Target{Key: fmt.Sprintf("svc-%d/10.%d.%d.%d:8080", i%7, i>>16&255, i>>8&255, i&255), Zone: zones[i%len(zones)], Need: 1}
	}
	return ps, ts
}

func TestDeterministicAcrossInputOrder(t *testing.T) {
	ps, ts := fleet(50, 2000, []string{"a", "b", "c"})
	cfg := Config{K: 2, LoadFactor: 1.25}
	r1 := Compute(cfg, ps, ts)
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
	rng.Shuffle(len(ts), func(i, j int) { ts[i], ts[j] = ts[j], ts[i] })
	r2 := Compute(cfg, ps, ts)
	if Moved(r1, r2) != 0 || len(r1.ByProxy) != len(r2.ByProxy) {
		t.Fatal("the same state in another order gave another assignment")
	}
}

func TestCoverageZonesAndBalance(t *testing.T) {
	ps, ts := fleet(60, 6000, []string{"a", "b", "c"})
	cfg := Config{K: 2, LoadFactor: 1.25}
	r := Compute(cfg, ps, ts)
	zoneOf := map[string]string{}
	for _, p := range ps {
		zoneOf[p.ID] = p.Zone
	}
	for _, tg := range ts {
		cs := r.ByTarget[tg.Key]
		if len(cs) != 2 || cs[0] == cs[1] {
			t.Fatalf("%s has checkers %v, want 2 distinct", tg.Key, cs)
		}
		if zoneOf[cs[0]] != tg.Zone {
			t.Fatalf("%s (zone %s): first checker %s is in zone %s", tg.Key, tg.Zone, cs[0], zoneOf[cs[0]])
		}
		if zoneOf[cs[1]] == tg.Zone {
			t.Fatalf("%s: both checkers in zone %s, want spread", tg.Key, tg.Zone)
		}
	}
	total, maxLoad := 0, 0
	for _, v := range r.ByProxy {
		total += len(v)
		maxLoad = max(maxLoad, len(v))
	}
	if total != 2*len(ts) {
		t.Fatalf("probes per interval = %d, want k·M = %d", total, 2*len(ts))
	}
	mean := float64(total) / float64(len(ps))
	if float64(maxLoad) > 1.25*mean+1 {
		t.Fatalf("max load %d over cap (mean %.1f)", maxLoad, mean)
	}
	t.Logf("max/mean = %.2f", float64(maxLoad)/mean)
}

func TestCapabilitiesHonoured(t *testing.T) {
	ps := []Proxy{{ID: "envoy", Caps: 1 | 2}, {ID: "ours", Caps: 1 | 2 | 4}, {ID: "tcp-only", Caps: 2}}
	ts := []Target{{Key: "grpc-ep", Need: 4}, {Key: "http-ep", Need: 1}, {Key: "tcp-ep", Need: 2}}
	r := Compute(Config{K: 2}, ps, ts)
	if got := r.ByTarget["grpc-ep"]; len(got) != 1 || got[0] != "ours" {
		t.Errorf("grpc-ep checkers %v, want only [ours]", got)
	}
	for _, c := range r.ByTarget["http-ep"] {
		if c == "tcp-only" {
			t.Errorf("http-ep assigned to a proxy without HTTP")
		}
	}
	if len(r.ByTarget["tcp-ep"]) != 2 {
		t.Errorf("tcp-ep checkers %v", r.ByTarget["tcp-ep"])
	}
}

func TestMinimalMovement(t *testing.T) {
	for _, lf := range []float64{0, 1.5} {
		ps, ts := fleet(40, 4000, []string{"a", "b"})
		cfg := Config{K: 2, LoadFactor: lf}
		before := Compute(cfg, ps, ts)
		gone := ps[7].ID
		lost := len(before.ByProxy[gone])
		after := Compute(cfg, append(append([]Proxy{}, ps[:7]...), ps[8:]...), ts)
		moved := Moved(before, after)
		// Every slot of the departed proxy must move; anything else is churn.
		if moved < lost || float64(moved) > float64(lost)*1.1+5 {
			t.Errorf("loadfactor %.2f: leave moved %d slots, the departed proxy had %d", lf, moved, lost)
		}
		// Others keep their work: nothing was taken away from a survivor
		// that it did not lose to the cap.
		taken := 0
		for p, eps := range before.ByProxy {
			if p == gone {
				continue
			}
			now := map[string]bool{}
			for _, e := range after.ByProxy[p] {
				now[e] = true
			}
			for _, e := range eps {
				if !now[e] {
					taken++
				}
			}
		}
		if float64(taken) > float64(lost)*0.1+5 {
			t.Errorf("loadfactor %.2f: survivors lost %d endpoints", lf, taken)
		}
		// A proxy joining takes about its share and nothing else moves.
		back := Compute(cfg, ps, ts)
		if Moved(after, back) > len(back.ByProxy[gone])+int(float64(lost)*0.1)+5 {
			t.Errorf("loadfactor %.2f: join moved %d slots, newcomer got %d", lf, Moved(after, back), len(back.ByProxy[gone]))
		}
		t.Logf("loadfactor %.2f: leave moved %d (departed had %d), survivors lost %d", lf, moved, lost, taken)
	}
}

func TestFewerProxiesThanK(t *testing.T) {
	r := Compute(Config{K: 3}, []Proxy{{ID: "only", Caps: 1}}, []Target{{Key: "e", Need: 1}})
	if got := r.ByTarget["e"]; len(got) != 1 {
		t.Fatalf("got %v", got)
	}
	if r := Compute(Config{K: 2}, nil, []Target{{Key: "e", Need: 1}}); len(r.ByTarget["e"]) != 0 {
		t.Fatal("no proxies must give no checkers")
	}
}

func BenchmarkCompute1000x10000(b *testing.B) {
	ps, ts := fleet(1000, 10000, []string{"a", "b", "c"})
	for b.Loop() {
		Compute(Config{K: 2, LoadFactor: 1.5}, ps, ts)
	}
}

func TestMaxPerProxyIsHard(t *testing.T) {
	ps, ts := fleet(3, 300, []string{"a"})
	r := Compute(Config{K: 2, LoadFactor: 1.5, MaxPerProxy: 50}, ps, ts)
	covered := 0
	for _, p := range ps {
		if n := len(r.ByProxy[p.ID]); n > 50 {
			t.Fatalf("%s has %d checks over the ceiling 50", p.ID, n)
		}
	}
	for _, cs := range r.ByTarget {
		covered += len(cs)
	}
	if covered != 150 {
		t.Fatalf("slots filled %d, want 3 × 50", covered)
	}
}
