package replica

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidemesh/sidemesh/services/hds/assign"
	"github.com/sidemesh/sidemesh/services/hds/ring"
)

type metrics struct {
	connected, ringProxies, members, endpoints, checks, perProxyMax, perProxyMean, uncovered, suspects prometheus.Gauge
	verdicts                                                                                           *prometheus.GaugeVec
	reassignments, reports, specifiersSent                                                             prometheus.Counter
	verdictChanges                                                                                     *prometheus.CounterVec
	assignSeconds                                                                                      prometheus.Histogram
	collectors                                                                                         []prometheus.Collector
}

func newMetrics(r *Replica) *metrics {
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: "hds_" + name, Help: help})
	}
	m := &metrics{
		connected:      g("connected_proxies", "HDS streams connected to this replica."),
		ringProxies:    g("ring_proxies", "Proxies eligible to check across the ring (connected to a live replica, reporting)."),
		members:        g("ring_members", "Alive (or suspect) replicas in the ring as seen here."),
		endpoints:      g("endpoints", "Endpoints that need checks."),
		checks:         g("checks_per_interval", "Probes per check interval across the fleet (sum of checkers over endpoints, k·M)."),
		perProxyMax:    g("endpoints_per_proxy_max", "Most endpoints assigned to one proxy."),
		perProxyMean:   g("endpoints_per_proxy_mean", "Mean endpoints per eligible proxy."),
		uncovered:      g("uncovered_endpoints", "Endpoints with no checker (no eligible proxy)."),
		suspects:       g("suspect_checkers", "Checkers whose votes are ignored because they report everything down against their peers."),
		verdicts:       prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hds_verdicts", Help: "Endpoints by current verdict."}, []string{"verdict"}),
		reassignments:  prometheus.NewCounter(prometheus.CounterOpts{Name: "hds_reassignments_total", Help: "Checker slots that moved to another proxy."}),
		reports:        prometheus.NewCounter(prometheus.CounterOpts{Name: "hds_reports_total", Help: "EndpointHealthResponses received."}),
		specifiersSent: prometheus.NewCounter(prometheus.CounterOpts{Name: "hds_specifiers_sent_total", Help: "HealthCheckSpecifiers sent (no-op sends are skipped)."}),
		verdictChanges: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hds_verdict_changes_total", Help: "Verdict changes, by new verdict."}, []string{"verdict"}),
		assignSeconds:  prometheus.NewHistogram(prometheus.HistogramOpts{Name: "hds_assignment_seconds", Help: "Time to recompute the assignment.", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 8)}),
	}
	stats := func(f func(*ring.Ring) int64) func() float64 {
		return func() float64 {
			if r.ring == nil {
				return 0
			}
			return float64(f(r.ring))
		}
	}
	m.collectors = []prometheus.Collector{
		m.connected, m.ringProxies, m.members, m.endpoints, m.checks, m.perProxyMax, m.perProxyMean, m.uncovered, m.suspects,
		m.verdicts, m.reassignments, m.reports, m.specifiersSent, m.verdictChanges, m.assignSeconds,
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "hds_gossip_bytes_total", Help: "Gossip payload bytes (broadcasts and push/pull state), in and out.", ConstLabels: prometheus.Labels{"direction": "in"}},
			stats(func(g *ring.Ring) int64 { return g.Stats.BytesIn.Load() })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "hds_gossip_bytes_total", Help: "Gossip payload bytes (broadcasts and push/pull state), in and out.", ConstLabels: prometheus.Labels{"direction": "out"}},
			stats(func(g *ring.Ring) int64 { return g.Stats.BytesOut.Load() })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "hds_gossip_rebroadcasts_total", Help: "Gossip updates re-broadcast on first receipt."},
			stats(func(g *ring.Ring) int64 { return g.Stats.Rebroadcasts.Load() })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hds_gossip_queued_broadcasts", Help: "Broadcasts waiting to be gossiped."},
			func() float64 {
				if r.ring == nil {
					return 0
				}
				return float64(r.ring.QueuedBroadcasts())
			}),
	}
	return m
}

// Register adds the replica's metrics to reg.
func (r *Replica) Register(reg prometheus.Registerer) error {
	for _, c := range r.met.collectors {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (m *metrics) update(a *assign.Result, proxies map[string]ring.ProxyEntry, members []string, connected int, suspects []string) {
	m.connected.Set(float64(connected))
	m.ringProxies.Set(float64(len(proxies)))
	m.members.Set(float64(len(members)))
	m.suspects.Set(float64(len(suspects)))
	if a == nil {
		return
	}
	m.endpoints.Set(float64(len(a.ByTarget)))
	total, most, uncovered := 0, 0, 0
	for _, eps := range a.ByProxy {
		total += len(eps)
		most = max(most, len(eps))
	}
	for _, cs := range a.ByTarget {
		if len(cs) == 0 {
			uncovered++
		}
	}
	m.checks.Set(float64(total))
	m.perProxyMax.Set(float64(most))
	if len(proxies) > 0 {
		m.perProxyMean.Set(float64(total) / float64(len(proxies)))
	} else {
		m.perProxyMean.Set(0)
	}
	m.uncovered.Set(float64(uncovered))
}
