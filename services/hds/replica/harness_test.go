package replica

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/hashicorp/memberlist"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sidemesh/sidemesh/services/hds/catalog"
	"github.com/sidemesh/sidemesh/services/hds/ring"
	"github.com/sidemesh/sidemesh/services/hds/ring/faultnet"
	"github.com/sidemesh/sidemesh/services/hds/server"
	"github.com/sidemesh/sidemesh/services/hds/simclient"
)

const (
	testReport = 500 * time.Millisecond
	testCheck  = 300 * time.Millisecond
	testUnhTh  = 2
)

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

func testLog() *slog.Logger {
	lvl := slog.LevelWarn
	if os.Getenv("HDS_TEST_DEBUG") != "" {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
}

// testCatalog has m endpoints over two clusters (HTTP and TCP) and zones.
func testCatalog(m int, zones []string) *catalog.Snapshot {
	mk := func(tcp bool) *corev3.HealthCheck {
		hc := &corev3.HealthCheck{
			Interval: durationpb.New(testCheck), Timeout: durationpb.New(100 * time.Millisecond),
			UnhealthyThreshold: wrapperspb.UInt32(testUnhTh), HealthyThreshold: wrapperspb.UInt32(1),
			HealthChecker: &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/healthz"}},
		}
		if tcp {
			hc.HealthChecker = &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &corev3.HealthCheck_TcpHealthCheck{}}
		}
		n, p, err := catalog.NormalizeHealthCheck(hc)
		if err != nil {
			panic(err)
		}
		_ = p
		return n
	}
	web := catalog.Cluster{Name: "web", HealthCheck: mk(false), Protocol: catalog.HTTP}
	api := catalog.Cluster{Name: "api", HealthCheck: mk(true), Protocol: catalog.TCP}
	for i := 0; i < m; i++ {
		z := zones[i%len(zones)]
		ep := catalog.Endpoint{Key: catalog.EndpointKey{Address: fmt.Sprintf("10.0.%d.%d", i/200, i%200+1), Port: 8080}, Locality: &corev3.Locality{Zone: z}}
		if i%2 == 0 {
			ep.Key.Cluster = "web"
			web.Endpoints = append(web.Endpoints, ep)
		} else {
			ep.Key.Cluster = "api"
			api.Endpoints = append(api.Endpoints, ep)
		}
	}
	s := &catalog.Snapshot{Version: "test", Clusters: []catalog.Cluster{web, api}}
	s.Sort()
	return s
}

// truth is a mutable truth table shared by simulated clients.
type truth struct {
	mu   sync.Mutex
	down map[string]bool
}

func (t *truth) set(key string, down bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.down == nil {
		t.down = map[string]bool{}
	}
	t.down[key] = down
}

func (t *truth) fn(cluster, addr string, port uint32) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return !t.down[simclient.Key(cluster, addr, port)]
}

type node struct {
	rep    *Replica
	gs     *grpc.Server
	addr   string
	cancel context.CancelFunc
	done   chan struct{}
	dead   bool
}

type harness struct {
	t     *testing.T
	fn    *faultnet.Network
	nodes []*node
	snap  *catalog.Snapshot
}

func startReplicas(t *testing.T, n, k int, snap *catalog.Snapshot) *harness {
	t.Helper()
	h := &harness{t: t, fn: faultnet.New(), snap: snap}
	var seeds []string
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		rep, err := New(Config{
			K: k, LoadFactor: 1.5, ReportInterval: testReport, StaleAfter: 5 * testReport, Log: testLog().With("replica", i),
			Ring: ring.Config{
				Name: fmt.Sprintf("hds-%d", i), BindAddr: "127.0.0.1", Seeds: seeds, Label: "test-" + t.Name(),
				Timings: ring.FastTimings(), RejoinInterval: 500 * time.Millisecond,
				WrapTransport: func(self string, tr memberlist.Transport) memberlist.NodeAwareTransport {
					return h.fn.Wrap(self, tr)
				},
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, rep.Ring().Addr())
		rep.SetCatalog(snap)
		gs := grpc.NewServer()
		server.Register(gs, rep, rep)
		go gs.Serve(ln)
		ctx, cancel := context.WithCancel(context.Background())
		nd := &node{rep: rep, gs: gs, addr: ln.Addr().String(), cancel: cancel, done: make(chan struct{})}
		go func() { _ = rep.Run(ctx); close(nd.done) }()
		h.nodes = append(h.nodes, nd)
	}
	t.Cleanup(func() {
		for _, nd := range h.nodes {
			if !nd.dead {
				nd.cancel()
				<-nd.done
				nd.gs.Stop()
			}
		}
	})
	eventually(t, 20*time.Second, "ring of all replicas", func() bool {
		for _, nd := range h.nodes {
			if len(nd.rep.Ring().Members()) != n {
				return false
			}
		}
		return true
	})
	return h
}

// kill crashes replica i: no leave message, gRPC connections cut.
func (h *harness) kill(i int) {
	nd := h.nodes[i]
	nd.dead = true
	nd.rep.Kill()
	nd.gs.Stop()
	nd.cancel()
	<-nd.done
}

func (h *harness) live() []*node {
	var out []*node
	for _, nd := range h.nodes {
		if !nd.dead {
			out = append(out, nd)
		}
	}
	return out
}

// clients starts n simulated proxies spread over the replicas.
func (h *harness) clients(n int, zones []string, tr *truth) []*simclient.Client {
	var addrs []string
	for _, nd := range h.nodes {
		addrs = append(addrs, nd.addr)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var cs []*simclient.Client
	for i := 0; i < n; i++ {
		rot := append(append([]string{}, addrs[i%len(addrs):]...), addrs[:i%len(addrs)]...)
		c := &simclient.Client{
			Addrs: rot, Truth: tr.fn, BackoffBase: time.Second, BackoffMax: 5 * time.Second,
			Node: &corev3.Node{Id: fmt.Sprintf("proxy-%02d", i), Locality: &corev3.Locality{Zone: zones[i%len(zones)]}},
		}
		cs = append(cs, c)
		wg.Add(1)
		go func() { defer wg.Done(); _ = c.Run(ctx) }()
	}
	h.t.Cleanup(func() { cancel(); wg.Wait() })
	return cs
}

// coverage counts, per endpoint, connected clients whose specifier has it.
func coverage(cs []*simclient.Client) map[string]int {
	out := map[string]int{}
	for _, c := range cs {
		if c.Stats().ConnectedTo == "" {
			continue
		}
		for _, k := range c.Assigned() {
			out[k]++
		}
	}
	return out
}

// exactCoverage reports whether every endpoint has exactly k checkers.
func exactCoverage(snap *catalog.Snapshot, cs []*simclient.Client, k int) bool {
	cov := coverage(cs)
	eps := snap.Endpoints()
	if len(cov) != len(eps) {
		return false
	}
	for _, e := range eps {
		if cov[e.Key.String()] != k {
			return false
		}
	}
	return true
}

// agree reports whether every live replica computes the same assignment.
func (h *harness) agree() bool {
	var first map[string][]string
	for _, nd := range h.live() {
		a := nd.rep.assignment()
		if a == nil {
			return false
		}
		if first == nil {
			first = a.ByTarget
			continue
		}
		if fmt.Sprint(first) != fmt.Sprint(a.ByTarget) {
			return false
		}
	}
	return true
}

func (h *harness) verdictEverywhere(k catalog.EndpointKey, want string) bool {
	for _, nd := range h.live() {
		v, ok := nd.rep.Verdict(k)
		if !ok || v.Verdict.String() != want {
			return false
		}
	}
	return true
}

func ringGossipToTheDead() time.Duration { return ring.FastTimings().GossipToTheDead + time.Second }
