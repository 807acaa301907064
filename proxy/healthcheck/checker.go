package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// Envoy's defaults.
const (
	defaultNoTrafficInterval = 60 * time.Second
	minInterval              = time.Millisecond
)

// prober runs one attempt; ctx carries HealthCheck.timeout.
type prober interface {
	probe(ctx context.Context, t Target) Result
	// forget drops per-target resources when a host's session ends.
	forget(t Target)
	close()
}

// Options tune a Checker beyond the proto.
type Options struct {
	// HasTraffic reports whether the cluster has carried traffic; Envoy
	// probes a cluster that never did at no_traffic_interval. nil means
	// "never", which is the HDS case (HDS clusters carry no traffic).
	HasTraffic func() bool
	// OnResult observes every probe (stats, logs). Optional.
	OnResult func(t Target, r Result, s State)
	// SourceIP binds probe connections to a local address (Envoy's
	// upstream_bind_config.source_address). Zero: the system's choice.
	SourceIP netip.Addr
}

// dialer is the probe dialer for opts.
func (o Options) dialer() *net.Dialer {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if o.SourceIP.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: o.SourceIP.AsSlice()}
	}
	return d
}

// Checker runs one HealthCheck; it is safe for concurrent use by the
// sessions of many hosts.
type Checker struct {
	hc    *corev3.HealthCheck
	opts  Options
	p     prober
	kind  string
	times intervals
}

type intervals struct {
	timeout, interval, initialJitter, intervalJitter             time.Duration
	jitterPercent                                                uint32
	unhealthy, unhealthyEdge, healthyEdge, noTraffic, noTrafficH time.Duration
	healthyThreshold, unhealthyThreshold                         uint32
}

// New validates hc (PGV rules plus the runtime checks Envoy applies when it
// builds a checker) and builds a Checker.
func New(hc *corev3.HealthCheck, opts Options) (*Checker, error) {
	if hc == nil {
		return nil, errors.New("health check: nil")
	}
	if err := hc.ValidateAll(); err != nil {
		return nil, fmt.Errorf("health check: %w", err)
	}
	c := &Checker{hc: hc, opts: opts}
	var err error
	switch {
	case hc.GetHttpHealthCheck() != nil:
		c.kind = "HTTP"
		c.p, err = newHTTPProber(hc, opts.dialer())
	case hc.GetTcpHealthCheck() != nil:
		c.kind = "TCP"
		c.p, err = newTCPProber(hc.GetTcpHealthCheck(), opts.dialer())
	case hc.GetGrpcHealthCheck() != nil:
		c.kind = "GRPC"
		c.p = newGRPCProber(hc.GetGrpcHealthCheck(), opts.dialer())
	default:
		return nil, errors.New("health check: health_checker: only http_health_check, tcp_health_check and grpc_health_check are supported")
	}
	if err != nil {
		return nil, fmt.Errorf("health check: %w", err)
	}
	c.times = buildIntervals(hc)
	return c, nil
}

func buildIntervals(hc *corev3.HealthCheck) intervals {
	d := func(p interface{ AsDuration() time.Duration }, def time.Duration) time.Duration {
		if v := p.AsDuration(); v > 0 {
			return v
		}
		return def
	}
	iv := intervals{
		timeout:            hc.GetTimeout().AsDuration(),
		interval:           hc.GetInterval().AsDuration(),
		initialJitter:      hc.GetInitialJitter().AsDuration(),
		intervalJitter:     hc.GetIntervalJitter().AsDuration(),
		jitterPercent:      hc.GetIntervalJitterPercent(),
		healthyThreshold:   hc.GetHealthyThreshold().GetValue(),
		unhealthyThreshold: hc.GetUnhealthyThreshold().GetValue(),
	}
	iv.unhealthy = d(hc.GetUnhealthyInterval(), iv.interval)
	iv.unhealthyEdge = d(hc.GetUnhealthyEdgeInterval(), iv.unhealthy)
	iv.healthyEdge = d(hc.GetHealthyEdgeInterval(), iv.interval)
	iv.noTraffic = d(hc.GetNoTrafficInterval(), defaultNoTrafficInterval)
	iv.noTrafficH = d(hc.GetNoTrafficHealthyInterval(), iv.noTraffic)
	// A threshold of 0 would never be reached by the >= comparisons'
	// counting intent; Envoy treats it like 1 in effect.
	if iv.healthyThreshold == 0 {
		iv.healthyThreshold = 1
	}
	if iv.unhealthyThreshold == 0 {
		iv.unhealthyThreshold = 1
	}
	return iv
}

// Kind is HTTP, TCP or GRPC.
func (c *Checker) Kind() string { return c.kind }

// Close releases pooled connections. Call after every Run has returned.
func (c *Checker) Close() { c.p.close() }

// next picks the wait before the next probe as Envoy does: the outcome of
// this probe (healthy or not) and whether a host transition is pending
// select the base interval; jitter is added on top.
func (c *Checker) next(success bool, tr transition) time.Duration {
	iv := c.times
	var base time.Duration
	if c.opts.HasTraffic != nil && c.opts.HasTraffic() {
		switch {
		case !success && tr == changePending:
			base = iv.unhealthyEdge
		case !success:
			base = iv.unhealthy
		case tr == changePending:
			base = iv.healthyEdge
		default:
			base = iv.interval
		}
	} else if success && tr != changePending {
		base = iv.noTrafficH
	} else {
		base = iv.noTraffic
	}
	if iv.jitterPercent > 0 {
		if mod := int64(base) * int64(iv.jitterPercent) / 100; mod > 0 {
			base += time.Duration(rand.Int64N(mod))
		}
	}
	if iv.intervalJitter > 0 {
		base += time.Duration(rand.Int64N(int64(iv.intervalJitter)))
	}
	return max(base, minInterval)
}

// Run checks h until ctx ends: the first probe after a random part of
// initial_jitter, then at the interval the last outcome selects.
func (c *Checker) Run(ctx context.Context, h *Host) {
	cnt := &counters{firstCheck: true}
	wait := time.Duration(0)
	if j := c.times.initialJitter; j > 0 {
		wait = time.Duration(rand.Int64N(int64(j)))
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	defer c.p.forget(h.Target)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r, tr := c.step(ctx, h, cnt)
		if ctx.Err() != nil {
			return
		}
		t.Reset(c.next(r.Kind == FailNone, tr))
	}
}

// step runs one probe and applies it; cnt is private to one (checker,
// host) session.
func (c *Checker) step(ctx context.Context, h *Host, cnt *counters) (Result, transition) {
	pctx, cancel := context.WithTimeout(ctx, c.times.timeout)
	r := c.p.probe(pctx, h.Target)
	if r.Kind != FailNone && pctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		r.Kind, r.Retriable = FailTimeout, false
		r.HTTPStatus = 0
	}
	cancel()
	if ctx.Err() != nil {
		return r, unchanged // shutting down: the probe was cut short, not failed
	}
	tr := h.apply(cnt, r, c.times.healthyThreshold, c.times.unhealthyThreshold)
	if c.opts.OnResult != nil {
		c.opts.OnResult(h.Target, r, h.State())
	}
	return r, tr
}
