package server_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"

	mt "github.com/sidemesh/sidemesh/proxy/internal/meshtest"
	"github.com/sidemesh/sidemesh/proxy/server"
	"github.com/sidemesh/sidemesh/proxy/stats"
	"github.com/sidemesh/sidemesh/proxy/xds"
)

const faultType = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"

// listenerWithFilter puts one extra HTTP filter before the router.
func listenerWithFilter(t *testing.T, name string, port uint32) *listenerv3.Listener {
	l := mt.Listener(name, port, "r")
	var h hcmv3.HttpConnectionManager
	if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&h); err != nil {
		t.Fatal(err)
	}
	fc, _ := anypb.New(&faultv3.HTTPFault{})
	h.HttpFilters = append([]*hcmv3.HttpFilter{{Name: "test.filter", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: fc}}}, h.HttpFilters...)
	a, _ := anypb.New(&h)
	l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
	return l
}

func TestHTTPFilterHook(t *testing.T) {
	up := mt.StartUpstream(t, "up")
	port := mt.FreePort(t)
	fail := false
	px := server.New(server.Options{Metrics: stats.New(nil), DrainTimeout: time.Second, Filters: map[string]server.FilterFactory{
		faultType: func(name string, cfg *anypb.Any) (func(http.Handler) http.Handler, error) {
			if fail {
				return nil, errors.New("bad filter config")
			}
			return func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					ri := server.RouteFromContext(r.Context())
					if r.Header.Get("X-Deny") != "" {
						w.WriteHeader(http.StatusTooManyRequests)
						return
					}
					r.Header.Set("X-Added", ri.Route.GetName()+"->"+ri.Cluster)
					next.ServeHTTP(w, r)
				})
			}, nil
		},
	}})
	defer px.Shutdown(context.Background())
	res := xds.NewResources()
	res.Listeners = map[string]*listenerv3.Listener{"l": listenerWithFilter(t, "l", port)}
	res.Routes = map[string]*routev3.RouteConfiguration{"r": mt.RouteConfig("r", mt.RouteTo("/", "svc"))}
	res.Clusters = map[string]*clusterv3.Cluster{"svc": mt.EDSCluster("svc")}
	res.Endpoints = map[string]*endpointv3.ClusterLoadAssignment{"svc": mt.CLA("svc", mt.EP{U: up})}
	if err := px.Apply(context.Background(), res); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d/", port)
	code, _, r := mt.Get(t, base, nil)
	if code != 200 || r.Header.Get("X-Seen-Added") != "/->svc" {
		t.Fatalf("filter did not see the route or did not reach the router: %d %q", code, r.Header.Get("X-Seen-Added"))
	}
	before := up.Hits.Load()
	if code, _, _ := mt.Get(t, base, map[string]string{"X-Deny": "1"}); code != 429 {
		t.Fatalf("filter local reply: %d", code)
	}
	if up.Hits.Load() != before {
		t.Fatalf("a denied request reached the upstream")
	}
	fail = true
	if err := px.Apply(context.Background(), res); err == nil || !strings.Contains(err.Error(), `http_filters[0] "test.filter": bad filter config`) {
		t.Fatalf("filter build error should NACK naming the filter: %v", err)
	}
}
