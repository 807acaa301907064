package xds

import (
	"fmt"
	"maps"
	"sort"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Type URLs of the resources the proxy consumes.
const (
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	RouteType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	HCMType      = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)

// Resources is the complete set of accepted resources, by type and name.
// It is replaced, never mutated, once handed to an Applier.
type Resources struct {
	Listeners map[string]*listenerv3.Listener
	Routes    map[string]*routev3.RouteConfiguration
	Clusters  map[string]*clusterv3.Cluster
	Endpoints map[string]*endpointv3.ClusterLoadAssignment
}

// NewResources returns an empty set.
func NewResources() *Resources {
	return &Resources{Listeners: map[string]*listenerv3.Listener{}, Routes: map[string]*routev3.RouteConfiguration{},
		Clusters: map[string]*clusterv3.Cluster{}, Endpoints: map[string]*endpointv3.ClusterLoadAssignment{}}
}

func (r *Resources) clone() *Resources {
	return &Resources{Listeners: maps.Clone(r.Listeners), Routes: maps.Clone(r.Routes), Clusters: maps.Clone(r.Clusters), Endpoints: maps.Clone(r.Endpoints)}
}

type validator interface {
	proto.Message
	ValidateAll() error
}

// decode unmarshals and validates one resource of typeURL.
func decode(typeURL string, a *anypb.Any) (validator, error) {
	if a.GetTypeUrl() != typeURL {
		return nil, fmt.Errorf("type %s in a %s response", a.GetTypeUrl(), typeURL)
	}
	var m validator
	switch typeURL {
	case ListenerType:
		m = &listenerv3.Listener{}
	case RouteType:
		m = &routev3.RouteConfiguration{}
	case ClusterType:
		m = &clusterv3.Cluster{}
	case EndpointType:
		m = &endpointv3.ClusterLoadAssignment{}
	default:
		return nil, fmt.Errorf("unsupported type %s", typeURL)
	}
	if err := a.UnmarshalTo(m); err != nil {
		return nil, fmt.Errorf("unmarshal: %w", err)
	}
	if err := m.ValidateAll(); err != nil {
		return nil, err
	}
	return m, nil
}

func resourceName(a *anypb.Any) (string, error) {
	m, err := a.UnmarshalNew()
	if err != nil {
		return "", fmt.Errorf("unmarshal %s: %w", a.GetTypeUrl(), err)
	}
	switch v := m.(type) {
	case *listenerv3.Listener:
		return v.GetName(), nil
	case *routev3.RouteConfiguration:
		return v.GetName(), nil
	case *clusterv3.Cluster:
		return v.GetName(), nil
	case *endpointv3.ClusterLoadAssignment:
		return v.GetClusterName(), nil
	}
	return "", fmt.Errorf("unsupported resource type %s", a.GetTypeUrl())
}

// HCMs returns the HTTP connection managers of a listener's filter chains.
func HCMs(l *listenerv3.Listener) ([]*hcmv3.HttpConnectionManager, error) {
	var out []*hcmv3.HttpConnectionManager
	chains := l.GetFilterChains()
	if l.GetDefaultFilterChain() != nil {
		chains = append(chains[:len(chains):len(chains)], l.GetDefaultFilterChain())
	}
	for i, fc := range chains {
		for j, f := range fc.GetFilters() {
			if f.GetTypedConfig().GetTypeUrl() != HCMType {
				continue
			}
			var h hcmv3.HttpConnectionManager
			if err := f.GetTypedConfig().UnmarshalTo(&h); err != nil {
				return nil, fmt.Errorf("listener %q: filter_chains[%d].filters[%d]: %w", l.GetName(), i, j, err)
			}
			out = append(out, &h)
		}
	}
	return out, nil
}

// references lists the RDS and EDS names the listeners and clusters need.
func references(r *Resources) (routes, endpoints []string) {
	rs := map[string]bool{}
	for _, l := range r.Listeners {
		hs, _ := HCMs(l)
		for _, h := range hs {
			if n := h.GetRds().GetRouteConfigName(); n != "" {
				rs[n] = true
			}
		}
	}
	es := map[string]bool{}
	for _, c := range r.Clusters {
		if c.GetType() == clusterv3.Cluster_EDS {
			n := c.GetEdsClusterConfig().GetServiceName()
			if n == "" {
				n = c.GetName()
			}
			es[n] = true
		}
	}
	return sortedKeys(rs), sortedKeys(es)
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
