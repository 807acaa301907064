// Package stats defines the proxy's Prometheus metrics, named like Envoy's
// own Prometheus output (envoy_cluster_*, envoy_http_*, envoy_listener_*), and
// resolves per-listener/route/cluster children once at config time so the
// request path only does atomic adds.
package stats

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics holds every metric vector of one proxy process.
type Metrics struct {
	clusterRq        *prometheus.CounterVec
	clusterRqTime    *prometheus.HistogramVec
	clusterRetry     *prometheus.CounterVec
	clusterRetryOK   *prometheus.CounterVec
	clusterTimeout   *prometheus.CounterVec
	clusterPerTry    *prometheus.CounterVec
	clusterOverflow  *prometheus.CounterVec
	clusterRetryOvf  *prometheus.CounterVec
	clusterCxTotal   *prometheus.CounterVec
	clusterCxActive  *prometheus.GaugeVec
	clusterCxFail    *prometheus.CounterVec
	clusterRqActive  *prometheus.GaugeVec
	clusterEjections *prometheus.CounterVec
	clusterNoHealthy *prometheus.CounterVec
	clusterHealthy   *prometheus.GaugeVec
	clusterMembers   *prometheus.GaugeVec
	httpRq           *prometheus.CounterVec
	httpRqTime       *prometheus.HistogramVec
	routeRq          *prometheus.CounterVec
	listenerCx       *prometheus.CounterVec
	listenerCxActive *prometheus.GaugeVec
	xdsUpdates       *prometheus.CounterVec
}

var latencyBuckets = []float64{0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000}

// New creates and registers the metrics (reg may be nil in tests).
func New(reg prometheus.Registerer) *Metrics {
	cl := []string{"envoy_cluster_name"}
	clc := []string{"envoy_cluster_name", "envoy_response_code_class"}
	m := &Metrics{
		clusterRq:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_cluster_upstream_rq_total", Help: "Upstream requests by response code class."}, clc),
		clusterRqTime:    prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "envoy_cluster_upstream_rq_time", Help: "Upstream request time in milliseconds.", Buckets: latencyBuckets}, cl),
		clusterRetry:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_cluster_upstream_rq_retry", Help: "Retries."}, cl),
		clusterRetryOK:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_cluster_upstream_rq_retry_success", Help: "Retries that succeeded."}, cl),
		clusterTimeout:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_cluster_upstream_rq_timeout", Help: "Requests that hit the route timeout."}, cl),
		clusterPerTry:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_cluster_upstream_rq_per_try_timeout", Help: "Tries that hit the per-try timeout."}, cl),
		clusterOverflow:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_cluster_upstream_rq_pending_overflow", Help: "Requests rejected by a circuit breaker."}, cl),
		clusterRetryOvf:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_cluster_upstream_rq_retry_overflow", Help: "Retries refused by the max_retries circuit breaker."}, cl),
		clusterCxTotal:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_cluster_upstream_cx_total", Help: "Upstream connections opened."}, cl),
		clusterCxActive:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "envoy_cluster_upstream_cx_active", Help: "Open upstream connections."}, cl),
		clusterCxFail:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_cluster_upstream_cx_connect_fail", Help: "Failed upstream connects."}, cl),
		clusterRqActive:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "envoy_cluster_upstream_rq_active", Help: "In-flight upstream requests."}, cl),
		clusterEjections: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_cluster_outlier_detection_ejections_total", Help: "Outlier ejections."}, cl),
		clusterNoHealthy: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_cluster_upstream_cx_none_healthy", Help: "Requests with no healthy host."}, cl),
		clusterHealthy:   prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "envoy_cluster_membership_healthy", Help: "Healthy endpoints."}, cl),
		clusterMembers:   prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "envoy_cluster_membership_total", Help: "All endpoints."}, cl),
		httpRq:           prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_http_downstream_rq_total", Help: "Downstream requests by response code class."}, []string{"envoy_http_conn_manager_prefix", "envoy_response_code_class"}),
		httpRqTime:       prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "envoy_http_downstream_rq_time", Help: "Downstream request time in milliseconds.", Buckets: latencyBuckets}, []string{"envoy_http_conn_manager_prefix"}),
		routeRq:          prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_vhost_route_rq_total", Help: "Requests per virtual host and route by response code class."}, []string{"envoy_virtual_host", "envoy_route", "envoy_response_code_class"}),
		listenerCx:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_listener_downstream_cx_total", Help: "Accepted connections."}, []string{"envoy_listener_address"}),
		listenerCxActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "envoy_listener_downstream_cx_active", Help: "Open downstream connections."}, []string{"envoy_listener_address"}),
		xdsUpdates:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sidemesh_proxy_xds_updates_total", Help: "xDS responses by type and result (ack/nack)."}, []string{"type", "result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.clusterRq, m.clusterRqTime, m.clusterRetry, m.clusterRetryOK, m.clusterTimeout, m.clusterPerTry, m.clusterOverflow, m.clusterRetryOvf, m.clusterCxTotal, m.clusterCxActive, m.clusterCxFail, m.clusterRqActive, m.clusterEjections, m.clusterNoHealthy, m.clusterHealthy, m.clusterMembers, m.httpRq, m.httpRqTime, m.routeRq, m.listenerCx, m.listenerCxActive, m.xdsUpdates} {
			reg.MustRegister(c)
		}
	}
	return m
}

// Codes is one counter per response code class (1xx..5xx).
type Codes [6]prometheus.Counter

// Inc counts one response with status code.
func (c *Codes) Inc(code int) {
	i := code / 100
	if i < 1 || i > 5 {
		i = 5
	}
	c[i].Inc()
}

func codes(v *prometheus.CounterVec, labels ...string) Codes {
	var c Codes
	for i := 1; i <= 5; i++ {
		c[i] = v.WithLabelValues(append(labels, strconv.Itoa(i))...)
	}
	c[0] = c[5]
	return c
}

// Cluster is the resolved set of one cluster's metrics.
type Cluster struct {
	Rq            Codes
	RqTime        prometheus.Observer
	Retry         prometheus.Counter
	RetryOK       prometheus.Counter
	Timeout       prometheus.Counter
	PerTryTimeout prometheus.Counter
	Overflow      prometheus.Counter
	RetryOverflow prometheus.Counter
	CxTotal       prometheus.Counter
	CxActive      prometheus.Gauge
	CxFail        prometheus.Counter
	RqActive      prometheus.Gauge
	Ejections     prometheus.Counter
	NoHealthy     prometheus.Counter
	Healthy       prometheus.Gauge
	Members       prometheus.Gauge
}

// Cluster resolves the metrics of cluster name.
func (m *Metrics) Cluster(name string) *Cluster {
	return &Cluster{
		Rq: codes(m.clusterRq, name), RqTime: m.clusterRqTime.WithLabelValues(name),
		Retry: m.clusterRetry.WithLabelValues(name), RetryOK: m.clusterRetryOK.WithLabelValues(name),
		Timeout: m.clusterTimeout.WithLabelValues(name), PerTryTimeout: m.clusterPerTry.WithLabelValues(name),
		Overflow: m.clusterOverflow.WithLabelValues(name), RetryOverflow: m.clusterRetryOvf.WithLabelValues(name),
		CxTotal: m.clusterCxTotal.WithLabelValues(name), CxActive: m.clusterCxActive.WithLabelValues(name),
		CxFail: m.clusterCxFail.WithLabelValues(name), RqActive: m.clusterRqActive.WithLabelValues(name),
		Ejections: m.clusterEjections.WithLabelValues(name), NoHealthy: m.clusterNoHealthy.WithLabelValues(name),
		Healthy: m.clusterHealthy.WithLabelValues(name), Members: m.clusterMembers.WithLabelValues(name),
	}
}

// HTTP is one HTTP connection manager's metrics.
type HTTP struct {
	Rq     Codes
	RqTime prometheus.Observer
}

// HTTP resolves the metrics of an HCM by stat_prefix.
func (m *Metrics) HTTP(prefix string) *HTTP {
	return &HTTP{Rq: codes(m.httpRq, prefix), RqTime: m.httpRqTime.WithLabelValues(prefix)}
}

// Route resolves a route's per-code counters.
func (m *Metrics) Route(vhost, route string) *Codes {
	c := codes(m.routeRq, vhost, route)
	return &c
}

// Listener is one listener's connection metrics.
type Listener struct {
	Cx       prometheus.Counter
	CxActive prometheus.Gauge
}

// Listener resolves a listener's metrics by address.
func (m *Metrics) Listener(addr string) *Listener {
	return &Listener{Cx: m.listenerCx.WithLabelValues(addr), CxActive: m.listenerCxActive.WithLabelValues(addr)}
}

// XDS counts one processed xDS response.
func (m *Metrics) XDS(typ, result string) { m.xdsUpdates.WithLabelValues(typ, result).Inc() }
