package bootstrap

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

func TestBootstrapRoundTripsStrictly(t *testing.T) {
	b, err := Build(Options{
		NodeID: "web-envoy", Role: "sidecar", Cluster: "web", Zone: "zone-a",
		XDSAddr: "127.0.0.1:18000", HDSAddr: "127.0.0.1:18082", RLSAddr: "rls.mesh:18081", AdminAddr: "127.0.0.1:9901", Delta: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	y, err := YAML(b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(y)
	if err != nil {
		t.Fatalf("%v\n%s", err, y)
	}
	if got.GetNode().GetId() != "web-envoy" || got.GetNode().GetMetadata().GetFields()["role"].GetStringValue() != "sidecar" || got.GetNode().GetLocality().GetZone() != "zone-a" {
		t.Errorf("node %v", got.GetNode())
	}
	ads := got.GetDynamicResources().GetAdsConfig()
	if ads.GetApiType() != corev3.ApiConfigSource_DELTA_GRPC || ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != XDSCluster {
		t.Errorf("ads %v", ads)
	}
	if got.GetDynamicResources().GetLdsConfig().GetAds() == nil || got.GetDynamicResources().GetCdsConfig().GetAds() == nil {
		t.Error("lds/cds not over ADS")
	}
	if got.GetHdsConfig().GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != HDSCluster {
		t.Errorf("hds %v", got.GetHdsConfig())
	}
	var names []string
	for _, c := range got.GetStaticResources().GetClusters() {
		names = append(names, c.GetName())
	}
	if strings.Join(names, ",") != "xds_cluster,hds_cluster,rls_cluster" {
		t.Errorf("static clusters %v", names)
	}
	if got.GetAdmin().GetAddress().GetSocketAddress().GetPortValue() != 9901 {
		t.Errorf("admin %v", got.GetAdmin())
	}
}

func TestBootstrapRejects(t *testing.T) {
	for _, o := range []Options{
		{Role: "sidecar", XDSAddr: "127.0.0.1:1"},
		{NodeID: "x", Role: "gateway", XDSAddr: "127.0.0.1:1"},
		{NodeID: "x", Role: "ingress", XDSAddr: "nope"},
		{NodeID: "x", Role: "ingress", XDSAddr: "127.0.0.1:1", HDSAddr: "h:0"},
	} {
		if _, err := Build(o); err == nil {
			t.Errorf("no error for %+v", o)
		}
	}
	if _, err := Parse([]byte("node: {id: x}\nbogus_field: 1\n")); err == nil || !strings.Contains(err.Error(), "bogus_field") {
		t.Errorf("strict parse: %v", err)
	}
}
