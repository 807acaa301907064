package cluster

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
)

// Host is one upstream endpoint. Hosts survive EDS and cluster updates when
// their address stays, so outlier and load state carry over.
type Host struct {
	Addr     string
	Zone     string
	Weight   uint32 // effective weight, locality share included
	Health   corev3.HealthStatus
	Priority uint32

	active       atomic.Int64 // in-flight requests (least request)
	ejectedUntil atomic.Int64 // unix nanos; 0 when not ejected
	ejections    atomic.Int32
	consec5xx    atomic.Int32
	consecGw     atomic.Int32
	rqTotal      atomic.Uint64
	rqError      atomic.Uint64
}

// Active is the number of in-flight requests to the host.
func (h *Host) Active() int64 { return h.active.Load() }

// Ejected reports whether outlier detection has the host ejected at now.
func (h *Host) Ejected(now int64) bool {
	u := h.ejectedUntil.Load()
	return u != 0 && now < u
}

// Healthy reports the EDS view: HEALTHY, UNKNOWN and DEGRADED take traffic.
func (h *Host) Healthy() bool {
	switch h.Health {
	case corev3.HealthStatus_UNKNOWN, corev3.HealthStatus_HEALTHY, corev3.HealthStatus_DEGRADED:
		return true
	}
	return false
}

// Stats returns counters for /clusters.
func (h *Host) Stats() (total, errors uint64) { return h.rqTotal.Load(), h.rqError.Load() }

// pool is a set of candidate hosts with the precomputed structures each LB
// policy needs; it is immutable once built.
type pool struct {
	hosts   []*Host
	cum     []uint64 // cumulative weights for weighted random
	total   uint64
	uniform bool
	sched   []int32 // weighted round-robin schedule (indices into hosts)
	ring    []ringEntry
}

type ringEntry struct {
	hash uint64
	host *Host
}

// HostSet is a cluster's endpoints at one moment.
type HostSet struct {
	All     []*Host
	healthy *pool
	all     *pool
	panic   bool
}

// Healthy is the number of hosts EDS says can take traffic.
func (s *HostSet) Healthy() int {
	if s.healthy == nil {
		return 0
	}
	return len(s.healthy.hosts)
}

// BuildHosts turns a ClusterLoadAssignment into a HostSet, reusing Host
// objects of prev with the same address. panicPct is the healthy panic threshold.
func BuildHosts(cla *endpointv3.ClusterLoadAssignment, prev *HostSet, panicPct float64, ringSize int) (*HostSet, error) {
	old := map[string]*Host{}
	if prev != nil {
		for _, h := range prev.All {
			old[h.Addr] = h
		}
	}
	hs := &HostSet{}
	seen := map[string]bool{}
	bestPrio := uint32(math.MaxUint32)
	type raw struct {
		h *Host
		w float64
	}
	var raws []raw
	anyLocalityWeight := false
	for _, l := range cla.GetEndpoints() {
		if l.GetLoadBalancingWeight().GetValue() > 0 {
			anyLocalityWeight = true
		}
	}
	for li, l := range cla.GetEndpoints() {
		lw := 1.0
		if anyLocalityWeight {
			lw = float64(l.GetLoadBalancingWeight().GetValue())
			if lw == 0 {
				continue // Envoy ignores a locality without weight once any has one
			}
		}
		var sum float64
		for _, e := range l.GetLbEndpoints() {
			sum += float64(max(e.GetLoadBalancingWeight().GetValue(), 1))
		}
		for ei, e := range l.GetLbEndpoints() {
			addr, err := endpointAddr(e)
			if err != nil {
				return nil, fmt.Errorf("endpoints[%d].lb_endpoints[%d]: %w", li, ei, err)
			}
			if seen[addr] {
				continue
			}
			seen[addr] = true
			h := old[addr]
			if h == nil {
				h = &Host{Addr: addr}
			} else {
				// Copy so a NACKed or superseded build never mutates live hosts' config.
				nh := &Host{Addr: addr}
				nh.ejectedUntil.Store(h.ejectedUntil.Load())
				nh.ejections.Store(h.ejections.Load())
				nh.consec5xx.Store(h.consec5xx.Load())
				nh.consecGw.Store(h.consecGw.Load())
				nh.rqTotal.Store(h.rqTotal.Load())
				nh.rqError.Store(h.rqError.Load())
				h = nh
			}
			h.Zone = l.GetLocality().GetZone()
			h.Health = e.GetHealthStatus()
			h.Priority = l.GetPriority()
			w := float64(max(e.GetLoadBalancingWeight().GetValue(), 1))
			if anyLocalityWeight {
				w = lw * w / sum
			}
			raws = append(raws, raw{h, w})
			if h.Healthy() && h.Priority < bestPrio {
				bestPrio = h.Priority
			}
		}
	}
	// Integer weights: scale so the smallest effective weight is about 100.
	minW := math.MaxFloat64
	for _, r := range raws {
		minW = min(minW, r.w)
	}
	var healthy, all []*Host
	for _, r := range raws {
		r.h.Weight = uint32(max(1, math.Round(r.w/minW*100)))
		hs.All = append(hs.All, r.h)
		all = append(all, r.h)
		if r.h.Healthy() && r.h.Priority == bestPrio {
			healthy = append(healthy, r.h)
		}
	}
	hs.healthy = newPool(healthy, ringSize)
	hs.all = newPool(all, ringSize)
	if len(all) > 0 && float64(len(healthy))*100 < panicPct*float64(len(all)) {
		hs.panic = true
	}
	return hs, nil
}

func endpointAddr(e *endpointv3.LbEndpoint) (string, error) {
	sa := e.GetEndpoint().GetAddress().GetSocketAddress()
	if sa == nil {
		return "", fmt.Errorf("endpoint.address.socket_address is required")
	}
	if sa.GetAddress() == "" {
		return "", fmt.Errorf("endpoint.address.socket_address.address is empty")
	}
	port := sa.GetPortValue()
	if port == 0 || port > 65535 {
		return "", fmt.Errorf("endpoint %s: port_value %d out of range", sa.GetAddress(), port)
	}
	return joinHostPort(sa.GetAddress(), port), nil
}

func joinHostPort(h string, p uint32) string {
	for i := 0; i < len(h); i++ {
		if h[i] == ':' {
			return "[" + h + "]:" + strconv.Itoa(int(p))
		}
	}
	return h + ":" + strconv.Itoa(int(p))
}

func newPool(hosts []*Host, ringSize int) *pool {
	p := &pool{hosts: hosts, uniform: true}
	if len(hosts) == 0 {
		return p
	}
	p.cum = make([]uint64, len(hosts))
	for i, h := range hosts {
		p.total += uint64(h.Weight)
		p.cum[i] = p.total
		if h.Weight != hosts[0].Weight {
			p.uniform = false
		}
	}
	if !p.uniform {
		p.sched = smoothSchedule(hosts)
	}
	p.ring = buildRing(hosts, p.total, ringSize)
	return p
}

// smoothSchedule is nginx's smooth weighted round robin, unrolled into one
// cycle (weights reduced by their gcd and capped) so picking is one atomic add.
func smoothSchedule(hosts []*Host) []int32 {
	g := uint32(0)
	for _, h := range hosts {
		g = gcd(g, h.Weight)
	}
	ws := make([]int64, len(hosts))
	var total int64
	for i, h := range hosts {
		ws[i] = int64(h.Weight / g)
		total += ws[i]
	}
	if total > 4096 { // keep the cycle short; proportions stay within ~1/4096
		var t2 int64
		for i := range ws {
			ws[i] = max(1, ws[i]*4096/total)
			t2 += ws[i]
		}
		total = t2
	}
	cur := make([]int64, len(hosts))
	out := make([]int32, 0, total)
	for n := int64(0); n < total; n++ {
		best := 0
		for i := range ws {
			cur[i] += ws[i]
			if cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= total
		out = append(out, int32(best))
	}
	return out
}

func gcd(a, b uint32) uint32 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func buildRing(hosts []*Host, total uint64, size int) []ringEntry {
	if size <= 0 {
		size = 1024
	}
	ring := make([]ringEntry, 0, size+len(hosts))
	for _, h := range hosts {
		n := int(math.Ceil(float64(h.Weight) * float64(size) / float64(total)))
		for i := 0; i < n; i++ {
			ring = append(ring, ringEntry{hash: Hash(h.Addr + "_" + strconv.Itoa(i)), host: h})
		}
	}
	sort.Slice(ring, func(i, j int) bool { return ring[i].hash < ring[j].hash })
	return ring
}

// Hash is the hash used for the ring and for request hash keys.
func Hash(s string) uint64 {
	f := fnv.New64a()
	f.Write([]byte(s))
	// fnv alone clusters nearby strings; finish with a 64-bit mixer.
	x := f.Sum64()
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// LB policies.
const (
	RoundRobin = iota
	LeastRequest
	RingHash
	Random
)

func (p *pool) pickRandom() *Host {
	if p.uniform {
		return p.hosts[rand.IntN(len(p.hosts))]
	}
	n := rand.Uint64N(p.total)
	i := sort.Search(len(p.cum), func(i int) bool { return p.cum[i] > n })
	return p.hosts[i]
}

func (p *pool) pick(policy int, rr *atomic.Uint64, hash uint64, hasHash bool) *Host {
	switch policy {
	case RoundRobin:
		i := rr.Add(1)
		if p.uniform {
			return p.hosts[i%uint64(len(p.hosts))]
		}
		return p.hosts[p.sched[i%uint64(len(p.sched))]]
	case LeastRequest:
		a := p.pickRandom()
		if len(p.hosts) == 1 {
			return a
		}
		b := p.pickRandom()
		if b.active.Load() < a.active.Load() {
			return b
		}
		return a
	case RingHash:
		if !hasHash {
			return p.pickRandom()
		}
		i := sort.Search(len(p.ring), func(i int) bool { return p.ring[i].hash >= hash })
		if i == len(p.ring) {
			i = 0
		}
		return p.ring[i].host
	default:
		return p.pickRandom()
	}
}

// Pick chooses a host, avoiding outlier-ejected hosts and (on retries) the
// host tried before when another is available. It returns nil when the
// cluster has no host to use.
func (s *HostSet) Pick(policy int, rr *atomic.Uint64, hash uint64, hasHash bool, avoid *Host) *Host {
	p := s.healthy
	if s.panic || len(p.hosts) == 0 {
		p = s.all
		if !s.panic {
			return nil // no healthy host and not in panic mode: Envoy answers 503
		}
	}
	if len(p.hosts) == 0 {
		return nil
	}
	now := time.Now().UnixNano()
	var h *Host
	for try := 0; try < 4; try++ {
		h = p.pick(policy, rr, hash, hasHash)
		if (h != avoid || len(p.hosts) == 1) && !h.Ejected(now) {
			return h
		}
		if hasHash {
			hash = hash*0x9E3779B97F4A7C15 + 1 // next ring position
		}
	}
	// Every try hit an ejected or avoided host: scan for any usable one.
	for _, c := range p.hosts {
		if c != avoid && !c.Ejected(now) {
			return c
		}
	}
	return h
}
