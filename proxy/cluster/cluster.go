// Package cluster holds upstream clusters: endpoints, load balancing,
// connection pools, circuit breakers and outlier detection. A Cluster is
// built from an Envoy Cluster resource; its endpoints are swapped atomically
// on EDS updates, so the request path reads them without locks.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/sidemesh/sidemesh/proxy/stats"
)

// Default circuit breaker thresholds (Envoy's).
const (
	defaultMaxConnections = 1024
	defaultMaxPending     = 1024
	defaultMaxRequests    = 1024
	defaultMaxRetries     = 3
)

// ErrOverflow means a circuit breaker refused the request.
var ErrOverflow = errors.New("circuit breaker open")

// Cluster is one upstream cluster.
type Cluster struct {
	Name    string
	EDSName string // CLA name to subscribe to; empty for STATIC clusters
	Policy  int
	HTTP2   bool
	Proto   *clusterv3.Cluster
	Stats   *stats.Cluster
	// Transport serves HTTP/2 clusters and upgrades; h1 serves plain
	// HTTP/1.1 requests.
	Transport   *http.Transport
	h1          *h1Transport
	tkey        transportKey
	panicPct    float64
	ringSize    int
	maxRequests int64
	maxPending  int64
	maxRetries  int64
	budgetPct   float64 // retry budget: % of active requests; 0 = none
	budgetMin   int64
	trackPend   bool
	outlier     *outlierConfig

	hosts   atomic.Pointer[HostSet]
	rr      atomic.Uint64
	active  atomic.Int64
	pending atomic.Int64
	retries atomic.Int64
	cxOpen  atomic.Int64
}

type transportKey struct {
	h2       bool
	connect  time.Duration
	idle     time.Duration
	maxConns int
}

type outlierConfig struct {
	consec5xx, consecGw   int32
	enforce5xx, enforceGw bool
	base, maxEject        time.Duration
	maxPct                int
}

// Build compiles a Cluster resource. prev (may be nil) is the cluster of the
// same name currently serving: its connection pool is reused when the
// connection settings did not change.
func Build(c *clusterv3.Cluster, prev *Cluster, m *stats.Metrics) (*Cluster, error) {
	cl := &Cluster{Name: c.GetName(), Proto: c, panicPct: 50, ringSize: 1024,
		maxRequests: defaultMaxRequests, maxPending: defaultMaxPending, maxRetries: defaultMaxRetries}
	if prev != nil {
		cl.Stats = prev.Stats
	} else {
		cl.Stats = m.Cluster(c.GetName())
	}
	switch c.GetType() {
	case clusterv3.Cluster_EDS:
		cl.EDSName = c.GetEdsClusterConfig().GetServiceName()
		if cl.EDSName == "" {
			cl.EDSName = c.GetName()
		}
		if ec := c.GetEdsClusterConfig().GetEdsConfig(); ec != nil && ec.GetAds() == nil && ec.GetSelf() == nil {
			return nil, fmt.Errorf("cluster %q: eds_cluster_config.eds_config must be ads or self (only ADS is supported)", c.GetName())
		}
	case clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
		if c.GetLoadAssignment() == nil {
			return nil, fmt.Errorf("cluster %q: type %s needs load_assignment", c.GetName(), c.GetType())
		}
	default:
		return nil, fmt.Errorf("cluster %q: unsupported discovery type %s", c.GetName(), c.GetType())
	}
	switch c.GetLbPolicy() {
	case clusterv3.Cluster_ROUND_ROBIN:
		cl.Policy = RoundRobin
	case clusterv3.Cluster_LEAST_REQUEST:
		cl.Policy = LeastRequest
	case clusterv3.Cluster_RING_HASH, clusterv3.Cluster_MAGLEV:
		cl.Policy = RingHash
		if rs := c.GetRingHashLbConfig().GetMinimumRingSize(); rs != nil {
			cl.ringSize = int(min(rs.GetValue(), 1<<20))
		}
	case clusterv3.Cluster_RANDOM:
		cl.Policy = Random
	default:
		return nil, fmt.Errorf("cluster %q: unsupported lb_policy %s", c.GetName(), c.GetLbPolicy())
	}
	if pt := c.GetCommonLbConfig().GetHealthyPanicThreshold(); pt != nil {
		cl.panicPct = pt.GetValue()
	}
	key := transportKey{connect: 5 * time.Second, idle: time.Hour, maxConns: 0}
	if d := c.GetConnectTimeout(); d != nil {
		key.connect = d.AsDuration()
	}
	if d := c.GetCommonHttpProtocolOptions().GetIdleTimeout(); d != nil {
		key.idle = d.AsDuration()
	}
	cl.HTTP2 = c.GetHttp2ProtocolOptions() != nil
	if a, ok := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]; ok {
		var po httpv3.HttpProtocolOptions
		if err := a.UnmarshalTo(&po); err != nil {
			return nil, fmt.Errorf("cluster %q: typed_extension_protocol_options: %w", c.GetName(), err)
		}
		if po.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil {
			cl.HTTP2 = true
		}
		if po.GetUseDownstreamProtocolConfig() != nil && po.GetUseDownstreamProtocolConfig().GetHttp2ProtocolOptions() != nil {
			cl.HTTP2 = true
		}
		if d := po.GetCommonHttpProtocolOptions().GetIdleTimeout(); d != nil {
			key.idle = d.AsDuration()
		}
	}
	key.h2 = cl.HTTP2
	for _, t := range c.GetCircuitBreakers().GetThresholds() {
		if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
			continue
		}
		if v := t.GetMaxConnections(); v != nil {
			key.maxConns = int(v.GetValue())
			cl.trackPend = true
		}
		if v := t.GetMaxPendingRequests(); v != nil {
			cl.maxPending = int64(v.GetValue())
			cl.trackPend = true
		}
		if v := t.GetMaxRequests(); v != nil {
			cl.maxRequests = int64(v.GetValue())
		}
		if v := t.GetMaxRetries(); v != nil {
			cl.maxRetries = int64(v.GetValue())
		}
		if rb := t.GetRetryBudget(); rb != nil {
			// Envoy: a budget replaces max_retries; defaults 20% and 3.
			cl.budgetPct, cl.budgetMin = 20, 3
			if p := rb.GetBudgetPercent(); p != nil {
				cl.budgetPct = p.GetValue()
			}
			if m := rb.GetMinRetryConcurrency(); m != nil {
				cl.budgetMin = int64(m.GetValue())
			}
		}
	}
	if od := c.GetOutlierDetection(); od != nil {
		o := &outlierConfig{consec5xx: 5, consecGw: 5, enforce5xx: true, base: 30 * time.Second, maxEject: 300 * time.Second, maxPct: 10}
		if v := od.GetConsecutive_5Xx(); v != nil {
			o.consec5xx = int32(v.GetValue())
		}
		if v := od.GetConsecutiveGatewayFailure(); v != nil {
			o.consecGw = int32(v.GetValue())
		}
		if v := od.GetEnforcingConsecutive_5Xx(); v != nil {
			o.enforce5xx = v.GetValue() > 0
		}
		if v := od.GetEnforcingConsecutiveGatewayFailure(); v != nil {
			o.enforceGw = v.GetValue() > 0
		}
		if v := od.GetBaseEjectionTime(); v != nil {
			o.base = v.AsDuration()
		}
		if v := od.GetMaxEjectionTime(); v != nil {
			o.maxEject = v.AsDuration()
		}
		if v := od.GetMaxEjectionPercent(); v != nil {
			o.maxPct = int(v.GetValue())
		}
		cl.outlier = o
	}
	cl.tkey = key
	if prev != nil && prev.tkey == key {
		cl.Transport, cl.h1 = prev.Transport, prev.h1
	} else {
		cl.Transport, cl.h1 = cl.newTransport(key)
	}
	if c.GetLoadAssignment() != nil && c.GetType() != clusterv3.Cluster_EDS {
		hs, err := cl.BuildHosts(c.GetLoadAssignment(), prev)
		if err != nil {
			return nil, fmt.Errorf("cluster %q: load_assignment: %w", c.GetName(), err)
		}
		cl.SetHosts(hs)
	} else if prev != nil {
		cl.SetHosts(prev.Hosts())
	} else {
		cl.SetHosts(&HostSet{healthy: newPool(nil, 0), all: newPool(nil, 0)})
	}
	return cl, nil
}

// SharesTransport reports whether c reuses old's connection pool.
func (c *Cluster) SharesTransport(old *Cluster) bool {
	return old != nil && c.Transport == old.Transport
}

// BuildHosts compiles a CLA for this cluster without installing it, reusing
// host state from prev (or from c itself when prev is nil).
func (c *Cluster) BuildHosts(cla *endpointv3.ClusterLoadAssignment, prev *Cluster) (*HostSet, error) {
	var ph *HostSet
	if prev != nil {
		ph = prev.Hosts()
	} else if h := c.Hosts(); h != nil {
		ph = h
	}
	pct := c.panicPct
	if v := cla.GetPolicy().GetOverprovisioningFactor(); v != nil && v.GetValue() == 0 {
		pct = 0
	}
	return BuildHosts(cla, ph, pct, c.ringSize)
}

// SetHosts installs a new endpoint set; requests already running keep theirs.
func (c *Cluster) SetHosts(hs *HostSet) {
	c.hosts.Store(hs)
	c.Stats.Members.Set(float64(len(hs.All)))
	c.Stats.Healthy.Set(float64(hs.Healthy()))
}

// Hosts is the current endpoint set.
func (c *Cluster) Hosts() *HostSet { return c.hosts.Load() }

// Pick chooses an upstream host (nil: none available).
func (c *Cluster) Pick(hash uint64, hasHash bool, avoid *Host) *Host {
	return c.hosts.Load().Pick(c.Policy, &c.rr, hash, hasHash, avoid)
}

// Acquire applies the max_requests circuit breaker; call Release when done.
func (c *Cluster) Acquire() bool {
	if c.active.Add(1) > c.maxRequests {
		c.active.Add(-1)
		c.Stats.Overflow.Inc()
		return false
	}
	return true
}

// Release ends a request admitted by Acquire.
func (c *Cluster) Release() { c.active.Add(-1) }

// AcquireRetry applies the max_retries circuit breaker, or the retry budget
// (a share of the requests in flight) when one is configured.
func (c *Cluster) AcquireRetry() bool {
	limit := c.maxRetries
	if c.budgetPct > 0 {
		limit = max(c.budgetMin, int64(float64(c.active.Load())*c.budgetPct/100))
	}
	if c.retries.Add(1) > limit {
		c.retries.Add(-1)
		c.Stats.RetryOverflow.Inc()
		return false
	}
	return true
}

// ReleaseRetry ends a retry admitted by AcquireRetry.
func (c *Cluster) ReleaseRetry() { c.retries.Add(-1) }

// TracksPending reports whether requests must be counted while they wait for
// a connection (only when max_connections or max_pending_requests is set).
func (c *Cluster) TracksPending() bool { return c.trackPend }

// AcquirePending applies max_pending_requests; Release with ReleasePending.
func (c *Cluster) AcquirePending() bool {
	if c.pending.Add(1) > c.maxPending {
		c.pending.Add(-1)
		c.Stats.Overflow.Inc()
		return false
	}
	return true
}

// ReleasePending ends the wait for a connection.
func (c *Cluster) ReleasePending() { c.pending.Add(-1) }

// Begin marks a request as in flight on h.
func (c *Cluster) Begin(h *Host) { h.active.Add(1) }

// End records the outcome of a request to h for least-request and outlier
// detection: code is the HTTP status, or 0 when no response was received
// (connect failure, reset, timeout), which counts as a gateway failure.
func (c *Cluster) End(h *Host, code int) {
	h.active.Add(-1)
	h.rqTotal.Add(1)
	gw := code == 0 || code == 502 || code == 503 || code == 504
	if code != 0 && code < 500 {
		h.consec5xx.Store(0)
		h.consecGw.Store(0)
		return
	}
	h.rqError.Add(1)
	o := c.outlier
	if o == nil {
		return
	}
	n5 := h.consec5xx.Add(1)
	var ng int32
	if gw {
		ng = h.consecGw.Add(1)
	} else {
		h.consecGw.Store(0)
	}
	if (o.enforce5xx && o.consec5xx > 0 && n5 >= o.consec5xx) || (o.enforceGw && o.consecGw > 0 && ng >= o.consecGw) {
		c.eject(h)
	}
}

func (c *Cluster) eject(h *Host) {
	now := time.Now()
	if h.Ejected(now.UnixNano()) {
		return
	}
	hs := c.hosts.Load()
	ejected := 0
	for _, o := range hs.All {
		if o.Ejected(now.UnixNano()) {
			ejected++
		}
	}
	// Envoy ejects at least one host whatever max_ejection_percent says.
	if ejected > 0 && (ejected+1)*100 > c.outlier.maxPct*len(hs.All) {
		return
	}
	n := h.ejections.Add(1)
	d := c.outlier.base * time.Duration(n)
	if d > c.outlier.maxEject {
		d = c.outlier.maxEject
	}
	h.ejectedUntil.Store(now.Add(d).UnixNano())
	h.consec5xx.Store(0)
	h.consecGw.Store(0)
	c.Stats.Ejections.Inc()
}

// RoundTrip sends one request to the host in req.URL. Upgrade requests and
// HTTP/2 clusters go through net/http; plain HTTP/1.1 through the pool.
func (c *Cluster) RoundTrip(req *http.Request, upgrade bool) (*http.Response, error) {
	if c.HTTP2 || upgrade || c.tkey.maxConns > 0 {
		return c.Transport.RoundTrip(req)
	}
	return c.h1.RoundTrip(req)
}

func (c *Cluster) newTransport(k transportKey) (*http.Transport, *h1Transport) {
	d := &net.Dialer{Timeout: k.connect, KeepAlive: 30 * time.Second}
	st := c.Stats
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			st.CxFail.Inc()
			return nil, &ConnectError{Err: err}
		}
		st.CxTotal.Inc()
		st.CxActive.Inc()
		return &countedConn{Conn: conn, gauge: st}, nil
	}
	t := &http.Transport{
		DialContext:         dial,
		MaxIdleConnsPerHost: 4096,
		MaxConnsPerHost:     k.maxConns,
		IdleConnTimeout:     k.idle,
		DisableCompression:  true,
		WriteBufferSize:     16 << 10,
		ReadBufferSize:      16 << 10,
	}
	p := new(http.Protocols)
	if k.h2 {
		p.SetUnencryptedHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	t.Protocols = p
	return t, newH1Transport(dial, k.idle)
}

// ConnectError marks a failure to connect to the upstream host.
type ConnectError struct{ Err error }

func (e *ConnectError) Error() string { return "upstream connect error: " + e.Err.Error() }
func (e *ConnectError) Unwrap() error { return e.Err }

type countedConn struct {
	net.Conn
	gauge *stats.Cluster
	once  sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.gauge.CxActive.Dec() })
	return c.Conn.Close()
}

// Retire closes the idle connections of a cluster that was removed or
// replaced, after in-flight requests had time to finish.
func (c *Cluster) Retire(after time.Duration) {
	t, h1 := c.Transport, c.h1
	time.AfterFunc(after, func() { t.CloseIdleConnections(); h1.CloseIdleConnections() })
}

// MaxRequests is the max_requests circuit breaker threshold.
func (c *Cluster) MaxRequests() int64 { return c.maxRequests }
