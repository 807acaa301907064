// Package translate turns the mesh model into Envoy v3 resources: per node
// group the Listeners, RouteConfigurations and Clusters, and one shared set of
// ClusterLoadAssignments. The shapes are the standard ones a real Envoy, the
// sidemesh proxy and gRPC-Go's xDS client all accept.
package translate

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/sidemesh/sidemesh/controlplane/model"
)

// Node groups: every node of a group gets the same LDS/RDS/CDS.
const (
	// GroupMesh is for nodes the model does not name: proxyless gRPC clients
	// get an api_listener per mesh host.
	GroupMesh = "mesh"
	// GroupHDS is for HDS replicas (node metadata role: hds): clusters with
	// their health checks, no listeners.
	GroupHDS = "hds"
)

// ProxyGroup is the group of the model proxy with this id.
func ProxyGroup(id string) string { return "proxy/" + id }

// Resource names.
const (
	OutboundRoute    = "outbound"
	InboundListener  = "inbound"
	OutboundListener = "outbound"
	IngressListener  = "ingress"
)

// InboundCluster names a sidecar's local-app cluster (and its CLA).
func InboundCluster(proxyID string) string { return "inbound|" + proxyID }

// OutboundTCPListener names a sidecar's listener for one tcp service.
func OutboundTCPListener(service string) string { return "outbound-tcp|" + service }

func inboundRoute(proxyID string) string { return "inbound|" + proxyID }
func ingressRoute(proxyID string) string { return "ingress|" + proxyID }

// EndpointKey names one endpoint of one cluster, as the health feed does.
type EndpointKey struct {
	Cluster string
	Address string
	Port    uint32
}

// Health is the health status to serve per endpoint; missing means UNKNOWN.
type Health map[EndpointKey]corev3.HealthStatus

// Group is what one node group is served besides endpoints.
type Group struct {
	Listeners []types.Resource
	Routes    []types.Resource
	Clusters  []types.Resource
}

// Output is a whole translation.
type Output struct {
	Groups map[string]*Group
	// Endpoints holds every ClusterLoadAssignment by name, shared by all
	// groups (a node only subscribes to those its clusters name).
	Endpoints map[string]*endpointv3.ClusterLoadAssignment
	// ByNodeCluster maps a node's role and cluster (NodeClusterKey) to the
	// model proxy that serves nodes whose id the model does not name, so
	// replicas of one proxy (a Deployment's pods) share an entry. A node
	// cluster equal to a proxy's id wins; otherwise a sidecar's service, when
	// only one sidecar has it. The role (node metadata "role", which bin/proxy
	// and the bootstrap subcommand set) keeps proxyless gRPC clients that
	// happen to share a service name out of a proxy's group.
	ByNodeCluster map[string]string
}

// Build translates a validated model. health may be nil.
func Build(m *model.Mesh, health Health) (*Output, error) {
	t := &translator{m: m, health: health, services: map[string]*model.Service{}}
	for i := range m.Services {
		t.services[m.Services[i].Name] = &m.Services[i]
	}
	out := &Output{Groups: map[string]*Group{}, Endpoints: map[string]*endpointv3.ClusterLoadAssignment{}}
	for i := range m.Services {
		s := &m.Services[i]
		if len(s.Endpoints) > 0 {
			out.Endpoints[s.Name] = t.cla(s.Name, s.Endpoints)
		}
	}
	meshVHs := t.meshVirtualHosts()
	outbound, err := t.routeConfig(OutboundRoute, meshVHs)
	if err != nil {
		return nil, err
	}

	// Proxyless gRPC: one api_listener per concrete mesh host.
	mesh := &Group{Routes: []types.Resource{outbound}, Clusters: t.clusters(flavourProxyless)}
	for _, vh := range meshVHs {
		for _, h := range vh.Hosts {
			if strings.Contains(h, "*") {
				continue
			}
			mesh.Listeners = append(mesh.Listeners, t.apiListener(h, OutboundRoute, meshVHs))
		}
	}
	out.Groups[GroupMesh] = mesh
	out.Groups[GroupHDS] = &Group{Clusters: t.clusters(flavourHDS)}

	proxyClusters := t.clusters(flavourProxy)
	for i := range m.Proxies {
		p := &m.Proxies[i]
		g := &Group{Clusters: append([]types.Resource(nil), proxyClusters...)}
		switch p.Role {
		case model.RoleSidecar:
			in := InboundCluster(p.ID)
			svc := t.services[p.Service]
			host, port := splitHostPort(p.Inbound.App)
			zone := p.Zone
			out.Endpoints[in] = t.cla(in, []model.Endpoint{{Address: host, Port: port, Zone: zone, Weight: 1}})
			g.Clusters = append(g.Clusters, t.cluster(in, svc, flavourProxy))
			inVH := []model.VirtualHost{{Name: "inbound", Hosts: []string{"*"}, HTTP: []model.Route{{
				Name: "inbound", Match: model.Match{Prefix: "/"}, Timeout: p.Inbound.Timeout,
			}}}}
			inRC, err := t.routeConfigWith(inboundRoute(p.ID), inVH, func(string) string { return in })
			if err != nil {
				return nil, err
			}
			g.Routes = []types.Resource{inRC, outbound}
			g.Listeners = []types.Resource{
				t.listener(InboundListener, p.Inbound.Listen, inboundRoute(p.ID), inVH, false),
				t.listener(OutboundListener, p.Outbound.Listen, OutboundRoute, meshVHs, true),
			}
			for _, o := range p.Outbound.TCP {
				g.Listeners = append(g.Listeners, tcpListener(OutboundTCPListener(o.Service), o.Listen, o.Service))
			}
		case model.RoleIngress:
			rc, err := t.routeConfig(ingressRoute(p.ID), p.Routes)
			if err != nil {
				return nil, err
			}
			g.Routes = []types.Resource{rc}
			g.Listeners = []types.Resource{t.listener(IngressListener, p.Listen, ingressRoute(p.ID), p.Routes, false)}
		}
		out.Groups[ProxyGroup(p.ID)] = g
	}
	out.ByNodeCluster = byNodeCluster(m.Proxies)
	if err := out.check(); err != nil {
		return nil, err
	}
	return out, nil
}

// NodeClusterKey is the ByNodeCluster key of a node.
func NodeClusterKey(role, cluster string) string { return role + "/" + cluster }

func byNodeCluster(ps []model.Proxy) map[string]string {
	m := map[string]string{}
	sidecars := map[string]int{}
	for _, p := range ps {
		if p.Role == model.RoleSidecar && p.Service != "" {
			sidecars[p.Service]++
		}
	}
	for _, p := range ps {
		if p.Role == model.RoleSidecar && sidecars[p.Service] == 1 {
			m[NodeClusterKey(p.Role, p.Service)] = p.ID
		}
	}
	for _, p := range ps {
		m[NodeClusterKey(p.Role, p.ID)] = p.ID
	}
	return m
}

// check validates every resource and proves each group's snapshot
// consistent, the way go-control-plane's own check sees it.
func (o *Output) check() error {
	var errs []error
	for _, cla := range o.Endpoints {
		if err := cla.ValidateAll(); err != nil {
			errs = append(errs, fmt.Errorf("endpoints %s: %w", cla.GetClusterName(), err))
		}
	}
	for _, name := range model.SortedNames(o.Groups) {
		g := o.Groups[name]
		for _, r := range concat(g.Listeners, g.Routes, g.Clusters) {
			if v, ok := r.(interface{ ValidateAll() error }); ok {
				if err := v.ValidateAll(); err != nil {
					errs = append(errs, fmt.Errorf("group %s: %s %s: %w", name, kind(r), cachev3.GetResourceName(r), err))
				}
			}
		}
		if _, err := o.Snapshot(name, "check"); err != nil {
			errs = append(errs, fmt.Errorf("group %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func kind(r types.Resource) string {
	return string(proto.MessageName(r).Name())
}

func concat(ls ...[]types.Resource) []types.Resource {
	var out []types.Resource
	for _, l := range ls {
		out = append(out, l...)
	}
	return out
}

// Snapshot builds a complete, consistency-checked snapshot of one group
// (endpoints included), e.g. for config dumps and tests.
func (o *Output) Snapshot(group, version string) (*cachev3.Snapshot, error) {
	g, ok := o.Groups[group]
	if !ok {
		return nil, fmt.Errorf("no group %q", group)
	}
	snap, err := cachev3.NewSnapshot(version, map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: g.Listeners,
		resourcev3.RouteType:    g.Routes,
		resourcev3.ClusterType:  g.Clusters,
		resourcev3.EndpointType: o.GroupEndpoints(group),
	})
	if err != nil {
		return nil, err
	}
	if err := snap.Consistent(); err != nil {
		return nil, err
	}
	if err := o.checkRouteRefs(g); err != nil {
		return nil, err
	}
	return snap, nil
}

// GroupEndpoints lists the CLAs the group's EDS clusters name.
func (o *Output) GroupEndpoints(group string) []types.Resource {
	g := o.Groups[group]
	var out []types.Resource
	for _, r := range g.Clusters {
		c := r.(*clusterv3.Cluster)
		if c.GetType() != clusterv3.Cluster_EDS {
			continue
		}
		name := c.GetEdsClusterConfig().GetServiceName()
		if name == "" {
			name = c.GetName()
		}
		if cla, ok := o.Endpoints[name]; ok {
			out = append(out, cla)
		}
	}
	return out
}

// checkRouteRefs: every cluster a route names is in the group's CDS.
func (o *Output) checkRouteRefs(g *Group) error {
	have := map[string]bool{}
	for _, r := range g.Clusters {
		have[cachev3.GetResourceName(r)] = true
	}
	for _, r := range g.Routes {
		rc := r.(*routev3.RouteConfiguration)
		for _, vh := range rc.GetVirtualHosts() {
			for _, rt := range vh.GetRoutes() {
				for _, c := range routeClusters(rt) {
					if !have[c] {
						return fmt.Errorf("route %s/%s/%s names cluster %q that is not served", rc.GetName(), vh.GetName(), rt.GetName(), c)
					}
				}
			}
		}
	}
	return nil
}

func routeClusters(rt *routev3.Route) []string {
	a := rt.GetRoute()
	if a == nil {
		return nil
	}
	var out []string
	if c := a.GetCluster(); c != "" {
		out = append(out, c)
	}
	for _, w := range a.GetWeightedClusters().GetClusters() {
		out = append(out, w.GetName())
	}
	for _, m := range a.GetRequestMirrorPolicies() {
		out = append(out, m.GetCluster())
	}
	return out
}

type translator struct {
	m        *model.Mesh
	health   Health
	services map[string]*model.Service
}

// meshVirtualHosts are the model's routes plus a default virtual host for
// every HTTP-speaking service no route names as a host.
func (t *translator) meshVirtualHosts() []model.VirtualHost {
	vhs := append([]model.VirtualHost(nil), t.m.Routes...)
	hosted := map[string]bool{}
	for _, vh := range vhs {
		for _, h := range vh.Hosts {
			hosted[strings.ToLower(h)] = true
		}
	}
	for _, s := range t.m.Services {
		if s.Protocol == model.ProtocolTCP || hosted[strings.ToLower(s.Name)] {
			continue
		}
		vhs = append(vhs, model.VirtualHost{
			Name:  "default|" + s.Name,
			Hosts: []string{s.Name},
			HTTP:  []model.Route{{Name: "default", Match: model.Match{Prefix: "/"}, Route: []model.Destination{{Service: s.Name, Weight: 1}}}},
		})
	}
	return vhs
}

func splitHostPort(hp string) (string, uint32) {
	h, p, _ := net.SplitHostPort(hp)
	n, _ := strconv.Atoi(p)
	return h, uint32(n)
}

func (t *translator) cla(name string, eps []model.Endpoint) *endpointv3.ClusterLoadAssignment {
	type loc struct{ region, zone string }
	groups := map[loc][]model.Endpoint{}
	for _, e := range eps {
		k := loc{e.Region, e.Zone}
		groups[k] = append(groups[k], e)
	}
	keys := make([]loc, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].region != keys[j].region {
			return keys[i].region < keys[j].region
		}
		return keys[i].zone < keys[j].zone
	})
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	for _, k := range keys {
		// gRPC NACKs a locality without a Locality message and ignores one
		// with weight 0, so both are always set.
		lle := &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{Region: k.region, Zone: k.zone}}
		var weight uint32
		for _, e := range groups[k] {
			weight += e.Weight
			lle.LbEndpoints = append(lle.LbEndpoints, &endpointv3.LbEndpoint{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: socketAddress(e.Address, e.Port),
				}},
				HealthStatus:        t.health[EndpointKey{Cluster: name, Address: e.Address, Port: e.Port}],
				LoadBalancingWeight: u32(e.Weight),
			})
		}
		lle.LoadBalancingWeight = u32(weight)
		cla.Endpoints = append(cla.Endpoints, lle)
	}
	return cla
}
