// Package hdsload simulates a fleet of HDS clients (envoy.service.health.v3)
// that answer their assigned health checks from a scripted truth table, and
// measures coverage, probes per interval, load spread and convergence after
// a replica dies.
package hdsload

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	healthpb "github.com/envoyproxy/go-control-plane/envoy/service/health/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Key names one endpoint of one cluster.
type Key struct {
	Cluster string
	Addr    string
	Port    uint32
}

func (k Key) String() string {
	return k.Cluster + "/" + net.JoinHostPort(k.Addr, strconv.Itoa(int(k.Port)))
}

// Truth says whether an endpoint is healthy.
type Truth func(Key) bool

// Fleet is N simulated proxies, each with one HDS stream to a replica.
type Fleet struct {
	targets []string
	truth   Truth
	clients []*proxy
	wg      sync.WaitGroup
	cancel  context.CancelFunc
	probes  atomic.Int64
	reports atomic.Int64
	reconn  atomic.Int64
}

type proxy struct {
	f    *Fleet
	node *corepb.Node
	mu   sync.Mutex
	// Current assignment; empty while disconnected. reported is true once a
	// report covering it was sent (the checks were "run").
	assigned  map[Key]locality
	reported  bool
	connected bool
	target    int
}

// StartFleet opens n simulated proxies spread round robin over targets; a
// proxy whose stream breaks moves to the next target after a short backoff,
// as Envoy's HDS client does. Each stream has its own connection, as each
// proxy would.
func StartFleet(ctx context.Context, targets []string, n int, zones []string, truth Truth) (*Fleet, error) {
	f := &Fleet{targets: targets, truth: truth}
	for _, t := range targets {
		// Checked once here so a bad address is an error, not endless retries.
		c, err := grpc.NewClient(t, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", t, err)
		}
		c.Close()
	}
	ctx, f.cancel = context.WithCancel(ctx)
	for i := range n {
		p := &proxy{f: f, target: i % len(targets), node: &corepb.Node{
			Id: fmt.Sprintf("lt-proxy-%d", i), Cluster: "loadtest",
			Locality:      &corepb.Locality{Zone: zones[i%len(zones)]},
			UserAgentName: "sidemesh-loadtest",
		}}
		f.clients = append(f.clients, p)
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			p.loop(ctx)
		}()
	}
	return f, nil
}

// Stop ends every stream.
func (f *Fleet) Stop() {
	f.cancel()
	f.wg.Wait()
}

func (p *proxy) loop(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		began := time.Now()
		p.stream(ctx)
		p.mu.Lock()
		p.assigned, p.reported, p.connected = nil, false, false
		p.target = (p.target + 1) % len(p.f.targets)
		p.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		p.f.reconn.Add(1)
		if time.Since(began) > 5*time.Second {
			backoff = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// locality is a comparable copy of corepb.Locality.
type locality struct{ Region, Zone, SubZone string }

type spec struct {
	assigned       map[Key]locality
	check, reportT time.Duration
}

// stream runs one HDS stream until it breaks.
func (p *proxy) stream(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p.mu.Lock()
	addr := p.f.targets[p.target]
	p.mu.Unlock()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return
	}
	defer conn.Close()
	st, err := healthpb.NewHealthDiscoveryServiceClient(conn).StreamHealthCheck(ctx)
	if err != nil {
		return
	}
	err = st.Send(&healthpb.HealthCheckRequestOrEndpointHealthResponse{RequestType: &healthpb.HealthCheckRequestOrEndpointHealthResponse_HealthCheckRequest{
		HealthCheckRequest: &healthpb.HealthCheckRequest{Node: p.node, Capability: &healthpb.Capability{
			HealthCheckProtocols: []healthpb.Capability_Protocol{healthpb.Capability_HTTP, healthpb.Capability_TCP}}},
	}})
	if err != nil {
		return
	}
	specs := make(chan spec, 1)
	errc := make(chan error, 1)
	go func() {
		for {
			s, err := st.Recv()
			if err != nil {
				errc <- err
				return
			}
			sp := parseSpec(s)
			select {
			case <-specs: // only the newest specifier matters
			default:
			}
			specs <- sp
		}
	}()
	p.mu.Lock()
	p.connected = true
	p.mu.Unlock()
	checkT := time.NewTicker(time.Hour)
	reportT := time.NewTicker(time.Hour)
	defer checkT.Stop()
	defer reportT.Stop()
	var cur spec
	var reportEvery, checkEvery time.Duration
	for {
		select {
		case <-ctx.Done():
			return
		case <-errc:
			return
		case sp := <-specs:
			cur = sp
			p.mu.Lock()
			p.assigned, p.reported = sp.assigned, false
			p.mu.Unlock()
			// Like Envoy, re-arm the report timer only when the period
			// changes (or on the first specifier); a new assignment alone
			// must not delay the next report.
			if sp.reportT != reportEvery {
				reportEvery = sp.reportT
				reportT.Reset(sp.reportT)
			}
			if sp.check != checkEvery {
				checkEvery = sp.check
				checkT.Reset(sp.check)
			}
		case <-checkT.C:
			// One simulated probe per assigned endpoint per check interval.
			p.f.probes.Add(int64(len(cur.assigned)))
		case <-reportT.C:
			if err := st.Send(p.report(cur.assigned)); err != nil {
				return
			}
			p.f.reports.Add(1)
			p.mu.Lock()
			p.reported = true
			p.mu.Unlock()
		}
	}
}

func parseSpec(s *healthpb.HealthCheckSpecifier) spec {
	sp := spec{assigned: map[Key]locality{}, check: 5 * time.Second, reportT: time.Second}
	if d := s.GetInterval().AsDuration(); d > 0 {
		sp.reportT = d
	}
	first := true
	for _, c := range s.GetClusterHealthChecks() {
		for _, hc := range c.GetHealthChecks() {
			if d := hc.GetInterval().AsDuration(); d > 0 && (first || d < sp.check) {
				sp.check, first = d, false
			}
		}
		for _, le := range c.GetLocalityEndpoints() {
			for _, e := range le.GetEndpoints() {
				sa := e.GetAddress().GetSocketAddress()
				loc := locality{Region: le.GetLocality().GetRegion(), Zone: le.GetLocality().GetZone(), SubZone: le.GetLocality().GetSubZone()}
				sp.assigned[Key{Cluster: c.GetClusterName(), Addr: sa.GetAddress(), Port: sa.GetPortValue()}] = loc
			}
		}
	}
	return sp
}

// report answers every assigned check from the truth table, grouped by
// cluster and locality as Envoy does.
func (p *proxy) report(assigned map[Key]locality) *healthpb.HealthCheckRequestOrEndpointHealthResponse {
	type lkey struct{ cluster, region, zone, sub string }
	groups := map[lkey]*healthpb.LocalityEndpointsHealth{}
	byCluster := map[string]*healthpb.ClusterEndpointsHealth{}
	resp := &healthpb.EndpointHealthResponse{}
	for k, loc := range assigned {
		status := corepb.HealthStatus_HEALTHY
		if !p.f.truth(k) {
			status = corepb.HealthStatus_UNHEALTHY
		}
		ch := byCluster[k.Cluster]
		if ch == nil {
			ch = &healthpb.ClusterEndpointsHealth{ClusterName: k.Cluster}
			byCluster[k.Cluster] = ch
			resp.ClusterEndpointsHealth = append(resp.ClusterEndpointsHealth, ch)
		}
		lk := lkey{k.Cluster, loc.Region, loc.Zone, loc.SubZone}
		g := groups[lk]
		if g == nil {
			g = &healthpb.LocalityEndpointsHealth{Locality: &corepb.Locality{Region: loc.Region, Zone: loc.Zone, SubZone: loc.SubZone}}
			groups[lk] = g
			ch.LocalityEndpointsHealth = append(ch.LocalityEndpointsHealth, g)
		}
		g.EndpointsHealth = append(g.EndpointsHealth, &healthpb.EndpointHealth{
			Endpoint: &endpointpb.Endpoint{Address: &corepb.Address{Address: &corepb.Address_SocketAddress{SocketAddress: &corepb.SocketAddress{
				Address: k.Addr, PortSpecifier: &corepb.SocketAddress_PortValue{PortValue: k.Port}}}}},
			HealthStatus: status,
		})
	}
	return &healthpb.HealthCheckRequestOrEndpointHealthResponse{RequestType: &healthpb.HealthCheckRequestOrEndpointHealthResponse_EndpointHealthResponse{EndpointHealthResponse: resp}}
}

// View is the fleet's state at one instant.
type View struct {
	Connected  int     // proxies with a live stream
	Covered    int     // expected endpoints assigned to a connected proxy that has reported
	Assigned   int     // Σ assignments over connected proxies (= probes per check interval)
	MaxLoad    int     // most endpoints on one connected proxy
	MeanLoad   float64 // mean over connected proxies
	MinChecker int     // fewest checkers on a covered expected endpoint
}

// View computes coverage against the expected endpoints.
func (f *Fleet) View(expected map[Key]bool) View {
	var v View
	checkers := make(map[Key]int, len(expected))
	for _, p := range f.clients {
		p.mu.Lock()
		if p.connected {
			v.Connected++
			n := len(p.assigned)
			v.Assigned += n
			v.MaxLoad = max(v.MaxLoad, n)
			if p.reported {
				for k := range p.assigned {
					checkers[k]++
				}
			}
		}
		p.mu.Unlock()
	}
	v.MinChecker = -1
	for k := range expected {
		if c := checkers[k]; c > 0 {
			v.Covered++
			if v.MinChecker < 0 || c < v.MinChecker {
				v.MinChecker = c
			}
		}
	}
	if v.MinChecker < 0 {
		v.MinChecker = 0
	}
	if v.Connected > 0 {
		v.MeanLoad = float64(v.Assigned) / float64(v.Connected)
	}
	return v
}
