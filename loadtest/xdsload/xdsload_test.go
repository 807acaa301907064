package xdsload

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
	"gopkg.in/yaml.v3"

	"github.com/sidemesh/sidemesh/loadtest/harness/harnesstest"
)

type allNodes struct{}

func (allNodes) ID(*corepb.Node) string { return "all" }

// modelServer is a go-control-plane snapshot server that serves the model
// file written by Model, re-reading it when it changes: a stand-in for the
// controlplane that keeps this package's tests independent of it.
type modelServer struct {
	addr  string
	cache cachev3.SnapshotCache
	ver   int
	mu    sync.Mutex
}

type yamlModel struct {
	Services []struct {
		Name      string
		Endpoints []struct {
			Address string
			Port    uint32
		}
	}
}

func startServer(t *testing.T) *modelServer {
	t.Helper()
	ms := &modelServer{cache: cachev3.NewSnapshotCache(true, allNodes{}, nil)}
	ctx, cancel := context.WithCancel(context.Background())
	srv := serverv3.NewServer(ctx, ms.cache, nil)
	gs := grpc.NewServer()
	discoverypb.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(func() { gs.Stop(); cancel() })
	ms.addr = ln.Addr().String()
	return ms
}

func (ms *modelServer) set(t testing.TB, m yamlModel) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	ms.ver++
	var cls, eps []types.Resource
	for _, s := range m.Services {
		cls = append(cls, &clusterpb.Cluster{
			Name: s.Name, ConnectTimeout: durationpb.New(time.Second),
			ClusterDiscoveryType: &clusterpb.Cluster_Type{Type: clusterpb.Cluster_EDS},
			EdsClusterConfig: &clusterpb.Cluster_EdsClusterConfig{EdsConfig: &corepb.ConfigSource{
				ConfigSourceSpecifier: &corepb.ConfigSource_Ads{Ads: &corepb.AggregatedConfigSource{}}}},
		})
		var lbs []*endpointpb.LbEndpoint
		for _, e := range s.Endpoints {
			lbs = append(lbs, &endpointpb.LbEndpoint{HostIdentifier: &endpointpb.LbEndpoint_Endpoint{Endpoint: &endpointpb.Endpoint{
				Address: &corepb.Address{Address: &corepb.Address_SocketAddress{SocketAddress: &corepb.SocketAddress{
					Address: e.Address, PortSpecifier: &corepb.SocketAddress_PortValue{PortValue: e.Port}}}}}}})
		}
		eps = append(eps, &endpointpb.ClusterLoadAssignment{ClusterName: s.Name, Endpoints: []*endpointpb.LocalityLbEndpoints{{LbEndpoints: lbs}}})
	}
	snap, err := cachev3.NewSnapshot(strconv.Itoa(ms.ver), map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType: cls, resourcev3.EndpointType: eps, resourcev3.ListenerType: nil,
	})
	if err != nil {
		t.Error(err)
		return
	}
	if err := ms.cache.SetSnapshot(context.Background(), "all", snap); err != nil {
		t.Error(err)
	}
}

// watch reloads path whenever its content changes, at most limit times
// (0: no limit).
func (ms *modelServer) watch(t *testing.T, path string, limit int) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		var last string
		loads := 0
		for ctx.Err() == nil && (limit == 0 || loads < limit) {
			if b, err := os.ReadFile(path); err == nil && string(b) != last {
				var m yamlModel
				if yaml.Unmarshal(b, &m) == nil && len(m.Services) > 0 {
					last = string(b)
					ms.set(t, m)
					loads++
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
}

func dial(t *testing.T, addr string, n int) []*grpc.ClientConn {
	var conns []*grpc.ClientConn
	for range n {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	return conns
}

func TestFleetSotWAndDelta(t *testing.T) {
	for _, delta := range []bool{false, true} {
		t.Run(map[bool]string{false: "sotw", true: "delta"}[delta], func(t *testing.T) {
			ms := startServer(t)
			path := filepath.Join(t.TempDir(), "mesh.yaml")
			m := &Model{Path: path, Services: 20, Eps: 3, Rename: true}
			if err := m.Write(); err != nil {
				t.Fatal(err)
			}
			ms.watch(t, path, 0)
			opt := Options{Clients: 30, Delta: delta, Node: Node{IDPrefix: "t", Role: "sidecar"}, Changes: 3,
				ChangeTimeout: 30 * time.Second, Initial: HasPort(m.MarkerPort())}
			out, err := Run(context.Background(), dial(t, ms.addr, 5), opt, m)
			if err != nil {
				t.Fatal(err)
			}
			if len(out.Initial.Latencies) != 30 || len(out.Changes) != 3 || out.Failed != 0 {
				t.Fatalf("initial %d changes %d failed %d (%v)", len(out.Initial.Latencies), len(out.Changes), out.Failed, out.Err)
			}
			for i, c := range out.Changes {
				if len(c.Latencies) != 30 || c.Bytes <= 0 {
					t.Fatalf("change %d: %d clients, %d bytes", i+1, len(c.Latencies), c.Bytes)
				}
			}
			// A SotW push resends every endpoint set; delta sends the one
			// that changed. The initial sync carries all 20.
			perClient := out.Changes[0].Bytes / 30
			initial := out.Initial.Bytes / 30
			if delta && perClient*5 > initial {
				t.Errorf("delta: %d bytes per change per client vs %d initial: not a delta", perClient, initial)
			}
			if !delta && perClient*2 < initial/2 {
				t.Errorf("sotw: %d bytes per change per client vs %d initial: expected a full EDS push", perClient, initial)
			}
		})
	}
}

func TestCommandEndToEnd(t *testing.T) {
	ms := startServer(t)
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	code, _, stderr := harnesstest.Exec(t, Spec(), "--model", path, "--generate", "10x2", "--generate-only")
	if code != 0 {
		t.Fatalf("generate-only: exit %d %s", code, stderr)
	}
	ms.watch(t, path, 0)
	code, r, stderr := harnesstest.Exec(t, Spec(), "--target", ms.addr, "--clients", "10", "--mode", "delta", "--model", path,
		"--generate", "10x2", "--changes", "2", "--pause", "10ms", "--target-pid", strconv.Itoa(os.Getpid()))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if r.Requests != 20 || r.Errors != 0 || r.Values["clients"] != 10 || r.Values["bytes_per_change_per_client"] <= 0 || r.Cost == nil {
		t.Fatalf("result %+v", r)
	}
	if len(r.Checks) != 1 || !r.Checks[0].OK {
		t.Fatalf("checks %+v", r.Checks)
	}
}

// A control plane that never serves the change must fail the run, not hang.
func TestUnservedChangeFails(t *testing.T) {
	ms := startServer(t)
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	ms.watch(t, path, 1) // serves the run's initial model, then never reloads
	code, r, _ := harnesstest.Exec(t, Spec(), "--target", ms.addr, "--clients", "3", "--model", path, "--generate", "2x1",
		"--changes", "1", "--change-timeout", "2s")
	if code == 0 || r.Errors != 3 || !r.Failed() {
		t.Fatalf("exit %d result %+v", code, r)
	}
}

// A target that does not listen (yet) is waited for, then reported by
// address — not a flood of per-stream "connection refused".
func TestTargetNotListening(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	code, _, stderr := harnesstest.Exec(t, Spec(), "--target", addr, "--clients", "2", "--model", path, "--generate", "2x1",
		"--changes", "1", "--connect-timeout", "1s")
	if code == 0 || !strings.Contains(stderr, addr) || !strings.Contains(stderr, "not reachable") {
		t.Fatalf("exit %d stderr %q: want a failure naming %s as not reachable", code, stderr, addr)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--mode", "rest"}, {"--clients", "0"}, {"--generate", "5"}, {"--generate", "0x3", "--model", "x"},
		{"--generate", "100000x10", "--model", "x"}, {"--changes", "1"}, {"--change-cmd", "true", "--model", "m"},
		{"--target", "203.0.113.9:18000", "--change-cmd", "true"}, {"--write-mode", "append"},
	} {
		if code, _, stderr := harnesstest.Exec(t, Spec(), args...); code != 2 || stderr == "" {
			t.Errorf("%v: exit %d stderr %q, want usage error", args, code, stderr)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"500x10", "1x1", "x", "3x", "-1x5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, b, err := ParseSize(s)
		if err == nil && (a < 1 || b < 1 || a*b > maxPorts) {
			t.Fatalf("%q accepted as %dx%d", s, a, b)
		}
	})
}
