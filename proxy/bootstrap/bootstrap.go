// Package bootstrap builds the proxy's identity and control-plane address
// from flags or from an Envoy-style bootstrap YAML file.
package bootstrap

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"gopkg.in/yaml.v3"

	// Typed configs a bootstrap may name in "@type" must be registered.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/sidemesh/sidemesh/proxy/xds"
)

// Config is what the proxy needs to start.
type Config struct {
	Node      *corev3.Node
	XDSAddr   string
	SotW      bool   // ads_config.api_type GRPC instead of DELTA_GRPC
	AdminAddr string // from the bootstrap's admin.address, if any
	// HDSAddr is the HDS server from the bootstrap's hds_config (the first
	// endpoint of the static cluster it names); empty without hds_config.
	HDSAddr string
	// Static holds static_resources listeners and clusters when the
	// bootstrap has no dynamic_resources (static mode, no control plane).
	Static *xds.Resources
}

// FromFlags builds a Config from the proxy's flags.
func FromFlags(id, cluster, zone, role, service, xdsAddr string, sotw bool) (*Config, error) {
	if id == "" {
		return nil, fmt.Errorf("--node-id is required")
	}
	if xdsAddr == "" {
		return nil, fmt.Errorf("--xds-addr is required")
	}
	if _, _, err := net.SplitHostPort(xdsAddr); err != nil {
		return nil, fmt.Errorf("--xds-addr %q: %v", xdsAddr, err)
	}
	if role != "sidecar" && role != "ingress" {
		return nil, fmt.Errorf("--role %q: must be sidecar or ingress", role)
	}
	return &Config{Node: node(id, cluster, zone, role, service), XDSAddr: xdsAddr, SotW: sotw}, nil
}

func node(id, cluster, zone, role, service string) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{"role": role, "service": service})
	n := &corev3.Node{Id: id, Cluster: cluster, Metadata: md, UserAgentName: "sidemesh-proxy",
		ClientFeatures: []string{"envoy.lb.does_not_support_overprovisioning"}}
	if zone != "" {
		n.Locality = &corev3.Locality{Zone: zone}
	}
	return n
}

// Load reads an Envoy bootstrap YAML (or JSON) file. The ADS server is the
// first endpoint of the static cluster named by
// dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name.
func Load(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bootstrap %s: %w", path, err)
	}
	return Parse(path, raw)
}

// Parse parses bootstrap bytes; name is used in errors.
func Parse(name string, raw []byte) (*Config, error) {
	var tree any
	if err := yaml.Unmarshal(raw, &tree); err != nil {
		return nil, fmt.Errorf("bootstrap %s: %w", name, err)
	}
	js, err := json.Marshal(tree)
	if err != nil {
		return nil, fmt.Errorf("bootstrap %s: %w", name, err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		return nil, fmt.Errorf("bootstrap %s: %w", name, err)
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("bootstrap %s: %w", name, err)
	}
	if b.GetNode().GetId() == "" {
		return nil, fmt.Errorf("bootstrap %s: node.id is required", name)
	}
	ads := b.GetDynamicResources().GetAdsConfig()
	if ads == nil {
		if len(b.GetStaticResources().GetListeners()) == 0 {
			return nil, fmt.Errorf("bootstrap %s: needs dynamic_resources.ads_config or static_resources.listeners", name)
		}
		st := xds.NewResources()
		for _, l := range b.GetStaticResources().GetListeners() {
			st.Listeners[l.GetName()] = l
		}
		for _, c := range b.GetStaticResources().GetClusters() {
			st.Clusters[c.GetName()] = c
		}
		cfg := &Config{Node: b.GetNode(), Static: st}
		if sa := b.GetAdmin().GetAddress().GetSocketAddress(); sa != nil {
			cfg.AdminAddr = net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
		}
		return cfg, nil
	}
	cfg := &Config{Node: b.GetNode(), SotW: ads.GetApiType() == corev3.ApiConfigSource_GRPC}
	if cfg.Node.UserAgentName == "" {
		cfg.Node.UserAgentName = "sidemesh-proxy"
	}
	switch ads.GetApiType() {
	case corev3.ApiConfigSource_GRPC, corev3.ApiConfigSource_DELTA_GRPC, corev3.ApiConfigSource_AGGREGATED_GRPC, corev3.ApiConfigSource_AGGREGATED_DELTA_GRPC:
	default:
		return nil, fmt.Errorf("bootstrap %s: dynamic_resources.ads_config.api_type %s: use GRPC or DELTA_GRPC", name, ads.GetApiType())
	}
	if ads.GetApiType() == corev3.ApiConfigSource_AGGREGATED_GRPC {
		cfg.SotW = true
	}
	gs := ads.GetGrpcServices()
	if len(gs) == 0 || gs[0].GetEnvoyGrpc().GetClusterName() == "" {
		return nil, fmt.Errorf("bootstrap %s: dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name is required", name)
	}
	cn := gs[0].GetEnvoyGrpc().GetClusterName()
	if cfg.XDSAddr = clusterAddr(&b, cn); cfg.XDSAddr == "" {
		return nil, fmt.Errorf("bootstrap %s: static_resources.clusters has no cluster %q with a socket_address endpoint", name, cn)
	}
	if hds := b.GetHdsConfig(); hds != nil {
		// Envoy's HDS client speaks the SotW-style bidi stream only.
		if hds.GetApiType() != corev3.ApiConfigSource_GRPC {
			return nil, fmt.Errorf("bootstrap %s: hds_config.api_type %s: HDS needs GRPC", name, hds.GetApiType())
		}
		hs := hds.GetGrpcServices()
		if len(hs) == 0 || hs[0].GetEnvoyGrpc().GetClusterName() == "" {
			return nil, fmt.Errorf("bootstrap %s: hds_config.grpc_services[0].envoy_grpc.cluster_name is required", name)
		}
		hn := hs[0].GetEnvoyGrpc().GetClusterName()
		if cfg.HDSAddr = clusterAddr(&b, hn); cfg.HDSAddr == "" {
			return nil, fmt.Errorf("bootstrap %s: hds_config names cluster %q, but static_resources.clusters has no such cluster with a socket_address endpoint", name, hn)
		}
	}
	if sa := b.GetAdmin().GetAddress().GetSocketAddress(); sa != nil {
		cfg.AdminAddr = net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
	}
	return cfg, nil
}

// clusterAddr is the first socket_address endpoint of the static cluster
// named cn, or "".
func clusterAddr(b *bootstrapv3.Bootstrap, cn string) string {
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() != cn {
			continue
		}
		for _, l := range c.GetLoadAssignment().GetEndpoints() {
			for _, e := range l.GetLbEndpoints() {
				if sa := e.GetEndpoint().GetAddress().GetSocketAddress(); sa != nil {
					return net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
				}
			}
		}
	}
	return ""
}
