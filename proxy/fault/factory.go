package fault

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// TypeURL is the filter's typed_config type.
const TypeURL = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"

// Factory builds fault filters from typed_config for the proxy core.
// RouteOf returns the request's route and upstream cluster (nil route: none).
type Factory struct {
	RouteOf  func(r *http.Request) (*routev3.Route, string)
	perRoute sync.Map // *routev3.Route → *Filter (nil: no override)
	n        atomic.Int64
}

// maxCachedRoutes bounds the per-route cache across config versions.
const maxCachedRoutes = 10000

// Build has the proxy core's FilterFactory shape. A route's
// typed_per_filter_config[name] HTTPFault replaces the filter's config.
func (fa *Factory) Build(name string, tc *anypb.Any) (func(http.Handler) http.Handler, error) {
	var cfg faultv3.HTTPFault
	if err := tc.UnmarshalTo(&cfg); err != nil {
		return nil, fmt.Errorf("http filter %s: %w", name, err)
	}
	f, err := New(&cfg)
	if err != nil {
		return nil, fmt.Errorf("http filter %s: %w", name, err)
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			flt, cluster := f, ""
			if fa.RouteOf != nil {
				var rt *routev3.Route
				rt, cluster = fa.RouteOf(r)
				if o := fa.override(name, rt); o != nil {
					flt = o
				}
			}
			flt.Handler(next, func(*http.Request) string { return cluster }).ServeHTTP(w, r)
		})
	}, nil
}

func (fa *Factory) override(name string, rt *routev3.Route) *Filter {
	if rt == nil || rt.GetTypedPerFilterConfig()[name] == nil {
		return nil
	}
	if v, ok := fa.perRoute.Load(rt); ok {
		return v.(*Filter)
	}
	if fa.n.Add(1) > maxCachedRoutes {
		fa.perRoute.Clear()
		fa.n.Store(1)
	}
	var f *Filter
	var cfg faultv3.HTTPFault
	if err := rt.GetTypedPerFilterConfig()[name].UnmarshalTo(&cfg); err == nil {
		f, _ = New(&cfg) // an invalid override leaves the filter's config
	}
	v, _ := fa.perRoute.LoadOrStore(rt, f)
	return v.(*Filter)
}
