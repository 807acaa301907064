package ratelimit

import (
	"net/http"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rlcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func reqHeaders(h, key string, skip bool) *routev3.RateLimit_Action {
	return &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_RequestHeaders_{RequestHeaders: &routev3.RateLimit_Action_RequestHeaders{HeaderName: h, DescriptorKey: key, SkipIfAbsent: skip}}}
}

func genericKey(key, val string) *routev3.RateLimit_Action {
	return &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_GenericKey_{GenericKey: &routev3.RateLimit_Action_GenericKey{DescriptorKey: key, DescriptorValue: val}}}
}

func headerMatch(val string, expect *wrapperspb.BoolValue, hms ...*routev3.HeaderMatcher) *routev3.RateLimit_Action {
	return &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_HeaderValueMatch_{HeaderValueMatch: &routev3.RateLimit_Action_HeaderValueMatch{DescriptorValue: val, ExpectMatch: expect, Headers: hms}}}
}

func limits(entries ...[]*routev3.RateLimit_Action) []*routev3.RateLimit {
	var out []*routev3.RateLimit
	for _, a := range entries {
		out = append(out, &routev3.RateLimit{Actions: a})
	}
	return out
}

func mustCompile(t testing.TB, l []*routev3.RateLimit) *Policy {
	t.Helper()
	p, err := Compile(l)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// render turns descriptors into "k=v,k=v|k=v" for comparison.
func render(ds []*rlcommonv3.RateLimitDescriptor) string {
	var parts []string
	for _, d := range ds {
		var es []string
		for _, e := range d.GetEntries() {
			es = append(es, e.GetKey()+"="+e.GetValue())
		}
		parts = append(parts, strings.Join(es, ","))
	}
	return strings.Join(parts, "|")
}

func TestDescriptorsLikeEnvoy(t *testing.T) {
	src := &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_SourceCluster_{SourceCluster: &routev3.RateLimit_Action_SourceCluster{}}}
	dst := &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_DestinationCluster_{DestinationCluster: &routev3.RateLimit_Action_DestinationCluster{}}}
	remote := &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_RemoteAddress_{RemoteAddress: &routev3.RateLimit_Action_RemoteAddress{}}}
	masked := &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_MaskedRemoteAddress_{MaskedRemoteAddress: &routev3.RateLimit_Action_MaskedRemoteAddress{V4PrefixMaskLen: wrapperspb.UInt32(16)}}}
	isAdmin := &routev3.HeaderMatcher{Name: "x-role", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "admin"}}}}
	hasTrace := &routev3.HeaderMatcher{Name: "x-trace", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}
	attrs := &RequestAttrs{RemoteAddr: "10.1.2.3:5555", LocalCluster: "web", DestinationCluster: "api"}
	cases := []struct {
		name    string
		limits  []*routev3.RateLimit
		headers map[string]string
		want    string
	}{
		{"header present", limits([]*routev3.RateLimit_Action{reqHeaders("x-user", "user", false)}), map[string]string{"X-User": "alice"}, "user=alice"},
		{"header absent: no descriptor", limits([]*routev3.RateLimit_Action{reqHeaders("x-user", "user", false), genericKey("", "g")}), nil, ""},
		{"skip_if_absent: entry dropped, descriptor kept", limits([]*routev3.RateLimit_Action{genericKey("", "g"), reqHeaders("x-user", "user", true)}), nil, "generic_key=g"},
		{"one entry fails, the other entry still sends", limits(
			[]*routev3.RateLimit_Action{reqHeaders("x-user", "user", false)},
			[]*routev3.RateLimit_Action{src, dst}), nil, "source_cluster=web,destination_cluster=api"},
		{"remote and masked", limits([]*routev3.RateLimit_Action{remote}, []*routev3.RateLimit_Action{masked}), nil, "remote_address=10.1.2.3|masked_remote_address=10.1.0.0/16"},
		{"header_value_match matches", limits([]*routev3.RateLimit_Action{headerMatch("admins", nil, isAdmin, hasTrace)}), map[string]string{"X-Role": "admin", "X-Trace": "1"}, "header_match=admins"},
		{"header_value_match needs all headers", limits([]*routev3.RateLimit_Action{headerMatch("admins", nil, isAdmin, hasTrace)}), map[string]string{"X-Role": "admin"}, ""},
		{"expect_match false", limits([]*routev3.RateLimit_Action{headerMatch("others", wrapperspb.Bool(false), isAdmin)}), map[string]string{"X-Role": "guest"}, "header_match=others"},
		{"expect_match false on a match", limits([]*routev3.RateLimit_Action{headerMatch("others", wrapperspb.Bool(false), isAdmin)}), map[string]string{"X-Role": "admin"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tc.headers {
				h.Set(k, v)
			}
			if got := render(mustCompile(t, tc.limits).Descriptors(0, h, attrs, nil)); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestStagesAndVirtualHostLimits(t *testing.T) {
	route := []*routev3.RateLimit{{Stage: wrapperspb.UInt32(1), Actions: []*routev3.RateLimit_Action{genericKey("k", "stage1")}}}
	vh := mustCompile(t, limits([]*routev3.RateLimit_Action{genericKey("k", "vh")}))
	f := &Filter{stage: 0}
	r, _ := http.NewRequest("GET", "http://x/", nil)
	// The route's only limit is stage 1: at stage 0 nothing from the
	// route, but the route has a policy, so the vhost's does not apply.
	if got := render(f.Descriptors(r, RouteInfo{Route: mustCompile(t, route), VirtualHost: vh})); got != "" {
		t.Fatalf("stage 0: %q", got)
	}
	f.stage = 1
	if got := render(f.Descriptors(r, RouteInfo{Route: mustCompile(t, route), VirtualHost: vh})); got != "k=stage1" {
		t.Fatalf("stage 1: %q", got)
	}
	if got := render(f.Descriptors(r, RouteInfo{Route: mustCompile(t, route), VirtualHost: vh, IncludeVH: true})); got != "k=stage1" {
		t.Fatalf("include vh at stage 1 (vh limit is stage 0): %q", got)
	}
	f.stage = 0
	if got := render(f.Descriptors(r, RouteInfo{VirtualHost: vh})); got != "k=vh" {
		t.Fatalf("no route policy: vhost applies: %q", got)
	}
}

func TestCompileRejectsUnsupported(t *testing.T) {
	_, err := Compile([]*routev3.RateLimit{{Actions: []*routev3.RateLimit_Action{{ActionSpecifier: &routev3.RateLimit_Action_QueryParameters_{QueryParameters: &routev3.RateLimit_Action_QueryParameters{QueryParameterName: "q", DescriptorKey: "q"}}}}}})
	if err == nil || !strings.Contains(err.Error(), "rate_limits[0].actions[0]") || !strings.Contains(err.Error(), "not supported") {
		t.Fatalf("err = %v", err)
	}
	_, err = Compile([]*routev3.RateLimit{{}})
	if err == nil || !strings.Contains(err.Error(), "Actions") {
		t.Fatalf("empty actions: err = %v", err)
	}
}

// FuzzPolicy: arbitrary RateLimit protos and header values compile or fail
// cleanly and never panic while building descriptors.
func FuzzPolicy(f *testing.F) {
	seed, _ := proto.Marshal(&routev3.RateLimit{Actions: []*routev3.RateLimit_Action{reqHeaders("x-user", "user", true), genericKey("", "v")}})
	f.Add(seed, "alice", "10.0.0.1:1")
	f.Add([]byte{0x12, 0x02, 0x0a, 0x00}, "", "::1")
	f.Fuzz(func(t *testing.T, b []byte, hv, remote string) {
		var rl routev3.RateLimit
		if proto.Unmarshal(b, &rl) != nil {
			return
		}
		p, err := Compile([]*routev3.RateLimit{&rl})
		if err != nil {
			return
		}
		h := http.Header{"X-User": {hv}, "X-Role": {hv}}
		p.Descriptors(rl.GetStage().GetValue(), h, &RequestAttrs{RemoteAddr: remote}, nil)
	})
}
