package xdssource

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sidemesh/sidemesh/services/hds/catalog"
)

func hc() *corev3.HealthCheck {
	return &corev3.HealthCheck{
		Interval: durationpb.New(time.Second), Timeout: durationpb.New(time.Second),
		UnhealthyThreshold: wrapperspb.UInt32(2), HealthyThreshold: wrapperspb.UInt32(1),
		HealthChecker: &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/healthz"}},
	}
}

func cla(name string, zone string, addrs ...string) *endpointv3.ClusterLoadAssignment {
	l := &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{Zone: zone}}
	for _, a := range addrs {
		l.LbEndpoints = append(l.LbEndpoints, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: a, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080}}}},
		}}})
	}
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{l}}
}

func edsCluster(name string, checks bool) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name: name, ConnectTimeout: durationpb.New(time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}},
	}
	if checks {
		c.HealthChecks = []*corev3.HealthCheck{hc()}
	}
	return c
}

// A real go-control-plane ADS server; our source must learn the clusters
// with health checks and their endpoints, and follow updates.
func TestSourceAgainstGoControlPlane(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	set := func(version string, res map[resource.Type][]types.Resource) {
		s, err := cachev3.NewSnapshot(version, res)
		if err != nil {
			t.Fatal(err)
		}
		if err := cache.SetSnapshot(ctx, "hds-test", s); err != nil {
			t.Fatal(err)
		}
	}
	set("1", map[resource.Type][]types.Resource{
		resource.ClusterType:  {edsCluster("web", true), edsCluster("plain", false)},
		resource.EndpointType: {cla("web", "zone-a", "10.0.0.1", "10.0.0.2"), cla("plain", "zone-a", "10.9.9.9")},
	})
	srv := serverv3.NewServer(ctx, cache, nil)
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	defer gs.Stop()

	var mu sync.Mutex
	var last *catalog.Snapshot
	src := &Source{Addr: ln.Addr().String(), NodeID: "hds-test"}
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func(s *catalog.Snapshot) { mu.Lock(); last = s; mu.Unlock() }) }()
	wait := func(what string, ok func(*catalog.Snapshot) bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			mu.Lock()
			s := last
			mu.Unlock()
			if s != nil && ok(s) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; last %+v", what, s)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	wait("web with 2 endpoints only", func(s *catalog.Snapshot) bool {
		return len(s.Clusters) == 1 && s.Clusters[0].Name == "web" && len(s.Clusters[0].Endpoints) == 2 &&
			s.Clusters[0].Endpoints[0].Zone() == "zone-a" && s.Clusters[0].Protocol == catalog.HTTP &&
			s.Clusters[0].HealthCheck.GetNoTrafficInterval().AsDuration() == time.Second
	})

	// Endpoints change, and "plain" gains a check.
	set("2", map[resource.Type][]types.Resource{
		resource.ClusterType:  {edsCluster("web", true), edsCluster("plain", true)},
		resource.EndpointType: {cla("web", "zone-a", "10.0.0.1"), cla("plain", "zone-b", "10.9.9.9")},
	})
	wait("update followed", func(s *catalog.Snapshot) bool {
		p, ok := s.Cluster("plain")
		w, ok2 := s.Cluster("web")
		return ok && ok2 && len(p.Endpoints) == 1 && p.Endpoints[0].Zone() == "zone-b" && len(w.Endpoints) == 1
	})

	// The server goes away and comes back: the last good catalog stays,
	// and the source reconnects.
	gs.Stop()
	set("3", map[resource.Type][]types.Resource{
		resource.ClusterType:  {edsCluster("web", true)},
		resource.EndpointType: {cla("web", "zone-a", "10.0.0.7", "10.0.0.8", "10.0.0.9")},
	})
	ln2, err := net.Listen("tcp", ln.Addr().String())
	if err != nil {
		t.Skipf("could not rebind %s: %v", ln.Addr(), err)
	}
	gs2 := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs2, serverv3.NewServer(ctx, cache, nil))
	go gs2.Serve(ln2)
	defer gs2.Stop()
	wait("resynced after reconnect", func(s *catalog.Snapshot) bool {
		return len(s.Clusters) == 1 && len(s.Clusters[0].Endpoints) == 3
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestApplyCDSNacksBadChecks(t *testing.T) {
	st := newStream(&Source{}, nil, func(*catalog.Snapshot) {})
	bad := edsCluster("bad", true)
	bad.HealthChecks[0].HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/"}}
	bad.HealthChecks[0].GetHttpHealthCheck().ExpectedStatuses = nil
	bad.HealthChecks[0].Timeout = nil
	any1, _ := anyOf(bad)
	err := st.applyCDS(&discoveryv3.DiscoveryResponse{VersionInfo: "9", Resources: any1})
	if err == nil {
		t.Fatal("a cluster with an invalid health check must be rejected")
	}
	if st.cdsVer == "9" {
		t.Fatal("a rejected version must not be recorded as applied")
	}
}

func anyOf(c *clusterv3.Cluster) ([]*anypb.Any, error) {
	a, err := anypb.New(c)
	return []*anypb.Any{a}, err
}

// An xDS server may answer a SotW EDS subscription with only the
// assignments that changed; the others must be kept, and an assignment
// whose cluster is gone must be dropped.
func TestPartialEDSResponsesMerge(t *testing.T) {
	var last *catalog.Snapshot
	st := newStream(&Source{}, slog.New(slog.DiscardHandler), func(s *catalog.Snapshot) { last = s })
	clusters := func(ver string, cs ...*clusterv3.Cluster) *discoveryv3.DiscoveryResponse {
		r := &discoveryv3.DiscoveryResponse{VersionInfo: ver}
		for _, c := range cs {
			a, err := anypb.New(c)
			if err != nil {
				t.Fatal(err)
			}
			r.Resources = append(r.Resources, a)
		}
		return r
	}
	endpoints := func(ver string, cs ...*endpointv3.ClusterLoadAssignment) *discoveryv3.DiscoveryResponse {
		r := &discoveryv3.DiscoveryResponse{VersionInfo: ver}
		for _, c := range cs {
			a, err := anypb.New(c)
			if err != nil {
				t.Fatal(err)
			}
			r.Resources = append(r.Resources, a)
		}
		return r
	}
	endpointsOf := func(name string) int {
		t.Helper()
		st.publish()
		c, ok := last.Cluster(name)
		if !ok {
			t.Fatalf("cluster %s missing from %+v", name, last)
		}
		return len(c.Endpoints)
	}
	if err := st.applyCDS(clusters("1", edsCluster("web", true), edsCluster("api", true))); err != nil {
		t.Fatal(err)
	}
	if err := st.applyEDS(endpoints("1", cla("web", "z", "10.0.0.1", "10.0.0.2"), cla("api", "z", "10.0.1.1"))); err != nil {
		t.Fatal(err)
	}
	if n := endpointsOf("api"); n != 1 {
		t.Fatalf("api has %d endpoints, want 1", n)
	}
	// Only web changed: api's assignment must survive.
	if err := st.applyEDS(endpoints("2", cla("web", "z", "10.0.0.1"))); err != nil {
		t.Fatal(err)
	}
	if n, m := endpointsOf("web"), endpointsOf("api"); n != 1 || m != 1 {
		t.Fatalf("after a partial EDS response web has %d endpoints (want 1), api %d (want 1)", n, m)
	}
	// api's cluster goes away, then comes back before its endpoints are
	// resent: the old assignment must not reappear.
	if err := st.applyCDS(clusters("2", edsCluster("web", true))); err != nil {
		t.Fatal(err)
	}
	if err := st.applyCDS(clusters("3", edsCluster("web", true), edsCluster("api", true))); err != nil {
		t.Fatal(err)
	}
	if !st.missingEDS() {
		t.Fatal("api's assignment was pruned with its cluster; the stream must wait for it again")
	}
	if n := endpointsOf("api"); n != 0 {
		t.Fatalf("api kept %d stale endpoints after its cluster was removed", n)
	}
}
