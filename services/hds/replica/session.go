package replica

import (
	"cmp"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	healthv3 "github.com/envoyproxy/go-control-plane/envoy/service/health/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sidemesh/sidemesh/services/hds/catalog"
	"github.com/sidemesh/sidemesh/services/hds/ring"
	"github.com/sidemesh/sidemesh/services/hds/server"
	"github.com/sidemesh/sidemesh/services/hds/verdict"
)

// MetadataProtocols is the node metadata key (a list of strings: HTTP, TCP,
// GRPC) by which a client adds check protocols to its Capability list;
// Envoy's Capability enum has no gRPC value although Envoy (and our proxy)
// can run gRPC checks.
const MetadataProtocols = "hds_protocols"

func capsOf(node *corev3.Node, protos []healthv3.Capability_Protocol) uint8 {
	var caps uint8
	for _, p := range protos {
		switch p {
		case healthv3.Capability_HTTP:
			caps |= uint8(catalog.HTTP)
		case healthv3.Capability_TCP:
			caps |= uint8(catalog.TCP)
		}
	}
	if lv := node.GetMetadata().GetFields()[MetadataProtocols].GetListValue(); lv != nil {
		for _, v := range lv.GetValues() {
			switch v.GetStringValue() {
			case "HTTP":
				caps |= uint8(catalog.HTTP)
			case "TCP":
				caps |= uint8(catalog.TCP)
			case "GRPC":
				caps |= uint8(catalog.GRPC)
			}
		}
	}
	if caps == 0 {
		// A client that lists nothing gets Envoy's fixed set.
		caps = uint8(catalog.HTTP | catalog.TCP)
	}
	return caps
}

// Connect implements server.Hub.
func (r *Replica) Connect(node *corev3.Node, protos []healthv3.Capability_Protocol) (server.Session, error) {
	s := &session{
		r: r, id: node.GetId(), zone: node.GetLocality().GetZone(), caps: capsOf(node, protos),
		stream:  r.seq.Add(1),
		changed: make(chan struct{}, 1), done: make(chan struct{}),
		assigned: map[string]time.Time{}, warm: map[string]bool{},
		lastReport: time.Now(),
	}
	r.mu.Lock()
	r.sessions[s.id] = s
	r.mu.Unlock()
	r.ring.PublishProxy(s.entry(false))
	r.log.Info("proxy connected", "proxy", s.id, "zone", s.zone, "stream", s.stream)
	return s, nil
}

// Fetch implements server.Hub.
func (r *Replica) Fetch(node *corev3.Node) *healthv3.HealthCheckSpecifier {
	var keys []string
	if a := r.assignment(); a != nil {
		keys = a.ByProxy[node.GetId()]
	}
	return r.specifier(keys)
}

type session struct {
	r      *Replica
	id     string
	zone   string
	caps   uint8
	stream uint64

	changed chan struct{}
	done    chan struct{}
	endOnce sync.Once

	mu         sync.Mutex
	assigned   map[string]time.Time // endpoint → when first sent on this stream
	warm       map[string]bool      // endpoint → a real result was seen
	lastReport time.Time
	stale      bool
	closed     bool
}

// entry is this stream's live proxy entry, stamped now.
func (s *session) entry(stale bool) ring.ProxyEntry {
	return ring.ProxyEntry{ID: s.id, Replica: s.r.Name(), Stream: s.stream, Zone: s.zone, Caps: s.caps, Live: true, Stale: stale, TS: s.r.state.Now()}
}

func (s *session) Changed() <-chan struct{} { return s.changed }
func (s *session) Done() <-chan struct{}    { return s.done }

func (s *session) notify() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

func (s *session) end(bool) { s.endOnce.Do(func() { close(s.done) }) }

// Specifier implements server.Session.
func (s *session) Specifier() *healthv3.HealthCheckSpecifier {
	var keys []string
	if a := s.r.assignment(); a != nil {
		keys = a.ByProxy[s.id]
	}
	return s.r.specifier(keys)
}

// Sent remembers when each endpoint was first handed to this stream.
func (s *session) Sent(spec *healthv3.HealthCheckSpecifier) {
	now := time.Now()
	in := map[string]bool{}
	for _, c := range spec.GetClusterHealthChecks() {
		for _, le := range c.GetLocalityEndpoints() {
			for _, e := range le.GetEndpoints() {
				sa := e.GetAddress().GetSocketAddress()
				in[c.GetClusterName()+"/"+net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10))] = true
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range in {
		if _, ok := s.assigned[k]; !ok {
			s.assigned[k] = now
		}
	}
	for k := range s.assigned {
		if !in[k] {
			delete(s.assigned, k)
			delete(s.warm, k)
		}
	}
	s.r.met.specifiersSent.Inc()
}

func statusOf(h corev3.HealthStatus) verdict.Status {
	switch h {
	case corev3.HealthStatus_HEALTHY, corev3.HealthStatus_DEGRADED:
		return verdict.Healthy
	case corev3.HealthStatus_UNHEALTHY, corev3.HealthStatus_DRAINING:
		return verdict.Unhealthy
	case corev3.HealthStatus_TIMEOUT:
		return verdict.Timeout
	}
	return verdict.None // UNKNOWN: not checked yet (our proxy says so)
}

// Report turns one EndpointHealthResponse into vote changes.
func (s *session) Report(resp *healthv3.EndpointHealthResponse) {
	now := time.Now()
	ix := s.r.snap.Load()
	got := map[string]verdict.Status{}
	for _, c := range resp.GetClusterEndpointsHealth() {
		for _, l := range c.GetLocalityEndpointsHealth() {
			for _, e := range l.GetEndpointsHealth() {
				if k, ok := reportKey(c.GetClusterName(), e); ok {
					got[k] = statusOf(e.GetHealthStatus())
				}
			}
		}
	}
	s.mu.Lock()
	if len(resp.GetClusterEndpointsHealth()) == 0 && len(resp.GetEndpointsHealth()) > 0 {
		// Old clients fill only the flat list: match by address among this
		// stream's endpoints.
		byAddr := map[string][]string{}
		for k := range s.assigned {
			if info, ok := ix.eps[k]; ok {
				a := net.JoinHostPort(info.ep.Key.Address, strconv.FormatUint(uint64(info.ep.Key.Port), 10))
				byAddr[a] = append(byAddr[a], k)
			}
		}
		for _, e := range resp.GetEndpointsHealth() {
			if k, ok := reportKey("", e); ok {
				for _, full := range byAddr[k[1:]] {
					got[full] = statusOf(e.GetHealthStatus())
				}
			}
		}
	}
	type write struct {
		ep string
		st verdict.Status
	}
	var writes []write
	for k, st := range got {
		at, assigned := s.assigned[k]
		info, known := ix.eps[k]
		if !assigned || !known || st == verdict.None {
			continue
		}
		if st != verdict.Unhealthy {
			s.warm[k] = true
		} else if !s.warm[k] {
			// Envoy creates hosts UNHEALTHY and reports that until its
			// first check completes: not a failure yet.
			if now.Sub(at) < info.cluster.Warmup(s.r.cfg.ReportInterval) {
				continue
			}
			s.warm[k] = true
		}
		writes = append(writes, write{k, st})
	}
	assigned := make(map[string]bool, len(s.assigned))
	for k := range s.assigned {
		assigned[k] = true
	}
	s.lastReport = now
	wasStale := s.stale
	s.stale = false
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return
	}
	s.r.met.reports.Inc()
	if wasStale {
		s.r.ring.PublishProxy(s.entry(false))
	}
	me := s.r.Name()
	var batch []ring.VoteEntry
	for _, w := range writes {
		if cur, ok := s.r.state.Vote(w.ep, s.id); ok && cur.Status == uint8(w.st) {
			continue
		}
		batch = append(batch, ring.VoteEntry{Endpoint: w.ep, Checker: s.id, Status: uint8(w.st), TS: s.r.state.Now(), Origin: me})
	}
	// Withdraw votes on endpoints this proxy no longer checks.
	for _, v := range s.r.state.VotesOf(s.id) {
		if !assigned[v.Endpoint] {
			if _, still := got[v.Endpoint]; !still {
				batch = append(batch, ring.VoteEntry{Endpoint: v.Endpoint, Checker: s.id, Status: 0, TS: s.r.state.Now(), Origin: me})
			}
		}
	}
	s.r.ring.PublishVotes(batch)
}

func reportKey(cluster string, e *healthv3.EndpointHealth) (string, bool) {
	sa := e.GetEndpoint().GetAddress().GetSocketAddress()
	if sa == nil {
		return "", false
	}
	ip, err := catalog.ParseIP(sa.GetAddress())
	if err != nil {
		return "", false
	}
	return cluster + "/" + net.JoinHostPort(ip, strconv.FormatUint(uint64(sa.GetPortValue()), 10)), true
}

// sweep runs every report interval.
func (s *session) sweep() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	becameStale := !s.stale && time.Since(s.lastReport) > s.r.cfg.StaleAfter
	if becameStale {
		s.stale = true
	}
	stale := s.stale
	s.mu.Unlock()
	cur, ok := s.r.state.Proxy(s.id)
	mine := ok && cur.Replica == s.r.Name() && cur.Stream == s.stream
	switch {
	case !ok || !cur.Live:
		// Only Close tombstones our own stream, so this tombstone came from
		// an older stream elsewhere and raced our connect: re-assert.
		s.r.ring.PublishProxy(s.entry(stale))
	case mine && cur.Stale != stale:
		if becameStale {
			s.r.log.Warn("proxy stopped reporting; its votes are stale", "proxy", s.id, "silent", time.Since(s.lastReportAt()).Round(time.Millisecond))
		}
		s.r.ring.PublishProxy(s.entry(stale))
	}
	// A live entry of another stream is a newer connection: yield to it.
}

// Close ends the stream: tombstone our entry unless a newer stream (here or
// on another replica) already owns the proxy.
func (s *session) Close() {
	s.end(false)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	s.r.mu.Lock()
	if s.r.sessions[s.id] == s {
		delete(s.r.sessions, s.id)
	}
	s.r.mu.Unlock()
	if cur, ok := s.r.state.Proxy(s.id); ok && cur.Replica == s.r.Name() && cur.Stream == s.stream {
		e := s.entry(false)
		e.Live = false
		s.r.ring.PublishProxy(e)
	}
	s.r.log.Info("proxy disconnected", "proxy", s.id, "stream", s.stream)
	s.r.Kick()
}

// specifier builds the complete HealthCheckSpecifier for a set of endpoint
// keys, in a canonical order so that every replica sends byte-identical
// specifiers for the same assignment.
func (r *Replica) specifier(keys []string) *healthv3.HealthCheckSpecifier {
	ix := r.snap.Load()
	type group struct {
		loc *corev3.Locality
		eps []catalog.Endpoint
	}
	byCluster := map[string]map[string]*group{}
	for _, k := range keys {
		info, ok := ix.eps[k]
		if !ok {
			continue
		}
		lk := info.ep.Locality.GetRegion() + "\x00" + info.ep.Locality.GetZone() + "\x00" + info.ep.Locality.GetSubZone()
		m := byCluster[info.cluster.Name]
		if m == nil {
			m = map[string]*group{}
			byCluster[info.cluster.Name] = m
		}
		g := m[lk]
		if g == nil {
			g = &group{loc: info.ep.Locality}
			m[lk] = g
		}
		g.eps = append(g.eps, info.ep)
	}
	spec := &healthv3.HealthCheckSpecifier{Interval: durationpb.New(r.cfg.ReportInterval)}
	for _, c := range ix.snap.Clusters {
		m, ok := byCluster[c.Name]
		if !ok {
			continue
		}
		chc := &healthv3.ClusterHealthCheck{
			ClusterName:            c.Name,
			HealthChecks:           []*corev3.HealthCheck{c.HealthCheck},
			TransportSocketMatches: c.TransportSocketMatches,
		}
		lks := make([]string, 0, len(m))
		for lk := range m {
			lks = append(lks, lk)
		}
		slices.Sort(lks)
		for _, lk := range lks {
			g := m[lk]
			slices.SortFunc(g.eps, func(a, b catalog.Endpoint) int {
				return cmp.Compare(a.Key.Address+"|"+strconv.Itoa(int(a.Key.Port)), b.Key.Address+"|"+strconv.Itoa(int(b.Key.Port)))
			})
			le := &healthv3.LocalityEndpoints{Locality: g.loc}
			for _, e := range g.eps {
				le.Endpoints = append(le.Endpoints, &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address: e.Key.Address, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: e.Key.Port},
					}}},
					HealthCheckConfig: e.HealthCheckConfig,
				})
			}
			chc.LocalityEndpoints = append(chc.LocalityEndpoints, le)
		}
		spec.ClusterHealthChecks = append(spec.ClusterHealthChecks, chc)
	}
	return spec
}

func (s *session) lastReportAt() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastReport
}
