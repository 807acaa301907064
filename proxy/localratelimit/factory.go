package localratelimit

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	localv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// TypeURL is the filter's typed_config type.
const TypeURL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"

// Factory builds local rate limit filters for the proxy core. RouteOf
// returns the request's route (nil: none).
type Factory struct {
	RouteOf  func(r *http.Request) *routev3.Route
	perRoute sync.Map // *routev3.Route → *Filter: each route config has its own bucket
	n        atomic.Int64
}

// maxCachedRoutes bounds the per-route cache across config versions (a
// dropped route's bucket starts full again, as after an Envoy update).
const maxCachedRoutes = 10000

// Build has the proxy core's FilterFactory shape. The listener-level
// config applies unless the route's typed_per_filter_config[name] has a
// LocalRateLimit, which then applies with its own bucket (an override
// without token_bucket disables the limit on that route).
func (fa *Factory) Build(name string, tc *anypb.Any) (func(http.Handler) http.Handler, error) {
	var cfg localv3.LocalRateLimit
	if err := tc.UnmarshalTo(&cfg); err != nil {
		return nil, fmt.Errorf("http filter %s: %w", name, err)
	}
	f, err := New(&cfg, nil)
	if err != nil {
		return nil, fmt.Errorf("http filter %s: %w", name, err)
	}
	return func(next http.Handler) http.Handler {
		base := f.Handler(next)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if fa.RouteOf != nil {
				if rt := fa.RouteOf(r); rt != nil && rt.GetTypedPerFilterConfig()[name] != nil {
					fa.override(name, rt).Handler(next).ServeHTTP(w, r)
					return
				}
			}
			base.ServeHTTP(w, r)
		})
	}, nil
}

func (fa *Factory) override(name string, rt *routev3.Route) *Filter {
	if v, ok := fa.perRoute.Load(rt); ok {
		return v.(*Filter)
	}
	if fa.n.Add(1) > maxCachedRoutes {
		fa.perRoute.Clear()
		fa.n.Store(1)
	}
	var f *Filter
	var cfg localv3.LocalRateLimit
	if err := rt.GetTypedPerFilterConfig()[name].UnmarshalTo(&cfg); err == nil {
		f, _ = New(&cfg, nil) // invalid or empty: no limit on this route
	}
	v, _ := fa.perRoute.LoadOrStore(rt, f)
	return v.(*Filter)
}
