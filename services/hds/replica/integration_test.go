package replica

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	healthfeedv1 "github.com/sidemesh/sidemesh/proto/healthfeed/v1"

	"github.com/sidemesh/sidemesh/services/hds/catalog"
	"github.com/sidemesh/sidemesh/services/hds/verdict"
)

// Three replicas, nine simulated proxies in three zones, 30 endpoints:
// coverage is exactly k per endpoint with every replica agreeing; a dead
// endpoint turns UNHEALTHY at every replica; a crashed replica's proxies
// reconnect elsewhere and coverage is restored.
func TestThreeReplicasCoverageDeathAndKill(t *testing.T) {
	zones := []string{"zone-a", "zone-b", "zone-c"}
	snap := testCatalog(30, zones)
	h := startReplicas(t, 3, 2, snap)
	tr := &truth{}
	cs := h.clients(9, zones, tr)

	took := eventually(t, 30*time.Second, "k=2 checkers per endpoint, replicas agreeing", func() bool {
		return exactCoverage(snap, cs, 2) && h.agree()
	})
	t.Logf("initial coverage after %v", took.Round(time.Millisecond))
	probes := 0
	for _, c := range cs {
		probes += len(c.Assigned())
	}
	if probes != 2*len(snap.Endpoints()) {
		t.Fatalf("probes per interval = %d, want k·M = %d", probes, 2*len(snap.Endpoints()))
	}
	eventually(t, 30*time.Second, "every endpoint HEALTHY at every replica", func() bool {
		for _, e := range snap.Endpoints() {
			if !h.verdictEverywhere(e.Key, "HEALTHY") {
				return false
			}
		}
		return true
	})
	// Both sides of the checkers' zone rule: first checker in zone.
	a := h.nodes[0].rep.Assignments()
	zoneOf := map[string]string{}
	for _, p := range a.Proxies {
		zoneOf[p.Proxy] = p.Zone
	}
	for _, e := range h.nodes[0].rep.Endpoints() {
		if len(e.Checkers) != 2 || zoneOf[e.Checkers[0]] != e.Zone || zoneOf[e.Checkers[1]] == e.Zone {
			t.Fatalf("endpoint %s (zone %s): checkers %v not zone-preferred and spread", e.Endpoint, e.Zone, e.Checkers)
		}
	}

	// The controlplane's view: the health feed of any replica.
	cc, err := grpc.NewClient(h.nodes[2].addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watch, err := healthfeedv1.NewHealthFeedClient(cc).Watch(ctx, &healthfeedv1.WatchRequest{Subscriber: "test-controlplane"})
	if err != nil {
		t.Fatal(err)
	}
	full, err := watch.Recv()
	if err != nil || !full.GetFull() || len(full.GetEndpoints()) != len(snap.Endpoints()) {
		t.Fatalf("feed snapshot: %d endpoints, full=%v, err %v", len(full.GetEndpoints()), full.GetFull(), err)
	}

	// An endpoint dies.
	victim := snap.Endpoints()[3].Key
	floor := testUnhTh*testCheck + 2*testReport
	tr.set(victim.String(), true)
	took = eventually(t, 20*time.Second, "dead endpoint UNHEALTHY at every replica", func() bool {
		return h.verdictEverywhere(victim, "UNHEALTHY")
	})
	t.Logf("endpoint death → UNHEALTHY at all 3 replicas in %v (floor unhealthy_threshold×interval + 2 report intervals = %v)", took.Round(time.Millisecond), floor)
	for seen := false; !seen; {
		u, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range u.GetEndpoints() {
			if e.GetEndpoint().GetAddress() == victim.Address && e.GetEndpoint().GetCluster() == victim.Cluster && e.GetVerdict() == healthfeedv1.Verdict_VERDICT_UNHEALTHY {
				seen = true
				if len(e.GetCheckers()) == 0 || e.GetReason() == "" {
					t.Fatalf("feed entry without checkers or reason: %v", e)
				}
			}
		}
	}
	for _, e := range snap.Endpoints() {
		if e.Key != victim && !h.verdictEverywhere(e.Key, "HEALTHY") {
			t.Fatalf("%s flipped although only %s died", e.Key, victim)
		}
	}
	tr.set(victim.String(), false)
	eventually(t, 20*time.Second, "endpoint recovers", func() bool { return h.verdictEverywhere(victim, "HEALTHY") })

	// A replica crashes.
	h.kill(0)
	took = eventually(t, 30*time.Second, "coverage restored after replica kill", func() bool {
		for _, c := range cs {
			if c.Stats().ConnectedTo == h.nodes[0].addr {
				return false
			}
		}
		return exactCoverage(snap, cs, 2) && h.agree()
	})
	t.Logf("replica SIGKILL-equivalent → every endpoint covered by k connected checkers again in %v", took.Round(time.Millisecond))
	// And checked: verdicts stay fresh, nothing went UNKNOWN for good.
	eventually(t, 20*time.Second, "all verdicts HEALTHY on survivors", func() bool {
		for _, e := range snap.Endpoints() {
			if !h.verdictEverywhere(e.Key, "HEALTHY") {
				return false
			}
		}
		return true
	})
}

// A replica cut off from the others for longer than GossipToTheDead: during
// the partition each side covers every endpoint with its own proxies; after
// healing, the ring merges (periodic rejoin) and coverage is exactly k again,
// with no lasting double or missing assignment.
func TestPartitionHeals(t *testing.T) {
	zones := []string{"zone-a", "zone-b"}
	snap := testCatalog(12, zones)
	h := startReplicas(t, 3, 2, snap)
	cs := h.clients(6, zones, &truth{})
	eventually(t, 30*time.Second, "initial exact coverage", func() bool { return exactCoverage(snap, cs, 2) && h.agree() })

	lone := h.nodes[2].rep.Ring().Addr()
	h.fn.Partition([]string{lone}, []string{h.nodes[0].rep.Ring().Addr(), h.nodes[1].rep.Ring().Addr()})
	eventually(t, 20*time.Second, "majority drops the lone replica", func() bool {
		return len(h.nodes[0].rep.Ring().Members()) == 2 && len(h.nodes[2].rep.Ring().Members()) == 1
	})
	// Each side assigns every endpoint among the proxies it can see.
	eventually(t, 20*time.Second, "both sides cover everything", func() bool {
		for _, i := range []int{0, 2} {
			a := h.nodes[i].rep.assignment()
			for _, cs := range a.ByTarget {
				if len(cs) == 0 {
					return false
				}
			}
		}
		return true
	})
	time.Sleep(ringGossipToTheDead()) // the partition must outlive the reap time: this is the scenario, not a settle wait
	h.fn.Heal()
	took := eventually(t, 30*time.Second, "ring merged and exact coverage again", func() bool {
		for _, nd := range h.nodes {
			if len(nd.rep.Ring().Members()) != 3 {
				return false
			}
		}
		return exactCoverage(snap, cs, 2) && h.agree()
	})
	t.Logf("partition healed to exact coverage in %v", took.Round(time.Millisecond))
	// No lasting double or missing assignment: a few report intervals on,
	// replicas still agree and coverage is exact.
	time.Sleep(4 * testReport)
	eventually(t, 10*time.Second, "coverage still exact", func() bool { return exactCoverage(snap, cs, 2) && h.agree() })
}

// A checker whose own network fails reports everything down while its
// peers see the same endpoints up: it is suspect and flips nothing.
func TestSuspectCheckerFlipsNothing(t *testing.T) {
	zones := []string{"zone-a"}
	snap := testCatalog(12, zones)
	h := startReplicas(t, 1, 2, snap)
	good := &truth{}
	cs := h.clients(3, zones, good)
	eventually(t, 30*time.Second, "coverage", func() bool { return exactCoverage(snap, cs, 2) })
	eventually(t, 30*time.Second, "all HEALTHY", func() bool {
		for _, e := range snap.Endpoints() {
			if !h.verdictEverywhere(e.Key, "HEALTHY") {
				return false
			}
		}
		return true
	})
	broken := cs[0]
	broken.SetTruth(func(string, string, uint32) bool { return false })
	rep := h.nodes[0].rep
	eventually(t, 20*time.Second, "the broken checker is suspect", func() bool {
		rep.mu.Lock()
		defer rep.mu.Unlock()
		return len(rep.suspects) == 1 && rep.suspects[0] == broken.Node.GetId()
	})
	for _, e := range snap.Endpoints() {
		if v, _ := rep.Verdict(e.Key); v.Verdict != verdict.Up {
			t.Fatalf("%s is %v: %s", e.Key, v.Verdict, v.Reason)
		}
	}
	_ = catalog.HTTP
}
