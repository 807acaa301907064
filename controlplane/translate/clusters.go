package translate

import (
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sidemesh/sidemesh/controlplane/model"
)

// flavour is who a cluster is built for.
type flavour int

const (
	flavourProxy     flavour = iota // Envoy / sidemesh proxy
	flavourHDS                      // HDS replicas: with health checks
	flavourProxyless                // gRPC-Go: only what it accepts
)

// HTTPProtocolOptionsKey is where a cluster's upstream protocol options live.
const HTTPProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

func (t *translator) clusters(f flavour) []types.Resource {
	out := make([]types.Resource, 0, len(t.m.Services))
	for i := range t.m.Services {
		s := &t.m.Services[i]
		out = append(out, t.cluster(s.Name, s, f))
	}
	return out
}

func (t *translator) cluster(name string, s *model.Service, f flavour) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:           name,
		ConnectTimeout: durationpb.New(s.ConnectTimeout),
	}
	if s.DNS != nil {
		// gRPC-Go only knows LOGICAL_DNS; proxies spread over every address.
		typ := clusterv3.Cluster_STRICT_DNS
		if f == flavourProxyless {
			typ = clusterv3.Cluster_LOGICAL_DNS
		}
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: typ}
		c.LoadAssignment = &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			Locality:            &corev3.Locality{Zone: s.DNS.Zone},
			LoadBalancingWeight: u32(1),
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: socketAddress(s.DNS.Host, s.DNS.Port),
			}}}},
		}}}
	} else {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}
		c.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ADSConfigSource(), ServiceName: name}
	}
	switch s.LB.Policy {
	case model.LBLeastRequest:
		c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
	case model.LBRingHash:
		c.LbPolicy = clusterv3.Cluster_RING_HASH
		c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{
			HashFunction: clusterv3.Cluster_RingHashLbConfig_XX_HASH,
		}}
	case model.LBRandom:
		// gRPC-Go NACKs RANDOM, and a NACK rejects every cluster of the
		// response; round robin is its closest equivalent.
		if f != flavourProxyless {
			c.LbPolicy = clusterv3.Cluster_RANDOM
		}
	}
	if s.Protocol == model.ProtocolHTTP2 || s.Protocol == model.ProtocolGRPC {
		c.TypedExtensionProtocolOptions = map[string]*anyMsg{
			HTTPProtocolOptionsKey: mustAny(&httpv3.HttpProtocolOptions{
				UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
					ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
				}},
			}),
		}
	}
	if cb := s.CircuitBreakers; cb != nil {
		th := &clusterv3.CircuitBreakers_Thresholds{Priority: corev3.RoutingPriority_DEFAULT}
		th.MaxConnections = optU32(cb.MaxConnections)
		th.MaxPendingRequests = optU32(cb.MaxPendingRequests)
		th.MaxRequests = optU32(cb.MaxRequests)
		th.MaxRetries = optU32(cb.MaxRetries)
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{th}}
	}
	if od := s.OutlierDetection; od != nil {
		c.OutlierDetection = &clusterv3.OutlierDetection{
			Consecutive_5Xx:    optU32(od.Consecutive5xx),
			Interval:           optDuration(od.Interval),
			BaseEjectionTime:   optDuration(od.BaseEjectionTime),
			MaxEjectionPercent: optU32(od.MaxEjectionPercent),
		}
	}
	if f == flavourHDS && s.HealthCheck != nil && name == s.Name {
		c.HealthChecks = []*corev3.HealthCheck{healthCheck(s.HealthCheck)}
	}
	return c
}

func healthCheck(h *model.HealthCheck) *corev3.HealthCheck {
	hc := &corev3.HealthCheck{
		Timeout:            durationpb.New(h.Timeout),
		Interval:           durationpb.New(h.Interval),
		HealthyThreshold:   u32(h.HealthyThreshold),
		UnhealthyThreshold: u32(h.UnhealthyThreshold),
	}
	switch h.Type {
	case model.CheckHTTP:
		hh := &corev3.HealthCheck_HttpHealthCheck{Path: h.Path, Host: h.Host}
		for _, st := range h.ExpectedStatuses {
			hh.ExpectedStatuses = append(hh.ExpectedStatuses, &typev3.Int64Range{Start: int64(st), End: int64(st) + 1})
		}
		hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: hh}
	case model.CheckTCP:
		hc.HealthChecker = &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &corev3.HealthCheck_TcpHealthCheck{}}
	case model.CheckGRPC:
		hc.HealthChecker = &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{ServiceName: h.GRPCService}}
	}
	return hc
}

// ADSConfigSource points at the ADS stream the resource came on.
func ADSConfigSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func u32(v uint32) *wrapperspb.UInt32Value { return wrapperspb.UInt32(v) }

func optU32(v uint32) *wrapperspb.UInt32Value {
	if v == 0 {
		return nil
	}
	return wrapperspb.UInt32(v)
}

func optDuration(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}
