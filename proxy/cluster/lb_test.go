package cluster

import (
	"fmt"
	"math"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sidemesh/sidemesh/proxy/stats"
)

type hostSpec struct {
	port   uint32
	weight uint32
	health corev3.HealthStatus
}

func makeCLA(localities ...[]hostSpec) *endpointv3.ClusterLoadAssignment {
	c := &endpointv3.ClusterLoadAssignment{ClusterName: "c"}
	for i, hs := range localities {
		l := &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{Zone: fmt.Sprintf("z%d", i)}}
		for _, h := range hs {
			e := &endpointv3.LbEndpoint{HealthStatus: h.health, HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "10.0.0.1",
					PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: h.port}}}}}}}
			if h.weight > 0 {
				e.LoadBalancingWeight = wrapperspb.UInt32(h.weight)
			}
			l.LbEndpoints = append(l.LbEndpoints, e)
		}
		c.Endpoints = append(c.Endpoints, l)
	}
	return c
}

func buildCluster(t *testing.T, policy clusterv3.Cluster_LbPolicy, cla *endpointv3.ClusterLoadAssignment) *Cluster {
	t.Helper()
	c := &clusterv3.Cluster{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}, LbPolicy: policy, LoadAssignment: cla,
		ConnectTimeout: durationpb.New(time.Second)}
	if err := c.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	cl, err := Build(c, nil, stats.New(nil))
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func counts(cl *Cluster, n int, hash func(i int) (uint64, bool)) map[string]int {
	out := map[string]int{}
	for i := 0; i < n; i++ {
		h, ok := hash(i)
		out[cl.Pick(h, ok, nil).Addr]++
	}
	return out
}

func noHash(int) (uint64, bool) { return 0, false }

// within checks a count against a binomial expectation at 5 sigma.
func within(t *testing.T, what string, got, n int, p float64) {
	t.Helper()
	mean := p * float64(n)
	s := math.Sqrt(float64(n) * p * (1 - p))
	if math.Abs(float64(got)-mean) > 5*s+1 {
		t.Errorf("%s: %d of %d, want %.0f ± %.0f", what, got, n, mean, 5*s)
	}
}

func TestRoundRobinExactAndWeighted(t *testing.T) {
	cl := buildCluster(t, clusterv3.Cluster_ROUND_ROBIN, makeCLA([]hostSpec{{port: 1}, {port: 2}, {port: 3}}))
	got := counts(cl, 300, noHash)
	for _, p := range []string{"10.0.0.1:1", "10.0.0.1:2", "10.0.0.1:3"} {
		if got[p] != 100 {
			t.Errorf("round robin %s: %d, want exactly 100", p, got[p])
		}
	}
	cl = buildCluster(t, clusterv3.Cluster_ROUND_ROBIN, makeCLA([]hostSpec{{port: 1, weight: 3}, {port: 2, weight: 1}}))
	got = counts(cl, 400, noHash)
	if got["10.0.0.1:1"] != 300 || got["10.0.0.1:2"] != 100 {
		t.Errorf("weighted round robin: %v, want 300/100", got)
	}
}

func TestRandomWeighted(t *testing.T) {
	cl := buildCluster(t, clusterv3.Cluster_RANDOM, makeCLA([]hostSpec{{port: 1, weight: 1}, {port: 2, weight: 4}}))
	n := 50000
	got := counts(cl, n, noHash)
	within(t, "weight 1", got["10.0.0.1:1"], n, 0.2)
	within(t, "weight 4", got["10.0.0.1:2"], n, 0.8)
}

func TestLocalityWeights(t *testing.T) {
	cla := makeCLA([]hostSpec{{port: 1}, {port: 2}}, []hostSpec{{port: 3}})
	cla.Endpoints[0].LoadBalancingWeight = wrapperspb.UInt32(1)
	cla.Endpoints[1].LoadBalancingWeight = wrapperspb.UInt32(3)
	cl := buildCluster(t, clusterv3.Cluster_RANDOM, cla)
	n := 40000
	got := counts(cl, n, noHash)
	// Locality z1 (one host) gets 3/4, each host of z0 1/8.
	within(t, "z1 host", got["10.0.0.1:3"], n, 0.75)
	within(t, "z0 host a", got["10.0.0.1:1"], n, 0.125)
}

func TestLeastRequestPrefersIdleHost(t *testing.T) {
	cl := buildCluster(t, clusterv3.Cluster_LEAST_REQUEST, makeCLA([]hostSpec{{port: 1}, {port: 2}}))
	busy := cl.Hosts().All[0]
	for i := 0; i < 10; i++ {
		cl.Begin(busy)
	}
	got := counts(cl, 1000, noHash)
	// P2C picks the busy host only when both choices land on it: ~1/4.
	within(t, "busy host", got[busy.Addr], 1000, 0.25)
}

func TestRingHashSticky(t *testing.T) {
	cl := buildCluster(t, clusterv3.Cluster_RING_HASH, makeCLA([]hostSpec{{port: 1}, {port: 2}, {port: 3}, {port: 4}}))
	n := 20000
	got := counts(cl, n, func(i int) (uint64, bool) { return Hash(fmt.Sprint("user-", i)), true })
	for a, c := range got {
		if c < n/4*6/10 || c > n/4*14/10 {
			t.Errorf("ring share of %s: %d of %d, want about %d", a, c, n, n/4)
		}
	}
	for i := 0; i < 100; i++ {
		h := Hash(fmt.Sprint("key-", i))
		first := cl.Pick(h, true, nil)
		for j := 0; j < 5; j++ {
			if cl.Pick(h, true, nil) != first {
				t.Fatalf("ring hash not sticky for key %d", i)
			}
		}
	}
}

func TestHealthAndPanic(t *testing.T) {
	cl := buildCluster(t, clusterv3.Cluster_ROUND_ROBIN, makeCLA([]hostSpec{{port: 1}, {port: 2, health: corev3.HealthStatus_UNHEALTHY}, {port: 3}}))
	if got := counts(cl, 100, noHash); got["10.0.0.1:2"] != 0 {
		t.Errorf("unhealthy host picked %d times", got["10.0.0.1:2"])
	}
	// 1 of 3 healthy is under the 50% panic threshold: Envoy spreads over all.
	cl = buildCluster(t, clusterv3.Cluster_ROUND_ROBIN, makeCLA([]hostSpec{{port: 1}, {port: 2, health: corev3.HealthStatus_UNHEALTHY}, {port: 3, health: corev3.HealthStatus_DRAINING}}))
	if got := counts(cl, 300, noHash); got["10.0.0.1:2"] != 100 {
		t.Errorf("panic mode should use every host: %v", got)
	}
	empty := buildCluster(t, clusterv3.Cluster_ROUND_ROBIN, makeCLA())
	if empty.Pick(0, false, nil) != nil {
		t.Errorf("empty cluster returned a host")
	}
}

func TestOutlierEjection(t *testing.T) {
	c := &clusterv3.Cluster{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment:   makeCLA([]hostSpec{{port: 1}, {port: 2}, {port: 3}, {port: 4}}),
		OutlierDetection: &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(2), BaseEjectionTime: durationpb.New(time.Hour), MaxEjectionPercent: wrapperspb.UInt32(25)}}
	cl, err := Build(c, nil, stats.New(nil))
	if err != nil {
		t.Fatal(err)
	}
	hs := cl.Hosts().All
	cl.Begin(hs[0])
	cl.End(hs[0], 500)
	cl.Begin(hs[0])
	cl.End(hs[0], 200) // a success resets the streak
	cl.Begin(hs[0])
	cl.End(hs[0], 500)
	if hs[0].Ejected(time.Now().UnixNano()) {
		t.Fatal("ejected without two consecutive 5xx")
	}
	cl.Begin(hs[0])
	cl.End(hs[0], 503)
	if !hs[0].Ejected(time.Now().UnixNano()) {
		t.Fatal("not ejected after two consecutive 5xx")
	}
	// max_ejection_percent 25 of 4 hosts: a second ejection is refused.
	for i := 0; i < 2; i++ {
		cl.Begin(hs[1])
		cl.End(hs[1], 0)
	}
	if hs[1].Ejected(time.Now().UnixNano()) {
		t.Fatal("max_ejection_percent exceeded")
	}
	for i := 0; i < 200; i++ {
		if cl.Pick(0, false, nil) == hs[0] {
			t.Fatal("ejected host picked")
		}
	}
}

func TestRetryBudget(t *testing.T) {
	c := &clusterv3.Cluster{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment: makeCLA([]hostSpec{{port: 1}}),
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			RetryBudget: &clusterv3.CircuitBreakers_Thresholds_RetryBudget{MinRetryConcurrency: wrapperspb.UInt32(2)}}}}}
	cl, err := Build(c, nil, stats.New(nil))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		cl.Acquire()
	}
	// 20% of 50 active = 10 concurrent retries.
	n := 0
	for cl.AcquireRetry() {
		n++
	}
	if n != 10 {
		t.Fatalf("budget allowed %d retries, want 10", n)
	}
}
