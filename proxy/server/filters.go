package server

import (
	"context"
	"net/http"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// FilterFactory builds an HTTP filter from its typed_config. The filter wraps
// the router: it may answer the request itself (e.g. 429) or call next,
// possibly after editing headers or waiting. Filters run after the route is
// resolved, so RouteFromContext tells them the virtual host, route and
// cluster, as Envoy filters see through their route() callback.
type FilterFactory func(name string, typedConfig *anypb.Any) (func(next http.Handler) http.Handler, error)

// RouteInfo is the resolved route of a request, for HTTP filters.
type RouteInfo struct {
	VirtualHost *routev3.VirtualHost
	Route       *routev3.Route
	Cluster     string
	next        func(http.ResponseWriter, *http.Request)
}

type routeKey struct{}

// RouteFromContext returns the request's resolved route inside a filter, or nil.
func RouteFromContext(ctx context.Context) *RouteInfo {
	ri, _ := ctx.Value(routeKey{}).(*RouteInfo)
	return ri
}

// routerHandler is the innermost handler of a filter chain: the router.
var routerHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	if ri := RouteFromContext(r.Context()); ri != nil && ri.next != nil {
		ri.next(w, r)
	}
})

// statusWriter records the status a filter answered with.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// ResolvedRoute is RouteFromContext in the shape filter factories consume:
// the request's virtual host, route and cluster, and whether it has one.
func ResolvedRoute(r *http.Request) (*routev3.VirtualHost, *routev3.Route, string, bool) {
	ri := RouteFromContext(r.Context())
	if ri == nil {
		return nil, nil, "", false
	}
	return ri.VirtualHost, ri.Route, ri.Cluster, true
}

// HostAddrs lists the addresses of a cluster's hosts in the live config, or
// nil when the cluster is unknown (e.g. the RLS cluster a filter dials).
func (p *Proxy) HostAddrs(cluster string) []string {
	s := p.Snapshot()
	if s == nil {
		return nil
	}
	c := s.Clusters[cluster]
	if c == nil || c.Hosts() == nil {
		return nil
	}
	var out []string
	for _, h := range c.Hosts().All {
		out = append(out, h.Addr)
	}
	return out
}
