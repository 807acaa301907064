package fault

import (
	"net/http"
	"net/http/httptest"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

func TestFactoryWithPerRouteOverride(t *testing.T) {
	override, _ := anypb.New(&faultv3.HTTPFault{Abort: abort(418, 100)})
	teapot := &routev3.Route{Name: "teapot", TypedPerFilterConfig: map[string]*anypb.Any{"fault": override}}
	plain := &routev3.Route{Name: "plain"}
	fa := &Factory{RouteOf: func(r *http.Request) (*routev3.Route, string) {
		if r.URL.Path == "/teapot" {
			return teapot, "api"
		}
		return plain, "api"
	}}
	tc, _ := anypb.New(&faultv3.HTTPFault{Abort: abort(503, 100), UpstreamCluster: "api"})
	wrap, err := fa.Build("fault", tc)
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewServer(wrap(http.NotFoundHandler()))
	defer s.Close()
	if r, _ := do(t, s.URL+"/x", nil); r.StatusCode != 503 {
		t.Fatalf("filter config: %d", r.StatusCode)
	}
	if r, _ := do(t, s.URL+"/teapot", nil); r.StatusCode != 418 {
		t.Fatalf("per-route override: %d", r.StatusCode)
	}
	bad, _ := anypb.New(&routev3.Route{})
	if _, err := fa.Build("fault", bad); err == nil {
		t.Fatal("wrong typed_config accepted")
	}
}
