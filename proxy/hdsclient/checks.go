package hdsclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	healthv3 "github.com/envoyproxy/go-control-plane/envoy/service/health/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sidemesh/sidemesh/proxy/healthcheck"
)

// host is one checked endpoint of a cluster. Its key is the (locality,
// endpoint) proto pair, as Envoy keys HDS hosts: an identical entry in the
// next specifier keeps the host and its health.
type host struct {
	key      string
	locality *corev3.Locality
	endpoint *endpointv3.Endpoint // as received; reported back as-is
	h        *healthcheck.Host
}

// checker is one HealthCheck of a cluster, keyed by its exact proto.
type checker struct {
	key string
	c   *healthcheck.Checker
	wg  sync.WaitGroup
	// sessions by host key
	sessions map[string]context.CancelFunc
}

type cluster struct {
	name     string
	hosts    []*host
	checkers []*checker
}

// checkSet is the applied specifier: the clusters in message order.
type checkSet struct {
	clusters []*cluster
}

func marshalKey(m proto.Message) string {
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	return string(b)
}

// healthCheckAddr is where to probe an endpoint: its address, or the
// health_check_config address/port overrides. Only IP literals, as Envoy
// (which does no DNS here).
func healthCheckAddr(ep *endpointv3.Endpoint) (string, error) {
	sa := ep.GetAddress().GetSocketAddress()
	if o := ep.GetHealthCheckConfig().GetAddress().GetSocketAddress(); o != nil {
		sa = o
	}
	if sa == nil {
		return "", errors.New("endpoint.address: socket_address required")
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return "", fmt.Errorf("endpoint.address: %q is not an IP literal", sa.GetAddress())
	}
	port := sa.GetPortValue()
	if p := ep.GetHealthCheckConfig().GetPortValue(); p != 0 {
		port = p
	}
	if port == 0 || port > 65535 {
		return "", fmt.Errorf("endpoint.address: port %d out of range", port)
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(int(port))), nil
}

// plan is a validated specifier turned into clusters, reusing hosts and
// checkers of the current set; nothing is started until commit.
type plan struct {
	clusters   []*cluster
	newChecker []*checker
}

// build validates spec and prepares the next set. It changes nothing: a
// bad specifier leaves the running checks alone.
func (cur *checkSet) build(spec *healthv3.HealthCheckSpecifier, opts healthcheck.Options, log *slog.Logger) (*plan, error) {
	if err := spec.ValidateAll(); err != nil {
		return nil, fmt.Errorf("invalid health check specifier: %w", err)
	}
	byName := map[string]*cluster{}
	for _, c := range cur.clusters {
		if c.name != "" {
			byName[c.name] = c
		}
	}
	p := &plan{}
	seen := map[string]bool{}
	for ci, chc := range spec.GetClusterHealthChecks() {
		name := chc.GetClusterName()
		if name != "" && seen[name] {
			log.Warn("hds: duplicate cluster in specifier, not using it", "cluster", name)
			continue
		}
		seen[name] = true
		old := byName[name] // an empty name is never reused, as in Envoy
		oldHosts, oldCheckers := map[string]*host{}, map[string]*checker{}
		if old != nil {
			for _, h := range old.hosts {
				oldHosts[h.key] = h
			}
			for _, k := range old.checkers {
				oldCheckers[k.key] = k
			}
		}
		nc := &cluster{name: name}
		copts := opts
		if sa := chc.GetUpstreamBindConfig().GetSourceAddress(); sa != nil {
			ip, err := netip.ParseAddr(sa.GetAddress())
			if err != nil {
				return nil, fmt.Errorf("cluster_health_checks[%d] (%s).upstream_bind_config.source_address: %q is not an IP", ci, name, sa.GetAddress())
			}
			copts.SourceIP = ip
		}
		hostSeen := map[string]bool{}
		for li, le := range chc.GetLocalityEndpoints() {
			for ei, ep := range le.GetEndpoints() {
				if ep.GetHealthCheckConfig().GetDisableActiveHealthCheck() {
					continue // never checked, never reported
				}
				addr, err := healthCheckAddr(ep)
				if err != nil {
					return nil, fmt.Errorf("cluster_health_checks[%d] (%s).locality_endpoints[%d].endpoints[%d]: %w", ci, name, li, ei, err)
				}
				key := marshalKey(le.GetLocality()) + "\x00" + marshalKey(ep)
				if hostSeen[key] {
					continue
				}
				hostSeen[key] = true
				if h, ok := oldHosts[key]; ok {
					nc.hosts = append(nc.hosts, h)
					continue
				}
				nc.hosts = append(nc.hosts, &host{key: key, locality: le.GetLocality(), endpoint: ep,
					h: healthcheck.NewHost(healthcheck.Target{Cluster: name, Addr: addr, Hostname: ep.GetHealthCheckConfig().GetHostname()})})
			}
		}
		for hi, hc := range chc.GetHealthChecks() {
			key := marshalKey(hc)
			if k, ok := oldCheckers[key]; ok {
				nc.checkers = append(nc.checkers, k)
				delete(oldCheckers, key) // an identical duplicate gets its own
				continue
			}
			c, err := healthcheck.New(hc, copts)
			if err != nil {
				p.abort()
				return nil, fmt.Errorf("cluster_health_checks[%d] (%s).health_checks[%d]: %w", ci, name, hi, err)
			}
			k := &checker{key: key, c: c, sessions: map[string]context.CancelFunc{}}
			p.newChecker = append(p.newChecker, k)
			nc.checkers = append(nc.checkers, k)
		}
		p.clusters = append(p.clusters, nc)
	}
	return p, nil
}

func (p *plan) abort() {
	for _, k := range p.newChecker {
		k.c.Close()
	}
}

// commit starts sessions for new (checker, host) pairs, stops the ones no
// longer wanted and closes dropped checkers; it returns the new set.
func (cur *checkSet) commit(ctx context.Context, p *plan) *checkSet {
	keep := map[*checker]map[string]bool{}
	for _, c := range p.clusters {
		hk := map[string]bool{}
		for _, h := range c.hosts {
			hk[h.key] = true
		}
		for _, k := range c.checkers {
			keep[k] = hk
			for _, h := range c.hosts {
				if _, running := k.sessions[h.key]; running {
					continue
				}
				sctx, cancel := context.WithCancel(ctx)
				k.sessions[h.key] = cancel
				k.wg.Add(1)
				go func(h *host) {
					defer k.wg.Done()
					k.c.Run(sctx, h.h)
				}(h)
			}
		}
	}
	for _, c := range cur.clusters {
		for _, k := range c.checkers {
			hk, kept := keep[k]
			for key, cancel := range k.sessions {
				if !kept || !hk[key] {
					cancel()
					delete(k.sessions, key)
				}
			}
			if !kept {
				go func(k *checker) { k.wg.Wait(); k.c.Close() }(k)
			}
		}
	}
	return &checkSet{clusters: p.clusters}
}

// stop ends every session and closes every checker.
func (cur *checkSet) stop() {
	for _, c := range cur.clusters {
		for _, k := range c.checkers {
			for key, cancel := range k.sessions {
				cancel()
				delete(k.sessions, key)
			}
			k.wg.Wait()
			k.c.Close()
		}
	}
	cur.clusters = nil
}

// report builds Envoy's full-snapshot EndpointHealthResponse: clusters in
// specifier order, hosts grouped by locality in order of first appearance,
// and the same entries in the deprecated flat list.
func (cur *checkSet) report() *healthv3.EndpointHealthResponse {
	resp := &healthv3.EndpointHealthResponse{}
	for _, c := range cur.clusters {
		ch := &healthv3.ClusterEndpointsHealth{ClusterName: c.name}
		byLoc := map[string]*healthv3.LocalityEndpointsHealth{}
		for _, h := range c.hosts {
			lk := marshalKey(h.locality)
			leh := byLoc[lk]
			if leh == nil {
				leh = &healthv3.LocalityEndpointsHealth{Locality: h.locality}
				byLoc[lk] = leh
				ch.LocalityEndpointsHealth = append(ch.LocalityEndpointsHealth, leh)
			}
			st := h.h.State()
			eh := &healthv3.EndpointHealth{
				Endpoint:     &endpointv3.Endpoint{Address: h.endpoint.GetAddress()},
				HealthStatus: st.HealthStatus(),
			}
			if st.HTTPStatus != 0 {
				eh.HealthMetadata = &structpb.Struct{Fields: map[string]*structpb.Value{"http_status_code": structpb.NewNumberValue(float64(st.HTTPStatus))}}
			}
			leh.EndpointsHealth = append(leh.EndpointsHealth, eh)
			resp.EndpointsHealth = append(resp.EndpointsHealth, eh)
		}
		resp.ClusterEndpointsHealth = append(resp.ClusterEndpointsHealth, ch)
	}
	return resp
}
