package hdsclient

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sidemesh/sidemesh/services/hds/catalog"
	"github.com/sidemesh/sidemesh/services/hds/replica"
	"github.com/sidemesh/sidemesh/services/hds/ring"
	"github.com/sidemesh/sidemesh/services/hds/server"
	"github.com/sidemesh/sidemesh/services/hds/verdict"
)

// TestAgainstRealHDSReplica runs the client against the project's own HDS
// replica in-process: the replica assigns the endpoints to this proxy, the
// client probes the real upstreams, and the replica's verdicts follow.
func TestAgainstRealHDSReplica(t *testing.T) {
	up := newApp(t)
	upAddr := strings.TrimPrefix(up.srv.URL, "http://")
	upHost, upPort := hostPort(t, upAddr)
	deadHost, deadPort := hostPort(t, deadAddr(t))

	hc, _, err := catalog.NormalizeHealthCheck(&corev3.HealthCheck{
		Interval: durationpb.New(100 * time.Millisecond), Timeout: durationpb.New(time.Second),
		UnhealthyThreshold: wrapperspb.UInt32(2), HealthyThreshold: wrapperspb.UInt32(1),
		HealthChecker: &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/healthz"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	web := catalog.Cluster{Name: "web", HealthCheck: hc, Protocol: catalog.HTTP, Endpoints: []catalog.Endpoint{
		{Key: catalog.EndpointKey{Cluster: "web", Address: upHost, Port: upPort}, Locality: &corev3.Locality{Zone: "zone-a"}},
		{Key: catalog.EndpointKey{Cluster: "web", Address: deadHost, Port: deadPort}, Locality: &corev3.Locality{Zone: "zone-a"}},
	}}
	snap := &catalog.Snapshot{Version: "t", Clusters: []catalog.Cluster{web}}
	snap.Sort()

	rep, err := replica.New(replica.Config{K: 1, ReportInterval: 200 * time.Millisecond, Log: slog.New(slog.DiscardHandler),
		Ring: ring.Config{Name: "hds-1", BindAddr: "127.0.0.1", Label: "hdsclient-" + t.Name(), Timings: ring.FastTimings()}})
	if err != nil {
		t.Fatal(err)
	}
	rep.SetCatalog(snap)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	server.Register(gs, rep, rep)
	go gs.Serve(ln)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = rep.Run(ctx); close(done) }()
	defer func() { cancel(); <-done; gs.Stop() }()

	c, stop := runClient(t, ln.Addr().String())
	defer stop()

	verdicts := func() map[catalog.EndpointKey]verdict.Verdict {
		snapshot, _, cancelWatch := rep.Watch("test", nil)
		defer cancelWatch()
		out := map[catalog.EndpointKey]verdict.Verdict{}
		for _, v := range snapshot {
			out[v.Key] = v.Verdict
		}
		return out
	}
	upKey, deadKey := web.Endpoints[0].Key, web.Endpoints[1].Key
	if web.Endpoints[0].Key.Port != upPort {
		upKey, deadKey = deadKey, upKey // Sort may reorder
	}
	waitFor(t, "replica verdicts up/dead from our probes", func() bool {
		v := verdicts()
		return v[upKey] == verdict.Up && v[deadKey] == verdict.Dead
	})
	if st := c.Status(); len(st.Clusters) != 1 || len(st.Clusters[0].Hosts) != 2 || up.probes.Load() == 0 {
		t.Fatalf("client status: %+v probes=%d", st, up.probes.Load())
	}
	up.status.Store(503)
	waitFor(t, "verdict follows the upstream failing", func() bool { return verdicts()[upKey] == verdict.Dead })
	up.status.Store(200)
	waitFor(t, "verdict follows the upstream recovering", func() bool { return verdicts()[upKey] == verdict.Up })
}

// connCounter is an upstream that counts distinct client connections
// (each prober keeps one keep-alive connection) and can fail.
type connCounter struct {
	*app
	mu    sync.Mutex
	conns map[string]int
}

func newConnCounter(t *testing.T) *connCounter {
	c := &connCounter{app: &app{}, conns: map[string]int{}}
	c.status.Store(200)
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.probes.Add(1)
		c.mu.Lock()
		c.conns[r.RemoteAddr]++
		c.mu.Unlock()
		w.WriteHeader(int(c.status.Load()))
	}))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *connCounter) resetConns() { c.mu.Lock(); c.conns = map[string]int{}; c.mu.Unlock() }
func (c *connCounter) nConns() int { c.mu.Lock(); defer c.mu.Unlock(); return len(c.conns) }

// TestDelegatedChecksK2: 2 real HDS replicas on a memberlist ring, 3
// proxies' HDS clients, 6 real upstreams, k=2: every upstream is probed by
// exactly 2 proxies (counted at the upstream), and an upstream that fails
// becomes Dead in the replicas' verdicts, then Up again when restored.
func TestDelegatedChecksK2(t *testing.T) {
	if testing.Short() {
		t.Skip("ring of two replicas")
	}
	ups := make([]*connCounter, 6)
	var eps []catalog.Endpoint
	for i := range ups {
		ups[i] = newConnCounter(t)
		h, p := hostPort(t, ups[i].srv.URL)
		eps = append(eps, catalog.Endpoint{Key: catalog.EndpointKey{Cluster: "web", Address: h, Port: p}, Locality: &corev3.Locality{Zone: []string{"zone-a", "zone-b"}[i%2]}})
	}
	hc, _, err := catalog.NormalizeHealthCheck(&corev3.HealthCheck{
		Interval: durationpb.New(100 * time.Millisecond), Timeout: durationpb.New(time.Second),
		UnhealthyThreshold: wrapperspb.UInt32(2), HealthyThreshold: wrapperspb.UInt32(1),
		HealthChecker: &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/healthz"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	snap := &catalog.Snapshot{Version: "t", Clusters: []catalog.Cluster{{Name: "web", HealthCheck: hc, Protocol: catalog.HTTP, Endpoints: eps}}}
	snap.Sort()

	var reps []*replica.Replica
	var addrs, seeds []string
	for i := range 2 {
		rep, err := replica.New(replica.Config{K: 2, LoadFactor: 1.5, ReportInterval: 200 * time.Millisecond, Log: slog.New(slog.DiscardHandler),
			Ring: ring.Config{Name: fmt.Sprintf("hds-%d", i+1), BindAddr: "127.0.0.1", Seeds: seeds, Label: "hdsclient-" + t.Name(), Timings: ring.FastTimings(), RejoinInterval: 500 * time.Millisecond}})
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, rep.Ring().Addr())
		rep.SetCatalog(snap)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		gs := grpc.NewServer()
		server.Register(gs, rep, rep)
		go gs.Serve(ln)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = rep.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done; gs.Stop() })
		reps = append(reps, rep)
		addrs = append(addrs, ln.Addr().String())
	}
	waitFor(t, "ring of 2", func() bool { return len(reps[0].Ring().Members()) == 2 && len(reps[1].Ring().Members()) == 2 })

	var clients []*Client
	for i, zone := range []string{"zone-a", "zone-a", "zone-b"} {
		// Each proxy probes from its own loopback address, so the
		// upstreams can tell the probers apart.
		c, err := New(Config{SourceIP: netip.MustParseAddr(fmt.Sprintf("127.0.0.%d", 11+i)), Addr: addrs[i%2] + "," + addrs[(i+1)%2], Node: &corev3.Node{Id: fmt.Sprintf("proxy-%d", i), Cluster: "web", Locality: &corev3.Locality{Zone: zone}},
			BackoffBase: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = c.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		clients = append(clients, c)
	}
	checkers := func(addr string) int {
		n := 0
		for _, c := range clients {
			for _, cl := range c.Status().Clusters {
				for _, h := range cl.Hosts {
					if h.CheckAddr == addr {
						n++
					}
				}
			}
		}
		return n
	}
	// Assignment settles: every upstream with exactly 2 checkers.
	waitFor(t, "k=2 assignment", func() bool {
		for _, u := range ups {
			if checkers(strings.TrimPrefix(u.srv.URL, "http://")) != 2 {
				return false
			}
		}
		return true
	})
	// Counted at the upstreams: over a window in which no proxy's
	// assignment changed, exactly 2 prober connections per upstream (each
	// assigned proxy keeps one keep-alive connection). A window with a
	// late reassignment is measured again.
	updates := func() string {
		var s []int
		for _, c := range clients {
			s = append(s, c.Status().Updates)
		}
		return fmt.Sprint(s)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		before := updates()
		for _, u := range ups {
			u.resetConns()
			u.probes.Store(0)
		}
		waitFor(t, "probes at every upstream", func() bool {
			for _, u := range ups {
				if u.probes.Load() < 10 {
					return false
				}
			}
			return true
		})
		if updates() != before {
			if time.Now().After(deadline) {
				t.Fatal("assignment never stable for a measuring window")
			}
			continue
		}
		// Probers are told apart by source address. A probe already in
		// flight from a session cancelled just before the window may land
		// in it: at most one such stray per upstream.
		for i, u := range ups {
			u.mu.Lock()
			bySource := map[string]int{}
			for addr, n := range u.conns {
				h, _, _ := net.SplitHostPort(addr)
				bySource[h] += n
			}
			probers, strays := 0, 0
			for _, n := range bySource {
				if n >= 3 {
					probers++
				} else {
					strays += n
				}
			}
			if probers != 2 || strays > 1 {
				t.Errorf("upstream %d: %d probing proxies (want 2), %d stray probes: %v", i, probers, strays, bySource)
			}
			u.mu.Unlock()
		}
		break
	}
	verdictOf := func(k catalog.EndpointKey) verdict.Verdict {
		snapshot, _, cancel := reps[1].Watch("test", nil)
		defer cancel()
		for _, v := range snapshot {
			if v.Key == k {
				return v.Verdict
			}
		}
		return verdict.Unknown
	}
	victim := snap.Clusters[0].Endpoints[0]
	var vu *connCounter
	for _, u := range ups {
		if _, p := hostPort(t, u.srv.URL); p == victim.Key.Port {
			vu = u
		}
	}
	waitFor(t, "victim up", func() bool { return verdictOf(victim.Key) == verdict.Up })
	vu.status.Store(503)
	start := time.Now()
	waitFor(t, "victim dead", func() bool { return verdictOf(victim.Key) == verdict.Dead })
	t.Logf("failing upstream seen Dead by the other replica after %v", time.Since(start).Round(time.Millisecond))
	vu.status.Store(200)
	waitFor(t, "victim up again", func() bool { return verdictOf(victim.Key) == verdict.Up })
}
