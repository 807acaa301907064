// Package model is the friendly mesh model the control plane serves: services
// with their endpoints and traffic policy, virtual hosts with routes, and the
// proxies (sidecars and ingresses) that run it. It is loaded strictly from
// YAML; every error names the file, line, field and reason.
package model

import "time"

// Mesh is the whole model.
type Mesh struct {
	// RateLimitService is the RLS that routes with rate_limits call.
	RateLimitService *RateLimitService `yaml:"rate_limit_service"`
	Services         []Service         `yaml:"services"`
	// Routes are the mesh-wide virtual hosts: served on every sidecar's
	// outbound listener and, host by host, to proxyless gRPC clients.
	Routes  []VirtualHost `yaml:"routes"`
	Proxies []Proxy       `yaml:"proxies"`
}

// RateLimitService names the RLS cluster and the domain to ask it about.
type RateLimitService struct {
	Service         string        `yaml:"service"`
	Domain          string        `yaml:"domain"`
	Timeout         time.Duration `yaml:"timeout"`
	FailureModeDeny bool          `yaml:"failure_mode_deny"`
}

// Protocols a service speaks.
const (
	ProtocolHTTP  = "http"
	ProtocolHTTP2 = "http2"
	ProtocolGRPC  = "grpc"
	ProtocolTCP   = "tcp"
)

// Service is one upstream cluster.
type Service struct {
	Name     string `yaml:"name"`
	Protocol string `yaml:"protocol"` // http (default), http2, grpc, tcp
	// Endpoints are static addresses; DNS is the alternative.
	Endpoints        []Endpoint        `yaml:"endpoints"`
	DNS              *DNS              `yaml:"dns"`
	ConnectTimeout   time.Duration     `yaml:"connect_timeout"`
	LB               *LoadBalancer     `yaml:"lb"`
	HealthCheck      *HealthCheck      `yaml:"health_check"`
	CircuitBreakers  *CircuitBreakers  `yaml:"circuit_breakers"`
	OutlierDetection *OutlierDetection `yaml:"outlier_detection"`
}

// Endpoint is one static instance of a service.
type Endpoint struct {
	Address string `yaml:"address"`
	Port    uint32 `yaml:"port"`
	Region  string `yaml:"region"`
	Zone    string `yaml:"zone"`
	Weight  uint32 `yaml:"weight"` // default 1
}

// DNS resolves a name to the service's instances.
type DNS struct {
	Host string `yaml:"host"`
	Port uint32 `yaml:"port"`
	Zone string `yaml:"zone"`
}

// LB policies.
const (
	LBRoundRobin   = "round_robin"
	LBLeastRequest = "least_request"
	LBRingHash     = "ring_hash"
	LBRandom       = "random"
)

// LoadBalancer picks an endpoint.
type LoadBalancer struct {
	Policy string `yaml:"policy"` // round_robin (default), least_request, ring_hash, random
	// HashOn is required for ring_hash: what the hash is computed from.
	HashOn *HashOn `yaml:"hash_on"`
}

// HashOn selects exactly one hash key.
type HashOn struct {
	Header   string `yaml:"header"`
	Cookie   string `yaml:"cookie"`
	SourceIP bool   `yaml:"source_ip"`
}

// Health check kinds.
const (
	CheckHTTP = "http"
	CheckTCP  = "tcp"
	CheckGRPC = "grpc"
)

// HealthCheck is delegated through HDS: only HDS nodes see it.
type HealthCheck struct {
	Type               string        `yaml:"type"` // http (default), tcp, grpc
	Path               string        `yaml:"path"` // http; default /healthz
	Host               string        `yaml:"host"` // http Host header
	ExpectedStatuses   []int         `yaml:"expected_statuses"`
	GRPCService        string        `yaml:"grpc_service"`
	Interval           time.Duration `yaml:"interval"`            // default 5s
	Timeout            time.Duration `yaml:"timeout"`             // default 1s
	HealthyThreshold   uint32        `yaml:"healthy_threshold"`   // default 1
	UnhealthyThreshold uint32        `yaml:"unhealthy_threshold"` // default 2
}

// CircuitBreakers are the default-priority thresholds.
type CircuitBreakers struct {
	MaxConnections     uint32 `yaml:"max_connections"`
	MaxPendingRequests uint32 `yaml:"max_pending_requests"`
	MaxRequests        uint32 `yaml:"max_requests"`
	MaxRetries         uint32 `yaml:"max_retries"`
}

// OutlierDetection ejects misbehaving endpoints.
type OutlierDetection struct {
	Consecutive5xx     uint32        `yaml:"consecutive_5xx"`
	Interval           time.Duration `yaml:"interval"`
	BaseEjectionTime   time.Duration `yaml:"base_ejection_time"`
	MaxEjectionPercent uint32        `yaml:"max_ejection_percent"`
}

// VirtualHost groups routes under a set of host names.
type VirtualHost struct {
	Name  string   `yaml:"name"`
	Hosts []string `yaml:"hosts"`
	HTTP  []Route  `yaml:"http"`
}

// Route is one match plus one action, tried in order.
type Route struct {
	Name  string `yaml:"name"`
	Match Match  `yaml:"match"`
	// Exactly one of Route (weighted destinations), Redirect, DirectResponse.
	Route          []Destination   `yaml:"route"`
	Redirect       *Redirect       `yaml:"redirect"`
	DirectResponse *DirectResponse `yaml:"direct_response"`

	Timeout    time.Duration `yaml:"timeout"`
	Retries    *Retries      `yaml:"retries"`
	Fault      *Fault        `yaml:"fault"`
	Headers    *Headers      `yaml:"headers"`
	Rewrite    *Rewrite      `yaml:"rewrite"`
	Mirror     *Mirror       `yaml:"mirror"`
	RateLimits []RateLimit   `yaml:"rate_limits"`
	HashOn     *HashOn       `yaml:"hash_on"`
}

// Match selects requests; all given conditions must hold.
type Match struct {
	// One of Prefix (default "/"), Path, Regex.
	Prefix          string        `yaml:"prefix"`
	Path            string        `yaml:"path"`
	Regex           string        `yaml:"regex"`
	CaseInsensitive bool          `yaml:"case_insensitive"`
	Headers         []HeaderMatch `yaml:"headers"`
	Query           []QueryMatch  `yaml:"query"`
}

// HeaderMatch matches one header; exactly one of Exact, Prefix, Regex,
// Present.
type HeaderMatch struct {
	Name    string  `yaml:"name"`
	Exact   *string `yaml:"exact"`
	Prefix  *string `yaml:"prefix"`
	Regex   *string `yaml:"regex"`
	Present *bool   `yaml:"present"`
	Invert  bool    `yaml:"invert"`
}

// QueryMatch matches one query parameter; exactly one of Exact, Regex,
// Present.
type QueryMatch struct {
	Name    string  `yaml:"name"`
	Exact   *string `yaml:"exact"`
	Regex   *string `yaml:"regex"`
	Present *bool   `yaml:"present"`
}

// Destination is one weighted target service.
type Destination struct {
	Service string `yaml:"service"`
	Weight  uint32 `yaml:"weight"` // default 1 when there is one destination
}

// Redirect answers with an HTTP redirect.
type Redirect struct {
	Host  string `yaml:"host"`
	Path  string `yaml:"path"`
	Code  int    `yaml:"code"` // 301 (default), 302, 303, 307, 308
	HTTPS bool   `yaml:"https"`
}

// DirectResponse answers from the proxy itself.
type DirectResponse struct {
	Status uint32 `yaml:"status"`
	Body   string `yaml:"body"`
}

// Retries is the retry policy.
type Retries struct {
	Attempts      uint32        `yaml:"attempts"`
	RetryOn       string        `yaml:"retry_on"` // default "5xx,connect-failure,reset"
	PerTryTimeout time.Duration `yaml:"per_try_timeout"`
}

// Fault injects errors or latency.
type Fault struct {
	Abort *FaultAbort `yaml:"abort"`
	Delay *FaultDelay `yaml:"delay"`
}

// FaultAbort aborts a percentage of requests.
type FaultAbort struct {
	HTTPStatus uint32  `yaml:"http_status"`
	GRPCStatus *uint32 `yaml:"grpc_status"`
	Percent    float64 `yaml:"percent"`
}

// FaultDelay delays a percentage of requests.
type FaultDelay struct {
	Fixed   time.Duration `yaml:"fixed"`
	Percent float64       `yaml:"percent"`
}

// Headers edits request and response headers.
type Headers struct {
	Request  *HeaderOps `yaml:"request"`
	Response *HeaderOps `yaml:"response"`
}

// HeaderOps sets and removes headers.
type HeaderOps struct {
	Set    map[string]string `yaml:"set"`
	Add    map[string]string `yaml:"add"`
	Remove []string          `yaml:"remove"`
}

// Rewrite rewrites the request before forwarding.
type Rewrite struct {
	Prefix string `yaml:"prefix"`
	Host   string `yaml:"host"`
}

// Mirror copies a percentage of requests to another service.
type Mirror struct {
	Service string  `yaml:"service"`
	Percent float64 `yaml:"percent"` // default 100
}

// RateLimit is one descriptor built from its actions, in order.
type RateLimit struct {
	Actions []RateLimitAction `yaml:"actions"`
}

// RateLimitAction is exactly one of Envoy's rate-limit actions.
type RateLimitAction struct {
	RequestHeaders     *RequestHeadersAction   `yaml:"request_headers"`
	RemoteAddress      *struct{}               `yaml:"remote_address"`
	GenericKey         *GenericKeyAction       `yaml:"generic_key"`
	HeaderValueMatch   *HeaderValueMatchAction `yaml:"header_value_match"`
	DestinationCluster *struct{}               `yaml:"destination_cluster"`
	SourceCluster      *struct{}               `yaml:"source_cluster"`
}

// RequestHeadersAction: descriptor (key, value of header).
type RequestHeadersAction struct {
	Header       string `yaml:"header"`
	Key          string `yaml:"key"`
	SkipIfAbsent bool   `yaml:"skip_if_absent"`
}

// GenericKeyAction: descriptor (key or "generic_key", value).
type GenericKeyAction struct {
	Key   string `yaml:"key"`
	Value string `yaml:"value"`
}

// HeaderValueMatchAction: descriptor (key or "header_match", value) when the
// headers match (or do not, with expect_match false).
type HeaderValueMatchAction struct {
	Key         string        `yaml:"key"`
	Value       string        `yaml:"value"`
	ExpectMatch *bool         `yaml:"expect_match"`
	Headers     []HeaderMatch `yaml:"headers"`
}

// Proxy roles.
const (
	RoleSidecar = "sidecar"
	RoleIngress = "ingress"
)

// Proxy is one data-plane node, matched by its xDS node id.
type Proxy struct {
	ID   string `yaml:"id"`
	Role string `yaml:"role"` // sidecar or ingress
	// Service is the sidecar's own service (its inbound side).
	Service string `yaml:"service"`
	Zone    string `yaml:"zone"`
	// Sidecar listeners.
	Inbound  *Inbound  `yaml:"inbound"`
	Outbound *Outbound `yaml:"outbound"`
	// Ingress listener and its own virtual hosts.
	Listen string        `yaml:"listen"`
	Routes []VirtualHost `yaml:"routes"`
}

// Inbound is the sidecar's listener in front of its local app.
type Inbound struct {
	Listen  string        `yaml:"listen"` // host:port
	App     string        `yaml:"app"`    // host:port of the local app
	Timeout time.Duration `yaml:"timeout"`
}

// Outbound is the sidecar's listener the app sends mesh traffic to.
type Outbound struct {
	Listen string `yaml:"listen"` // host:port
	// TCP gives tcp services a listener each: a TCP stream carries no host
	// or path to route on, so the local port picks the service.
	TCP []TCPOutbound `yaml:"tcp"`
}

// TCPOutbound is one tcp service reached through a local port.
type TCPOutbound struct {
	Service string `yaml:"service"`
	Listen  string `yaml:"listen"` // host:port
}
