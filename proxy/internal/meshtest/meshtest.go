// Package meshtest runs a real go-control-plane ADS server and real HTTP
// upstreams for the proxy's end-to-end tests, with builders for the Envoy
// resources the controlplane sends.
package meshtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// cp is a real go-control-plane ADS server fed from the test.
type CP struct {
	Addr    string
	cache   cachev3.SnapshotCache
	version atomic.Int64
	mu      sync.Mutex
	nacks   []string
	cb      serverv3.CallbackFuncs
	stop    func()
}

func StartCP(t testing.TB) *CP {
	t.Helper()
	c := &CP{cache: cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)}
	cb := serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, r *discoveryv3.DiscoveryRequest) error {
			if r.GetErrorDetail() != nil {
				c.mu.Lock()
				c.nacks = append(c.nacks, r.GetErrorDetail().GetMessage())
				c.mu.Unlock()
			}
			return nil
		},
		StreamDeltaRequestFunc: func(_ int64, r *discoveryv3.DeltaDiscoveryRequest) error {
			if r.GetErrorDetail() != nil {
				c.mu.Lock()
				c.nacks = append(c.nacks, r.GetErrorDetail().GetMessage())
				c.mu.Unlock()
			}
			return nil
		},
	}
	c.cb = cb
	c.serve(t, "127.0.0.1:0")
	return c
}

func (c *CP) serve(t testing.TB, addr string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv := serverv3.NewServer(ctx, c.cache, c.cb)
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	var ln net.Listener
	var err error
	for i := 0; i < 100; i++ { // the old socket may linger for a moment
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	c.Addr = ln.Addr().String()
	go gs.Serve(ln)
	c.stop = func() { gs.Stop(); cancel() }
	t.Cleanup(c.stop)
}

// Stop takes the control plane away (its cache is kept).
func (c *CP) Stop() { c.stop() }

// Start brings a stopped control plane back on the same address.
func (c *CP) Start(t testing.TB) { c.serve(t, c.Addr) }

func (c *CP) NackList() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.nacks...)
}

// mesh is a resource set the test edits and pushes.
type Mesh struct {
	Listeners []types.Resource
	Routes    []types.Resource
	Clusters  []types.Resource
	Endpoints []types.Resource
}

func (c *CP) Push(t testing.TB, m Mesh) {
	t.Helper()
	v := strconv.FormatInt(c.version.Add(1), 10)
	snap, err := cachev3.NewSnapshot(v, map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: m.Listeners, resourcev3.RouteType: m.Routes,
		resourcev3.ClusterType: m.Clusters, resourcev3.EndpointType: m.Endpoints,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cache.SetSnapshot(context.Background(), "test-node", snap); err != nil {
		t.Fatal(err)
	}
}

// upstream is a real HTTP server with scriptable behaviour.
type Upstream struct {
	Name     string
	Addr     string
	Port     uint32
	Hits     atomic.Int64
	FailNext atomic.Int64 // answer 503 this many times
	Delay    atomic.Int64 // nanoseconds before answering
	Status   atomic.Int64 // non-zero: always answer this
	srv      *http.Server
}

func StartUpstream(t testing.TB, name string) *Upstream {
	t.Helper()
	u := &Upstream{Name: name}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.Addr = ln.Addr().String()
	u.Port = uint32(ln.Addr().(*net.TCPAddr).Port)
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	u.srv = &http.Server{Protocols: p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.Hits.Add(1)
		io.Copy(io.Discard, r.Body)
		if d := u.Delay.Load(); d > 0 {
			select {
			case <-time.After(time.Duration(d)):
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("X-Upstream", u.Name)
		w.Header().Set("X-Seen-Path", r.URL.Path)
		w.Header().Set("X-Seen-Host", r.Host)
		w.Header().Set("X-Seen-Request-Id", r.Header.Get("X-Request-Id"))
		w.Header().Set("X-Seen-Timeout", r.Header.Get("X-Envoy-Expected-Rq-Timeout-Ms"))
		w.Header().Set("X-Seen-Traceparent", r.Header.Get("Traceparent"))
		w.Header().Set("X-Seen-Added", r.Header.Get("X-Added"))
		if u.FailNext.Add(-1) >= 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if s := u.Status.Load(); s != 0 {
			w.WriteHeader(int(s))
			return
		}
		fmt.Fprintf(w, "hello from %s\n", u.Name)
	})}
	go u.srv.Serve(ln)
	t.Cleanup(func() { u.srv.Close() })
	return u
}

// Resource builders, in the shapes the controlplane sends.

func Listener(name string, port uint32, rds string) *listenerv3.Listener {
	router, _ := anypb.New(&routerv3.Router{})
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: rds,
			ConfigSource: &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}},
		HttpFilters:    []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
		UpgradeConfigs: []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}},
	}
	a, _ := anypb.New(hcm)
	return &listenerv3.Listener{Name: name,
		Address:      &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}}}}}}
}

func EDSCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{Name: name, ConnectTimeout: durationpb.New(time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3,
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}}
}

type EP struct {
	U      *Upstream
	Health corev3.HealthStatus
	Weight uint32
	Port   uint32 // used when U is nil
}

func CLA(name string, eps ...EP) *endpointv3.ClusterLoadAssignment {
	var lbs []*endpointv3.LbEndpoint
	for _, e := range eps {
		port := e.Port
		if e.U != nil {
			port = e.U.Port
		}
		lb := &endpointv3.LbEndpoint{HealthStatus: e.Health,
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
				SocketAddress: &corev3.SocketAddress{Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}}}}
		if e.Weight > 0 {
			lb.LoadBalancingWeight = wrapperspb.UInt32(e.Weight)
		}
		lbs = append(lbs, lb)
	}
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
		Locality: &corev3.Locality{Zone: "zone-a"}, LoadBalancingWeight: wrapperspb.UInt32(1), LbEndpoints: lbs}}}
}

func RouteTo(prefix, cluster string) *routev3.Route {
	return &routev3.Route{Name: prefix, Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: prefix}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}}}
}

func RouteConfig(name string, routes ...*routev3.Route) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{{Name: "all", Domains: []string{"*"}, Routes: routes}}}
}

func FreePort(t testing.TB) uint32 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint32(ln.Addr().(*net.TCPAddr).Port)
}

// eventually polls cond every 20 ms for up to 20 s.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Client is a shared keep-alive client.
var Client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 20 * time.Second}

// get does one request and returns status, the X-Upstream header and the response.
func Get(t testing.TB, url string, hdr map[string]string) (int, string, *http.Response) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	res, err := Client.Do(req)
	if err != nil {
		return 0, "", nil
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.StatusCode, res.Header.Get("X-Upstream"), res
}

// StaticCluster is a STATIC cluster with its endpoints inline (no EDS).
func StaticCluster(name string, eps ...EP) *clusterv3.Cluster {
	c := EDSCluster(name)
	c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
	c.EdsClusterConfig = nil
	c.LoadAssignment = CLA(name, eps...)
	return c
}
