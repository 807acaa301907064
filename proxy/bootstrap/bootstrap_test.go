package bootstrap

import (
	"strings"
	"testing"
)

const adsBootstrap = `node: {id: web-sidecar, cluster: web, locality: {zone: zone-a}, metadata: {role: sidecar}}
dynamic_resources:
  ads_config: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    load_assignment:
      cluster_name: xds
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18000}}}}]}]
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 15100}}}
`

func TestParseADS(t *testing.T) {
	c, err := Parse("b.yaml", []byte(adsBootstrap))
	if err != nil {
		t.Fatal(err)
	}
	if c.XDSAddr != "127.0.0.1:18000" || !c.SotW || c.Node.GetId() != "web-sidecar" || c.Node.GetLocality().GetZone() != "zone-a" || c.AdminAddr != "127.0.0.1:15100" {
		t.Fatalf("parsed %+v", c)
	}
	if c.HDSAddr != "" {
		t.Fatalf("HDS address without hds_config: %q", c.HDSAddr)
	}
	h, err := Parse("b.yaml", []byte(adsBootstrap+"hds_config: {api_type: GRPC, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}\n"))
	if err != nil || h.HDSAddr != "127.0.0.1:18000" {
		t.Fatalf("hds_config: %v %+v", err, h)
	}
	if c.Node.GetMetadata().GetFields()["role"].GetStringValue() != "sidecar" {
		t.Fatalf("metadata lost: %v", c.Node.GetMetadata())
	}
}

func TestParseErrorsNameTheProblem(t *testing.T) {
	for name, tc := range map[string]struct{ in, want string }{
		"yaml":        {"node: [", "b.yaml"},
		"unknown":     {"node: {id: x}\nbogus_field: 1\n", "bogus_field"},
		"no id":       {strings.Replace(adsBootstrap, "id: web-sidecar, ", "", 1), "node.id"},
		"no ads":      {"node: {id: x}\n", "ads_config"},
		"no cluster":  {strings.Replace(adsBootstrap, "cluster_name: xds}}", "cluster_name: other}}", 1), `no cluster "other"`},
		"hds cluster": {adsBootstrap + "hds_config: {api_type: GRPC, grpc_services: [{envoy_grpc: {cluster_name: hds}}]}\n", `hds_config names cluster "hds"`},
		"hds delta":   {adsBootstrap + "hds_config: {api_type: DELTA_GRPC, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}\n", "hds_config.api_type DELTA_GRPC"},
		"invalid":     {strings.Replace(adsBootstrap, "port_value: 18000", "port_value: 99999", 1), "PortValue"},
	} {
		_, err := Parse("b.yaml", []byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to mention %q", name, err, tc.want)
		}
	}
}

func TestFromFlags(t *testing.T) {
	if _, err := FromFlags("", "web", "z", "sidecar", "web", "127.0.0.1:1", false); err == nil {
		t.Fatal("missing node id accepted")
	}
	if _, err := FromFlags("n", "web", "z", "router", "web", "127.0.0.1:1", false); err == nil || !strings.Contains(err.Error(), "--role") {
		t.Fatalf("bad role: %v", err)
	}
	c, err := FromFlags("n", "web", "zone-a", "ingress", "web", "127.0.0.1:18000", false)
	if err != nil || c.Node.GetLocality().GetZone() != "zone-a" || c.Node.GetMetadata().GetFields()["role"].GetStringValue() != "ingress" {
		t.Fatalf("%v %v", c, err)
	}
}

// FuzzParse: any bytes give a config or an error, never a panic.
func FuzzParse(f *testing.F) {
	f.Add([]byte(adsBootstrap))
	f.Add([]byte("node: {id: x}\nstatic_resources: {listeners: [{name: l}]}\n"))
	f.Add([]byte("{}"))
	f.Add([]byte("- a\n- b\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := Parse("fuzz", in)
		if err == nil && c.XDSAddr == "" && c.Static == nil {
			t.Fatalf("accepted a bootstrap with neither ADS nor static resources: %q", in)
		}
	})
}
