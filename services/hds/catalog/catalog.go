// Package catalog holds what HDS must get checked: clusters that carry an
// Envoy HealthCheck and their endpoints. Sources (an xDS client, a static
// file) produce Snapshots; everything downstream reads them.
package catalog

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Protocol is the kind of check a cluster needs; a checker must support it.
type Protocol uint8

// Protocols, as bits so a proxy's capabilities fit a small set.
const (
	HTTP Protocol = 1 << iota
	TCP
	GRPC
)

func (p Protocol) String() string {
	switch p {
	case HTTP:
		return "HTTP"
	case TCP:
		return "TCP"
	case GRPC:
		return "GRPC"
	}
	return "proto(" + strconv.Itoa(int(p)) + ")"
}

// EndpointKey names one checked endpoint. The same ip:port in two clusters is
// two endpoints, because their checks (and Envoy's reports) are per cluster.
type EndpointKey struct {
	Cluster string
	Address string
	Port    uint32
}

func (k EndpointKey) String() string {
	return k.Cluster + "/" + net.JoinHostPort(k.Address, strconv.FormatUint(uint64(k.Port), 10))
}

// Compare orders keys by cluster, address, port.
func (k EndpointKey) Compare(o EndpointKey) int {
	switch {
	case k.Cluster != o.Cluster:
		return cmpStr(k.Cluster, o.Cluster)
	case k.Address != o.Address:
		return cmpStr(k.Address, o.Address)
	case k.Port < o.Port:
		return -1
	case k.Port > o.Port:
		return 1
	}
	return 0
}

func cmpStr(a, b string) int {
	if a < b {
		return -1
	}
	return 1
}

// Endpoint is one endpoint to check.
type Endpoint struct {
	Key      EndpointKey
	Locality *corev3.Locality
	// HealthCheckConfig is Envoy's per-endpoint override (port, hostname).
	HealthCheckConfig *endpointv3.Endpoint_HealthCheckConfig
}

// Zone is the endpoint's locality zone ("" when unknown).
func (e Endpoint) Zone() string { return e.Locality.GetZone() }

// Cluster is one cluster whose endpoints need active checks.
type Cluster struct {
	Name        string
	HealthCheck *corev3.HealthCheck // normalized, validated
	Protocol    Protocol
	Endpoints   []Endpoint // sorted by key
	// TransportSocketMatches lets a check use TLS (Envoy HDS semantics).
	TransportSocketMatches []*clusterv3.Cluster_TransportSocketMatch
}

// Snapshot is the whole set of clusters to check, sorted by name.
type Snapshot struct {
	Version  string
	Clusters []Cluster
}

// Endpoints returns every endpoint of the snapshot in key order.
func (s *Snapshot) Endpoints() []Endpoint {
	var out []Endpoint
	for _, c := range s.Clusters {
		out = append(out, c.Endpoints...)
	}
	return out
}

// Cluster returns the named cluster.
func (s *Snapshot) Cluster(name string) (*Cluster, bool) {
	i := sort.Search(len(s.Clusters), func(i int) bool { return s.Clusters[i].Name >= name })
	if i < len(s.Clusters) && s.Clusters[i].Name == name {
		return &s.Clusters[i], true
	}
	return nil, false
}

// Source produces snapshots until ctx ends; it calls update with every new
// good snapshot and keeps the last good one when a change is bad.
type Source interface {
	Run(ctx context.Context, update func(*Snapshot)) error
}

// Sort puts clusters and endpoints in canonical order, so every replica
// builds byte-identical specifiers from the same input.
func (s *Snapshot) Sort() {
	sort.Slice(s.Clusters, func(i, j int) bool { return s.Clusters[i].Name < s.Clusters[j].Name })
	for i := range s.Clusters {
		eps := s.Clusters[i].Endpoints
		sort.Slice(eps, func(a, b int) bool { return eps[a].Key.Compare(eps[b].Key) < 0 })
	}
}

// NormalizeHealthCheck validates hc the way Envoy will (PGV plus the checks
// Envoy only fails on at runtime) and returns a copy with the HDS settings:
// no_traffic_interval and no_traffic_healthy_interval equal the check
// interval, because HDS clusters never carry traffic and Envoy would
// otherwise probe only every 60 s.
func NormalizeHealthCheck(hc *corev3.HealthCheck) (*corev3.HealthCheck, Protocol, error) {
	if hc == nil {
		return nil, 0, errors.New("health check is missing")
	}
	out := proto.Clone(hc).(*corev3.HealthCheck)
	if iv := out.GetInterval(); iv != nil {
		out.NoTrafficInterval = durationpb.New(iv.AsDuration())
		out.NoTrafficHealthyInterval = durationpb.New(iv.AsDuration())
	}
	if err := out.ValidateAll(); err != nil {
		return nil, 0, fmt.Errorf("health check: %w", err)
	}
	var p Protocol
	switch c := out.HealthChecker.(type) {
	case *corev3.HealthCheck_HttpHealthCheck_:
		p = HTTP
		for _, r := range c.HttpHealthCheck.GetExpectedStatuses() {
			if r.GetStart() < 100 || r.GetEnd() > 600 || r.GetStart() >= r.GetEnd() {
				return nil, 0, fmt.Errorf("health check: http expected_statuses range [%d,%d) must lie in [100,600) with start < end", r.GetStart(), r.GetEnd())
			}
		}
		if c.HttpHealthCheck.GetMethod() == corev3.RequestMethod_CONNECT {
			return nil, 0, errors.New("health check: http method CONNECT is not allowed")
		}
	case *corev3.HealthCheck_TcpHealthCheck_:
		p = TCP
	case *corev3.HealthCheck_GrpcHealthCheck_:
		p = GRPC
	default:
		return nil, 0, fmt.Errorf("health check: checker type %T is not supported (http, tcp, grpc)", out.HealthChecker)
	}
	return out, p, nil
}

// ParseIP accepts only IP literals: Envoy's HDS client does no DNS and would
// fail on a hostname.
func ParseIP(s string) (string, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return "", fmt.Errorf("address %q is not an IP literal (HDS clients do not resolve names)", s)
	}
	return a.Unmap().String(), nil
}

// FromLoadAssignment turns an Envoy ClusterLoadAssignment into endpoints of
// cluster name, skipping endpoints whose active checks are disabled and
// reporting (not failing on) unusable addresses.
func FromLoadAssignment(name string, cla *endpointv3.ClusterLoadAssignment) (eps []Endpoint, skipped []error) {
	seen := map[EndpointKey]bool{}
	for _, lle := range cla.GetEndpoints() {
		for _, lbe := range lle.GetLbEndpoints() {
			ep := lbe.GetEndpoint()
			if ep == nil {
				continue
			}
			if ep.GetHealthCheckConfig().GetDisableActiveHealthCheck() {
				continue
			}
			sa := ep.GetAddress().GetSocketAddress()
			if sa == nil {
				skipped = append(skipped, fmt.Errorf("cluster %s: endpoint without a socket address", name))
				continue
			}
			ip, err := ParseIP(sa.GetAddress())
			if err != nil {
				skipped = append(skipped, fmt.Errorf("cluster %s: %w", name, err))
				continue
			}
			k := EndpointKey{Cluster: name, Address: ip, Port: sa.GetPortValue()}
			if seen[k] {
				continue
			}
			seen[k] = true
			var loc *corev3.Locality
			if lle.GetLocality() != nil {
				loc = proto.Clone(lle.GetLocality()).(*corev3.Locality)
			}
			var hcc *endpointv3.Endpoint_HealthCheckConfig
			if ep.GetHealthCheckConfig() != nil {
				hcc = proto.Clone(ep.GetHealthCheckConfig()).(*endpointv3.Endpoint_HealthCheckConfig)
			}
			eps = append(eps, Endpoint{Key: k, Locality: loc, HealthCheckConfig: hcc})
		}
	}
	return eps, skipped
}

// CheckInterval is the cluster's check interval (1 s when unset).
func (c *Cluster) CheckInterval() time.Duration {
	if d := c.HealthCheck.GetInterval().AsDuration(); d > 0 {
		return d
	}
	return time.Second
}

// Warmup is how long after assignment a checker may honestly still report
// its initial UNHEALTHY: Envoy creates hosts failed and only the first
// completed check (after initial jitter, connect of up to 1 s and timeout)
// changes that.
func (c *Cluster) Warmup(reportInterval time.Duration) time.Duration {
	hc := c.HealthCheck
	return hc.GetInitialJitter().AsDuration() + hc.GetTimeout().AsDuration() + time.Second + reportInterval
}
