package localratelimit

import (
	"net/http"
	"net/http/httptest"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	localv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

func TestFactoryPerRouteBuckets(t *testing.T) {
	tight, _ := anypb.New(conf(1, 100, 100))
	off, _ := anypb.New(&localv3.LocalRateLimit{StatPrefix: "off"})
	routes := map[string]*routev3.Route{
		"/tight": {Name: "tight", TypedPerFilterConfig: map[string]*anypb.Any{"lrl": tight}},
		"/off":   {Name: "off", TypedPerFilterConfig: map[string]*anypb.Any{"lrl": off}},
		"/":      {Name: "default"},
	}
	fa := &Factory{RouteOf: func(r *http.Request) *routev3.Route { return routes[r.URL.Path] }}
	tc, _ := anypb.New(conf(2, 100, 100))
	wrap, err := fa.Build("lrl", tc)
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewServer(wrap(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})))
	defer s.Close()
	codes := func(path string, n int) []int {
		var out []int
		for range n {
			out = append(out, get(t, s.URL+path, "").StatusCode)
		}
		return out
	}
	if c := codes("/tight", 2); c[0] != 200 || c[1] != 429 {
		t.Fatalf("per-route bucket of 1: %v", c)
	}
	if c := codes("/", 3); c[0] != 200 || c[1] != 200 || c[2] != 429 {
		t.Fatalf("filter bucket of 2 (not shared with /tight): %v", c)
	}
	if c := codes("/off", 3); c[2] != 200 {
		t.Fatalf("override without token_bucket should not limit: %v", c)
	}
}
