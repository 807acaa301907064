// Package xdsstatic is a minimal ADS server that configures any xDS proxy
// (ours or Envoy) with one HTTP listener routing every path to one upstream:
// enough to benchmark the proxy's data path without the controlplane.
package xdsstatic

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sidemesh/sidemesh/internal/app"
	"github.com/sidemesh/sidemesh/internal/lifecycle"
)

// Names of the served resources.
const (
	ListenerName = "lt-listener"
	RouteName    = "lt-route"
	ClusterName  = "lt-upstream"
)

func ads() *corepb.ConfigSource {
	return &corepb.ConfigSource{ResourceApiVersion: corepb.ApiVersion_V3,
		ConfigSourceSpecifier: &corepb.ConfigSource_Ads{Ads: &corepb.AggregatedConfigSource{}}}
}

func sockAddr(host string, port uint32) *corepb.Address {
	return &corepb.Address{Address: &corepb.Address_SocketAddress{SocketAddress: &corepb.SocketAddress{
		Address: host, PortSpecifier: &corepb.SocketAddress_PortValue{PortValue: port}}}}
}

// Snapshot builds listener (listenPort) → route (every path) → EDS cluster →
// the upstream host:port, validated.
func Snapshot(version string, listenPort uint32, upstream string) (*cachev3.Snapshot, error) {
	host, ps, err := net.SplitHostPort(upstream)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: %w", upstream, err)
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("upstream %q: bad port", upstream)
	}
	router, err := anypb.New(&routerpb.Router{})
	if err != nil {
		return nil, err
	}
	hcm, err := anypb.New(&hcmpb.HttpConnectionManager{
		StatPrefix:     "loadtest",
		RouteSpecifier: &hcmpb.HttpConnectionManager_Rds{Rds: &hcmpb.Rds{RouteConfigName: RouteName, ConfigSource: ads()}},
		HttpFilters:    []*hcmpb.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmpb.HttpFilter_TypedConfig{TypedConfig: router}}},
	})
	if err != nil {
		return nil, err
	}
	res := map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: {&listenerpb.Listener{Name: ListenerName, Address: sockAddr("127.0.0.1", listenPort),
			FilterChains: []*listenerpb.FilterChain{{Filters: []*listenerpb.Filter{{Name: "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerpb.Filter_TypedConfig{TypedConfig: hcm}}}}}}},
		resourcev3.RouteType: {&routepb.RouteConfiguration{Name: RouteName, VirtualHosts: []*routepb.VirtualHost{{
			Name: "any", Domains: []string{"*"}, Routes: []*routepb.Route{{
				Match:  &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routepb.Route_Route{Route: &routepb.RouteAction{ClusterSpecifier: &routepb.RouteAction_Cluster{Cluster: ClusterName}}},
			}}}}}},
		resourcev3.ClusterType: {&clusterpb.Cluster{Name: ClusterName, ConnectTimeout: durationpb.New(time.Second),
			ClusterDiscoveryType: &clusterpb.Cluster_Type{Type: clusterpb.Cluster_EDS},
			EdsClusterConfig:     &clusterpb.Cluster_EdsClusterConfig{EdsConfig: ads()}}},
		resourcev3.EndpointType: {&endpointpb.ClusterLoadAssignment{ClusterName: ClusterName, Endpoints: []*endpointpb.LocalityLbEndpoints{{
			Locality: &corepb.Locality{Zone: "zone-a"},
			LbEndpoints: []*endpointpb.LbEndpoint{{HostIdentifier: &endpointpb.LbEndpoint_Endpoint{
				Endpoint: &endpointpb.Endpoint{Address: sockAddr(host, uint32(port))}}}},
		}}}},
	}
	for _, rs := range res {
		for _, r := range rs {
			if v, ok := r.(interface{ ValidateAll() error }); ok {
				if err := v.ValidateAll(); err != nil {
					return nil, fmt.Errorf("built an invalid resource: %w", err)
				}
			}
		}
	}
	return cachev3.NewSnapshot(version, res)
}

// everyNode gives every node the same snapshot.
type everyNode struct{}

func (everyNode) ID(*corepb.Node) string { return "all" }

// NewServer returns a gRPC server serving ADS (SotW and delta) with snap.
func NewServer(ctx context.Context, snap *cachev3.Snapshot) (*grpc.Server, error) {
	cache := cachev3.NewSnapshotCache(true, everyNode{}, nil)
	if err := cache.SetSnapshot(ctx, "all", snap); err != nil {
		return nil, err
	}
	gs := grpc.NewServer()
	discoverypb.RegisterAggregatedDiscoveryServiceServer(gs, serverv3.NewServer(ctx, cache, nil))
	return gs, nil
}

// Spec is the `loadtest xds-static` subcommand.
func Spec() app.Spec {
	return app.Spec{
		Name: "loadtest xds-static", EnvPrefix: "LOADTEST_XDS_STATIC",
		Summary:   "tiny ADS server: one listener routing every path to one upstream (proxy benchmarks without the controlplane)",
		AdminAddr: "127.0.0.1:0",
		Usage: `Example:
  loadtest upstream --addr 127.0.0.1:18099 &
  loadtest xds-static --addr 127.0.0.1:18990 --listen-port 18980 --upstream 127.0.0.1:18099 &
  bin/proxy --node-id bench --cluster bench --xds-addr 127.0.0.1:18990 --admin-addr 127.0.0.1:18981 &
  loadtest http --url http://127.0.0.1:18980/ --target-pid $!`,
		Flags: func(fs *pflag.FlagSet) {
			fs.String("addr", "127.0.0.1:18990", "ADS listen address")
			fs.Uint32("listen-port", 18980, "port of the listener the proxy opens (on 127.0.0.1)")
			fs.String("upstream", "127.0.0.1:18099", "upstream host:port every request is routed to")
		},
		Run: func(ctx context.Context, env *app.Env) error {
			addr, _ := env.Flags.GetString("addr")
			lp, _ := env.Flags.GetUint32("listen-port")
			up, _ := env.Flags.GetString("upstream")
			if lp == 0 || lp > 65535 {
				return app.Usagef("--listen-port must be in 1..65535")
			}
			snap, err := Snapshot("1", lp, up)
			if err != nil {
				return app.Usagef("%v", err)
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return app.Usagef("--addr %s: %v", addr, err)
			}
			gs, err := NewServer(ctx, snap)
			if err != nil {
				return err
			}
			env.Log.Info("serving ADS", "addr", ln.Addr().String(), "listener", lp, "upstream", up)
			return env.Serve(lifecycle.Unit{Name: "ads", Serve: func() error { return gs.Serve(ln) },
				Shutdown: func(ctx context.Context) error { gs.Stop(); return nil }})
		},
	}
}
