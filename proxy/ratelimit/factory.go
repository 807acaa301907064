package ratelimit

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/protobuf/types/known/anypb"
)

// TypeURL is the filter's typed_config type.
const TypeURL = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"

const perRouteTypeURL = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute"

// RouteOf returns the resolved route of a request (the proxy core's
// RouteFromContext); ok=false when the request has none.
type RouteOf func(r *http.Request) (vh *routev3.VirtualHost, rt *routev3.Route, cluster string, ok bool)

// FactoryOptions connect the filter to the proxy core.
type FactoryOptions struct {
	// Ctx ends the RLS endpoint watchers and closes the connections.
	Ctx context.Context
	// Endpoints lists a cluster's endpoints (host:port) as the core knows
	// them from EDS; polled every PollInterval (default 1 s).
	Endpoints    func(cluster string) []string
	PollInterval time.Duration
	RouteOf      RouteOf
	LocalCluster string
	Registerer   prometheus.Registerer
	Log          *slog.Logger
	// Unary turns off sidemesh's batch stream: every request is one unary
	// ShouldRateLimit, exactly as Envoy calls RLS.
	Unary bool
	// Batch tunes the batch stream (ignored with Unary).
	Batch BatchOptions
}

// Factory builds filters from typed_config and shares one RLS connection
// per RLS cluster among them.
type Factory struct {
	o     FactoryOptions
	mu    sync.Mutex
	conns map[string]*rlsConn
	// routes caches each route's compiled policies, keyed by the route
	// proto (immutable within a config version).
	routes  sync.Map // *routev3.Route → *routeEntry
	nRoutes atomic.Int64
}

// maxCachedRoutes bounds the route cache: route protos of old config
// versions are never looked up again, so a full cache is simply dropped.
const maxCachedRoutes = 10000

type routeEntry struct {
	info RouteInfo
	err  error
}

// NewFactory returns a factory; Build has the proxy core's FilterFactory shape.
func NewFactory(o FactoryOptions) *Factory {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.PollInterval <= 0 {
		o.PollInterval = time.Second
	}
	if o.Ctx == nil {
		o.Ctx = context.Background()
	}
	return &Factory{o: o, conns: map[string]*rlsConn{}}
}

// Build turns one envoy.filters.http.ratelimit typed_config into a handler wrapper.
func (fa *Factory) Build(name string, tc *anypb.Any) (func(http.Handler) http.Handler, error) {
	var cfg ratelimitv3.RateLimit
	if err := tc.UnmarshalTo(&cfg); err != nil {
		return nil, fmt.Errorf("http filter %s: %w", name, err)
	}
	cluster := RLSCluster(&cfg)
	if cluster == "" {
		return nil, fmt.Errorf("http filter %s: rate_limit_service.grpc_service.envoy_grpc.cluster_name is required", name)
	}
	client, err := fa.client(cluster)
	if err != nil {
		return nil, fmt.Errorf("http filter %s: %w", name, err)
	}
	f, err := New(&cfg, client, Options{LocalCluster: fa.o.LocalCluster, Registerer: fa.o.Registerer, Log: fa.o.Log})
	if err != nil {
		return nil, fmt.Errorf("http filter %s: %w", name, err)
	}
	return func(next http.Handler) http.Handler {
		return f.Handler(next, func(r *http.Request) RouteInfo { return fa.routeInfo(name, r) })
	}, nil
}

func (fa *Factory) routeInfo(name string, r *http.Request) RouteInfo {
	if fa.o.RouteOf == nil {
		return RouteInfo{}
	}
	vh, rt, cluster, ok := fa.o.RouteOf(r)
	if !ok || rt == nil {
		return RouteInfo{}
	}
	e, found := fa.routes.Load(rt)
	if !found {
		if fa.nRoutes.Add(1) > maxCachedRoutes {
			fa.routes.Clear()
			fa.nRoutes.Store(1)
		}
		e, _ = fa.routes.LoadOrStore(rt, fa.compileRoute(name, vh, rt))
	}
	ent := e.(*routeEntry)
	if ent.err != nil {
		return RouteInfo{}
	}
	ri := ent.info
	ri.DestinationCluster = cluster
	return ri
}

func (fa *Factory) compileRoute(name string, vh *routev3.VirtualHost, rt *routev3.Route) *routeEntry {
	ent := &routeEntry{}
	var err error
	ent.info.Route, err = Compile(rt.GetRoute().GetRateLimits())
	if err == nil {
		ent.info.VirtualHost, err = Compile(vh.GetRateLimits())
	}
	ent.info.IncludeVH = rt.GetRoute().GetIncludeVhRateLimits().GetValue()
	if pr := rt.GetTypedPerFilterConfig()[name]; err == nil && pr != nil && pr.GetTypeUrl() == perRouteTypeURL {
		var p ratelimitv3.RateLimitPerRoute
		if err = pr.UnmarshalTo(&p); err == nil {
			ent.info, err = ent.info.WithPerRoute(&p)
		}
	}
	if err != nil {
		ent.err = err
		fa.o.Log.Warn("rate limits of route ignored", "route", rt.GetName(), "err", err)
	}
	return ent
}

// client returns the shared RLS client of cluster, dialing it once and
// keeping its addresses in step with Endpoints.
func (fa *Factory) client(cluster string) (RLSClient, error) {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	if c, ok := fa.conns[cluster]; ok {
		return c, nil
	}
	r, conn, err := dialRLS(cluster, nil)
	if err != nil {
		return nil, err
	}
	c := &rlsConn{fa: fa, cluster: cluster, r: r, RLSClient: rlsv3.NewRateLimitServiceClient(conn)}
	if !fa.o.Unary {
		bo := fa.o.Batch
		if bo.Log == nil {
			bo.Log = fa.o.Log.With("rls_cluster", cluster)
		}
		if fa.o.Registerer != nil && bo.Metrics == nil {
			m, err := NewBatchMetrics(fa.o.Registerer, cluster)
			if err != nil {
				conn.Close()
				return nil, err
			}
			bo.Metrics = m
		}
		c.RLSClient = NewBatchClient(fa.o.Ctx, conn, bo)
	}
	c.refresh()
	go c.watch(conn)
	fa.conns[cluster] = c
	return c, nil
}

// rlsConn is one RLS cluster's shared connection.
type rlsConn struct {
	RLSClient
	fa      *Factory
	cluster string
	r       *manual.Resolver
	mu      sync.Mutex
	last    []string
	empty   atomic.Bool
}

// ShouldRateLimitWithin bounds the call by timeout, natively when the
// client can (the batch client), else by a derived context.
func (c *rlsConn) ShouldRateLimitWithin(ctx context.Context, in *rlsv3.RateLimitRequest, timeout time.Duration, opts ...grpc.CallOption) (*rlsv3.RateLimitResponse, error) {
	if c.empty.Load() {
		c.refresh()
	}
	if dc, ok := c.RLSClient.(deadlineClient); ok {
		return dc.ShouldRateLimitWithin(ctx, in, timeout, opts...)
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	return c.RLSClient.ShouldRateLimit(ctx, in, opts...)
}

// ShouldRateLimit refreshes the endpoints first while none are known: the
// RLS cluster usually arrives in the same config push as the filter.
func (c *rlsConn) ShouldRateLimit(ctx context.Context, in *rlsv3.RateLimitRequest, opts ...grpc.CallOption) (*rlsv3.RateLimitResponse, error) {
	return c.ShouldRateLimitWithin(ctx, in, 0, opts...)
}

func (c *rlsConn) refresh() {
	var addrs []string
	if c.fa.o.Endpoints != nil {
		addrs = c.fa.o.Endpoints(c.cluster)
	}
	slices.Sort(addrs)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.empty.Store(len(addrs) == 0)
	if c.last != nil && slices.Equal(addrs, c.last) {
		return
	}
	c.last = append([]string{}, addrs...)
	c.fa.o.Log.Info("rls endpoints", "cluster", c.cluster, "addrs", addrs)
	c.r.UpdateState(resolverState(addrs))
}

func (c *rlsConn) watch(conn *grpc.ClientConn) {
	defer conn.Close()
	t := time.NewTicker(c.fa.o.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-c.fa.o.Ctx.Done():
			return
		case <-t.C:
			c.refresh()
		}
	}
}

// Flow-control windows of RLS connections: far above any one answer or
// batch message, and room for many concurrent answers per connection.
const (
	rlsStreamWindow = 1 << 20
	rlsConnWindow   = 16 << 20
)

// dialRLS opens one client connection over addrs (round robin, one
// HTTP/2 connection per address); the resolver takes later changes.
func dialRLS(name string, addrs []string, opts ...grpc.DialOption) (*manual.Resolver, *grpc.ClientConn, error) {
	r := manual.NewBuilderWithScheme("sidemesh-rls")
	r.InitialState(resolverState(addrs))
	all := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
		// Static windows turn off grpc-go's BDP estimation, whose PINGs
		// (one per answer at modest rates) cost the RLS a write and a read
		// each; rate-limit messages never need a window grown for bulk data.
		grpc.WithStaticStreamWindowSize(rlsStreamWindow), grpc.WithStaticConnWindowSize(rlsConnWindow),
	}, opts...)
	conn, err := grpc.NewClient(r.Scheme()+":///"+name, all...)
	if err != nil {
		return nil, nil, err
	}
	conn.Connect()
	return r, conn, nil
}

func resolverState(addrs []string) resolver.State {
	st := resolver.State{}
	for _, a := range addrs {
		st.Addresses = append(st.Addresses, resolver.Address{Addr: a})
	}
	return st
}
