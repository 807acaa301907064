package ring

import (
	"fmt"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/sidemesh/sidemesh/services/hds/ring/faultnet"
)

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func startRing(t *testing.T, n int, label string, fn *faultnet.Network) []*Ring {
	t.Helper()
	var rs []*Ring
	var seeds []string
	for i := 0; i < n; i++ {
		cfg := Config{
			Name: fmt.Sprintf("r%d", i), BindAddr: "127.0.0.1", Label: label, Seeds: seeds,
			Timings: FastTimings(), RejoinInterval: 300 * time.Millisecond,
			Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		}
		if fn != nil {
			cfg.WrapTransport = func(self string, tr memberlist.Transport) memberlist.NodeAwareTransport { return fn.Wrap(self, tr) }
		}
		r, err := Start(cfg, NewState())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.Kill)
		rs = append(rs, r)
		seeds = append(seeds, r.Addr())
	}
	// Everyone knows the full seed list, like --join in production.
	for _, r := range rs {
		r.cfg.Seeds = seeds
	}
	return rs
}

func run(t *testing.T, r *Ring) {
	ctx, cancel := contextWithCancel()
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestGossipSpreadsAndPartitionHeals(t *testing.T) {
	fn := faultnet.New()
	rs := startRing(t, 3, "test-"+t.Name(), fn)
	for _, r := range rs {
		run(t, r)
	}
	eventually(t, 20*time.Second, "3 members everywhere", func() bool {
		for _, r := range rs {
			if len(r.Members()) != 3 {
				return false
			}
		}
		return true
	})
	rs[0].PublishVote(VoteEntry{Endpoint: "c/10.0.0.1:80", Checker: "p1", Status: 1, TS: rs[0].State().Now(), Origin: "r0"})
	eventually(t, 10*time.Second, "vote reaches every replica", func() bool {
		for _, r := range rs {
			if v, ok := r.State().Vote("c/10.0.0.1:80", "p1"); !ok || v.Status != 1 {
				return false
			}
		}
		return true
	})

	// Cut r2 off for longer than GossipToTheDead: the sides forget each
	// other, and only the periodic rejoin brings them back.
	fn.Partition([]string{rs[2].Addr()}, []string{rs[0].Addr(), rs[1].Addr()})
	eventually(t, 20*time.Second, "r2 declared dead by the majority", func() bool {
		return !slices.Contains(rs[0].Members(), "r2") && !slices.Contains(rs[1].Members(), "r2")
	})
	rs[2].PublishProxy(ProxyEntry{ID: "p9", Replica: "r2", Live: true, TS: rs[2].State().Now()})
	time.Sleep(FastTimings().GossipToTheDead + time.Second) // the partition must outlive the reap time; this is the scenario, not a settle wait
	if _, ok := rs[0].State().Proxy("p9"); ok {
		t.Fatal("an update crossed the partition")
	}
	fn.Heal()
	eventually(t, 20*time.Second, "ring whole again and the update merged", func() bool {
		for _, r := range rs {
			if len(r.Members()) != 3 {
				return false
			}
			if _, ok := r.State().Proxy("p9"); !ok {
				return false
			}
		}
		return true
	})
	if fn.Dropped() == 0 {
		t.Fatal("the fault network dropped nothing; the partition was not real")
	}
	if rs[0].Stats.BytesIn.Load() == 0 || rs[0].Stats.BytesOut.Load() == 0 {
		t.Fatal("gossip byte counters did not move")
	}
}

func TestLabelsKeepRingsApart(t *testing.T) {
	a := startRing(t, 1, "ring-a", nil)[0]
	cfg := Config{Name: "other", BindAddr: "127.0.0.1", Label: "ring-b", Seeds: []string{a.Addr()}, Timings: FastTimings()}
	b, err := Start(cfg, NewState())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Kill()
	if len(b.Members()) != 1 || len(a.Members()) != 1 {
		t.Fatalf("rings with different labels merged: %v %v", a.Members(), b.Members())
	}
}
