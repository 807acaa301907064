package service

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are labelled by domain and rule path only (both bounded by the
// rule files); request values appear only for detailed_metric and
// value_to_metric rules, at most maxValues distinct labels per rule.
type metrics struct {
	hits      *prometheus.CounterVec
	requests  *prometheus.CounterVec
	latency   prometheus.Histogram
	noDomain  prometheus.Counter
	failures  *prometheus.CounterVec
	cacheSize prometheus.GaugeFunc
	ruleCache sync.Map // ruleKey -> *ruleCounters
	// valueCache holds the admitted value-carrying labels (and the
	// overflow labels); valueCount counts admitted labels per rule path.
	valueCache sync.Map // ruleKey -> *ruleCounters
	valueCount map[ruleKey]int
	maxValues  int
	byCode     map[string]prometheus.Counter
	cacheLimit int
	cacheCount int64
	mu         sync.Mutex
}

type ruleCounters struct {
	total, over, near, within, shadow, localCache prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, cacheLen func() float64, maxValues int) (*metrics, error) {
	m := &metrics{
		hits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rls_rule_hits_total",
			Help: "Hits per domain and rule; result is total, over_limit, near_limit, within_limit, shadow_mode or over_limit_local_cache.",
		}, []string{"domain", "rule", "result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rls_requests_total", Help: "ShouldRateLimit calls by answer (ok, over_limit, invalid, failure_allow, failure_deny, canceled: the caller gave up first).",
		}, []string{"code"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "rls_should_rate_limit_duration_seconds", Help: "ShouldRateLimit handling time.",
			Buckets: []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25},
		}),
		noDomain: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rls_domain_not_found_total", Help: "Requests for a domain with no rules (answered OK).",
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rls_backend_failures_total", Help: "Requests answered by the failure mode because the backend failed.",
		}, []string{"mode"}),
		cacheLimit: 10000,
		valueCount: map[ruleKey]int{},
		maxValues:  maxValues,
	}
	m.byCode = map[string]prometheus.Counter{}
	for _, c := range []string{"ok", "over_limit", "invalid", "failure_allow", "failure_deny", "canceled"} {
		m.byCode[c] = m.requests.WithLabelValues(c)
	}
	m.cacheSize = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "rls_local_cache_keys", Help: "Keys in the local over-limit cache.",
	}, cacheLen)
	for _, c := range []prometheus.Collector{m.hits, m.requests, m.latency, m.noDomain, m.failures, m.cacheSize} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

type ruleKey struct{ domain, rule string }

// OverflowSuffix is appended to a rule's path for the label that counts
// request values beyond the per-rule bound (detailed_metric,
// value_to_metric).
const OverflowSuffix = ":overflow"

// code returns the requests counter for one answer code (handles are cached:
// WithLabelValues hashes labels on every call).
func (m *metrics) code(c string) prometheus.Counter {
	if h, ok := m.byCode[c]; ok {
		return h
	}
	return m.requests.WithLabelValues(c)
}

// rule returns the counters of a rule label bounded by the rule files.
func (m *metrics) rule(domain, rule string) *ruleCounters {
	k := ruleKey{domain, rule}
	if rc, ok := m.ruleCache.Load(k); ok {
		return rc.(*ruleCounters)
	}
	rc := m.newCounters(domain, rule)
	m.mu.Lock()
	// Bound the handle cache itself (a hostile stream of override
	// descriptors cannot grow it; their label is always "override").
	if m.cacheCount < int64(m.cacheLimit) {
		m.cacheCount++
		m.ruleCache.Store(k, rc)
	}
	m.mu.Unlock()
	return rc
}

// valueRule returns the counters of a label that carries request values
// (detailed_metric, value_to_metric). At most maxValues distinct labels are
// created per (domain, rule path); later new ones are counted under
// path+OverflowSuffix, so request values can never grow /metrics without
// bound.
func (m *metrics) valueRule(domain, path, label string) *ruleCounters {
	k := ruleKey{domain, label}
	if rc, ok := m.valueCache.Load(k); ok {
		return rc.(*ruleCounters)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if rc, ok := m.valueCache.Load(k); ok {
		return rc.(*ruleCounters)
	}
	pk := ruleKey{domain, path}
	if m.valueCount[pk] >= m.maxValues {
		ok := ruleKey{domain, path + OverflowSuffix}
		if rc, found := m.valueCache.Load(ok); found {
			return rc.(*ruleCounters)
		}
		rc := m.newCounters(domain, ok.rule)
		m.valueCache.Store(ok, rc)
		return rc
	}
	m.valueCount[pk]++
	rc := m.newCounters(domain, label)
	m.valueCache.Store(k, rc)
	return rc
}

func (m *metrics) newCounters(domain, rule string) *ruleCounters {
	return &ruleCounters{
		total:      m.hits.WithLabelValues(domain, rule, "total"),
		over:       m.hits.WithLabelValues(domain, rule, "over_limit"),
		near:       m.hits.WithLabelValues(domain, rule, "near_limit"),
		within:     m.hits.WithLabelValues(domain, rule, "within_limit"),
		shadow:     m.hits.WithLabelValues(domain, rule, "shadow_mode"),
		localCache: m.hits.WithLabelValues(domain, rule, "over_limit_local_cache"),
	}
}
