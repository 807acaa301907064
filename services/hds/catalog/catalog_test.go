package catalog

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
)

func lbe(addr string, port uint32, disabled bool) *endpointv3.LbEndpoint {
	ep := &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}}
	if disabled {
		ep.HealthCheckConfig = &endpointv3.Endpoint_HealthCheckConfig{DisableActiveHealthCheck: true}
	}
	return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: ep}}
}

func TestFromLoadAssignment(t *testing.T) {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: "web", Endpoints: []*endpointv3.LocalityLbEndpoints{
		{Locality: &corev3.Locality{Zone: "z1"}, LbEndpoints: []*endpointv3.LbEndpoint{
			lbe("10.0.0.1", 80, false), lbe("10.0.0.2", 80, true), lbe("web.internal", 80, false), lbe("10.0.0.1", 80, false),
		}},
	}}
	eps, skipped := FromLoadAssignment("web", cla)
	if len(eps) != 1 || eps[0].Key.String() != "web/10.0.0.1:80" || eps[0].Zone() != "z1" {
		t.Fatalf("endpoints %+v", eps)
	}
	if len(skipped) != 1 || !strings.Contains(skipped[0].Error(), "web.internal") {
		t.Fatalf("skipped %v: a hostname must be reported, a disabled endpoint silently left out", skipped)
	}
	if eps, _ := FromLoadAssignment("x", nil); len(eps) != 0 {
		t.Fatal("nil assignment")
	}
}

func TestNormalizeRejectsWhatEnvoyWouldCrashOn(t *testing.T) {
	if _, _, err := NormalizeHealthCheck(nil); err == nil {
		t.Fatal("nil check accepted")
	}
	if _, _, err := NormalizeHealthCheck(&corev3.HealthCheck{}); err == nil {
		t.Fatal("check without timeout/interval/thresholds/checker accepted")
	}
}
