package hdsclient

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidemesh/sidemesh/proxy/healthcheck"
)

// metrics mirror Envoy's hds_delegate.* and cluster.<name>.health_check.*
// stats. A nil *metrics records nothing.
type metrics struct {
	events *prometheus.CounterVec // requests (specifiers received), responses (messages sent), errors, updates
	checks *prometheus.CounterVec // cluster, result
}

func newMetrics(r prometheus.Registerer) (*metrics, error) {
	if r == nil {
		return nil, nil
	}
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sidemesh_proxy_hds_events_total",
			Help: "HDS client events as Envoy's hds_delegate stats: requests (specifiers received), responses (messages sent), errors, updates (specifiers applied)."}, []string{"event"}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sidemesh_proxy_health_checks_total",
			Help: "Health check probes by cluster and result (success, failure, network_failure, timeout)."}, []string{"cluster", "result"}),
	}
	for _, c := range []*prometheus.CounterVec{m.events, m.checks} {
		if err := r.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
			*c = *are.ExistingCollector.(*prometheus.CounterVec)
		}
	}
	return m, nil
}

func (m *metrics) event(name string) {
	if m != nil {
		m.events.WithLabelValues(name).Inc()
	}
}

func (m *metrics) probe(t healthcheck.Target, r healthcheck.Result, _ healthcheck.State) {
	if m == nil {
		return
	}
	res := "success"
	switch r.Kind {
	case healthcheck.FailActive:
		res = "failure"
	case healthcheck.FailNetwork:
		res = "network_failure"
	case healthcheck.FailTimeout:
		res = "timeout"
	}
	m.checks.WithLabelValues(t.Cluster, res).Inc()
}
