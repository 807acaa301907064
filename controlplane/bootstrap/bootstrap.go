// Package bootstrap writes the Envoy bootstrap for a real Envoy in the mesh:
// ADS to the control plane, hds_config to HDS, static clusters for the
// control plane, HDS and (optionally) the RLS, and the admin listener.
package bootstrap

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"gopkg.in/yaml.v3"

	"github.com/sidemesh/sidemesh/controlplane/model"
)

// Static cluster names in the bootstrap. The RLS one differs from the
// model's RLS service name so CDS never tries to replace a static cluster.
const (
	XDSCluster = "xds_cluster"
	HDSCluster = "hds_cluster"
	RLSCluster = "rls_cluster"
)

// Options describe one Envoy.
type Options struct {
	NodeID    string
	Role      string // sidecar or ingress
	Cluster   string // node cluster; default NodeID
	Zone      string
	XDSAddr   string // host:port of the control plane
	HDSAddr   string // host:port of an HDS replica; empty: no hds_config
	RLSAddr   string // host:port of the RLS; empty: no static RLS cluster
	AdminAddr string // Envoy admin host:port
	Delta     bool   // incremental xDS instead of state of the world
}

// Build returns the validated bootstrap.
func Build(o Options) (*bootstrapv3.Bootstrap, error) {
	if o.NodeID == "" {
		return nil, fmt.Errorf("node id is required")
	}
	if o.Role != model.RoleSidecar && o.Role != model.RoleIngress {
		return nil, fmt.Errorf("role %q is not one of sidecar, ingress", o.Role)
	}
	if o.Cluster == "" {
		o.Cluster = o.NodeID
	}
	b := &bootstrapv3.Bootstrap{
		Node: &corev3.Node{
			Id: o.NodeID, Cluster: o.Cluster, Locality: &corev3.Locality{Zone: o.Zone},
			Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{"role": structpb.NewStringValue(o.Role)}},
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{},
	}
	xds, err := staticCluster(XDSCluster, o.XDSAddr)
	if err != nil {
		return nil, fmt.Errorf("xds-addr: %w", err)
	}
	b.StaticResources.Clusters = append(b.StaticResources.Clusters, xds)
	apiType := corev3.ApiConfigSource_GRPC
	if o.Delta {
		apiType = corev3.ApiConfigSource_DELTA_GRPC
	}
	ads := &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	b.DynamicResources = &bootstrapv3.Bootstrap_DynamicResources{
		AdsConfig: grpcSource(apiType, XDSCluster),
		LdsConfig: ads,
		CdsConfig: ads,
	}
	if o.HDSAddr != "" {
		hds, err := staticCluster(HDSCluster, o.HDSAddr)
		if err != nil {
			return nil, fmt.Errorf("hds-addr: %w", err)
		}
		b.StaticResources.Clusters = append(b.StaticResources.Clusters, hds)
		b.HdsConfig = grpcSource(corev3.ApiConfigSource_GRPC, HDSCluster)
	}
	if o.RLSAddr != "" {
		rls, err := staticCluster(RLSCluster, o.RLSAddr)
		if err != nil {
			return nil, fmt.Errorf("rls-addr: %w", err)
		}
		b.StaticResources.Clusters = append(b.StaticResources.Clusters, rls)
	}
	if o.AdminAddr != "" {
		h, p, err := splitHostPort(o.AdminAddr)
		if err != nil {
			return nil, fmt.Errorf("admin-addr: %w", err)
		}
		b.Admin = &bootstrapv3.Admin{Address: socketAddress(h, p)}
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return b, nil
}

func grpcSource(t corev3.ApiConfigSource_ApiType, cluster string) *corev3.ApiConfigSource {
	return &corev3.ApiConfigSource{
		ApiType:             t,
		TransportApiVersion: corev3.ApiVersion_V3,
		GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
			EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: cluster},
		}}},
		SetNodeOnFirstMessageOnly: true,
	}
}

func splitHostPort(a string) (string, uint32, error) {
	h, p, err := net.SplitHostPort(a)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 || h == "" {
		return "", 0, fmt.Errorf("%q: want host:port", a)
	}
	return h, uint32(n), nil
}

func socketAddress(h string, p uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: h, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: p},
	}}}
}

// staticCluster is an HTTP/2 (gRPC) cluster resolving host by DNS (an IP
// literal resolves to itself).
func staticCluster(name, addr string) (*clusterv3.Cluster, error) {
	h, p, err := splitHostPort(addr)
	if err != nil {
		return nil, err
	}
	opts, err := anypb.New(&httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		}},
	})
	if err != nil {
		return nil, err
	}
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
		ConnectTimeout:       durationpb.New(time.Second),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts,
		},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
				Endpoint: &endpointv3.Endpoint{Address: socketAddress(h, p)},
			}}},
		}}},
	}, nil
}

// YAML renders a bootstrap as YAML (the proto JSON mapping, snake_case).
func YAML(b *bootstrapv3.Bootstrap) ([]byte, error) {
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(b)
	if err != nil {
		return nil, err
	}
	var v any
	if err := json.Unmarshal(js, &v); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Parse reads a bootstrap YAML strictly (unknown fields are errors) and
// validates it.
func Parse(data []byte) (*bootstrapv3.Bootstrap, error) {
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		return nil, fmt.Errorf("bootstrap yaml: %w", err)
	}
	js, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("bootstrap yaml: %w", err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(js, b); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return b, nil
}
