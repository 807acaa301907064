// Package healthcheck runs active health checks with Envoy's semantics,
// driven by envoy.config.core.v3.HealthCheck: HTTP, TCP and gRPC probes,
// timeout, interval and its jitter, healthy/unhealthy thresholds, the edge
// and no-traffic intervals. A Checker is built once per HealthCheck proto
// (it owns the connection pools); Run drives one Host until its context ends.
package healthcheck

import (
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// FailureKind says why a probe failed; it decides how the failure counts.
type FailureKind int

const (
	// FailNone: the probe succeeded.
	FailNone FailureKind = iota
	// FailActive: the upstream answered wrongly (unexpected HTTP status,
	// gRPC NOT_SERVING). Marks a healthy host unhealthy at once unless
	// retriable.
	FailActive
	// FailNetwork: connect failure, reset, close.
	FailNetwork
	// FailTimeout: no answer within HealthCheck.timeout.
	FailTimeout
)

func (k FailureKind) String() string {
	switch k {
	case FailNone:
		return "none"
	case FailActive:
		return "active"
	case FailNetwork:
		return "network"
	case FailTimeout:
		return "timeout"
	}
	return "?"
}

// Result is the outcome of one probe.
type Result struct {
	Kind FailureKind
	// Retriable: an HTTP status in retriable_statuses; counts towards the
	// unhealthy threshold instead of failing at once.
	Retriable  bool
	Degraded   bool // x-envoy-degraded on an HTTP response
	HTTPStatus int  // 0 unless an HTTP response arrived
	Err        error
}

// State is a host's health as the checkers see it.
type State struct {
	Healthy bool
	// Timeout: the host is unhealthy and its latest failure was a timeout
	// (reported as TIMEOUT over HDS).
	Timeout  bool
	Degraded bool
	// Checked: at least one probe finished.
	Checked bool
	// HTTPStatus of the last complete HTTP response (0 after a network
	// failure, as Envoy clears health_metadata).
	HTTPStatus int
	LastError  string
	Attempts   uint64
	Successes  uint64
	Failures   uint64
}

// HealthStatus maps the state to the HDS/EDS enum. A host that was never
// checked is UNKNOWN (Envoy says UNHEALTHY, which a server cannot tell from
// a real failure; the sidemesh HDS treats UNKNOWN as "not checked yet").
func (s State) HealthStatus() corev3.HealthStatus {
	switch {
	case !s.Checked && !s.Healthy:
		return corev3.HealthStatus_UNKNOWN
	case s.Healthy && s.Degraded:
		return corev3.HealthStatus_DEGRADED
	case s.Healthy:
		return corev3.HealthStatus_HEALTHY
	case s.Timeout:
		return corev3.HealthStatus_TIMEOUT
	}
	return corev3.HealthStatus_UNHEALTHY
}

// Target is what to probe.
type Target struct {
	// Cluster names the cluster; it is the default Host / :authority.
	Cluster string
	// Addr is host:port to connect to (the health-check address, which may
	// differ from the serving address).
	Addr string
	// Hostname overrides the Host / :authority (Endpoint.HealthCheckConfig.hostname).
	Hostname string
}

// Host is one endpoint's health, shared by every session checking it so
// that the state survives a checker being replaced (as Envoy keeps host
// flags across health-checker updates).
type Host struct {
	Target Target

	mu sync.Mutex
	st State
}

// NewHost returns a host in Envoy's initial state: failed until the first
// successful check.
func NewHost(t Target) *Host { return &Host{Target: t} }

// State returns a copy of the current state.
func (h *Host) State() State {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.st
}

// transition is Envoy's HealthTransition for interval selection.
type transition int

const (
	unchanged transition = iota
	changed
	changePending
)

// counters are per session, like Envoy's ActiveHealthCheckSession: a new
// checker starts counting afresh (and its first check may flip the host).
type counters struct {
	numHealthy, numUnhealthy uint32
	firstCheck               bool
}

// apply folds one probe result into the host state with Envoy's rules and
// returns the transition.
func (h *Host) apply(c *counters, r Result, healthyThreshold, unhealthyThreshold uint32) transition {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := &h.st
	first := c.firstCheck
	c.firstCheck = false
	st.Checked = true
	st.Attempts++
	st.HTTPStatus = r.HTTPStatus
	tr := unchanged
	if r.Kind == FailNone {
		st.Successes++
		st.LastError = ""
		c.numUnhealthy = 0
		if !st.Healthy {
			// During startup a single success is enough.
			c.numHealthy++
			if first || c.numHealthy >= healthyThreshold {
				st.Healthy, st.Timeout = true, false
				tr = changed
			} else {
				tr = changePending
			}
		}
		if st.Degraded != r.Degraded {
			st.Degraded = r.Degraded
			tr = changed
		}
		return tr
	}
	st.Failures++
	if r.Err != nil {
		st.LastError = r.Err.Error()
	}
	c.numHealthy = 0
	if st.Healthy {
		c.numUnhealthy++
		immediate := r.Kind == FailActive && !r.Retriable
		if immediate || c.numUnhealthy >= unhealthyThreshold {
			st.Healthy, st.Degraded = false, false
			tr = changed
		} else {
			tr = changePending
		}
	}
	if !st.Healthy {
		st.Timeout = r.Kind == FailTimeout
	}
	return tr
}
