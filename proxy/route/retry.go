package route

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// Retry conditions (Envoy's retry_on values).
const (
	Retry5xx = 1 << iota
	RetryGatewayError
	RetryReset
	RetryConnectFailure
	RetryRetriableStatusCodes
	RetryRefusedStream
	RetryRetriable4xx
	RetryGrpcCancelled
	RetryGrpcDeadlineExceeded
	RetryGrpcResourceExhausted
	RetryGrpcUnavailable
	RetryGrpcInternal
)

var retryOnNames = map[string]int{
	"5xx": Retry5xx, "gateway-error": RetryGatewayError, "reset": RetryReset,
	"connect-failure": RetryConnectFailure, "retriable-status-codes": RetryRetriableStatusCodes,
	"refused-stream": RetryRefusedStream, "retriable-4xx": RetryRetriable4xx,
	"cancelled": RetryGrpcCancelled, "deadline-exceeded": RetryGrpcDeadlineExceeded,
	"resource-exhausted": RetryGrpcResourceExhausted, "unavailable": RetryGrpcUnavailable,
	"internal": RetryGrpcInternal,
	// Accepted and treated as their closest sibling.
	"reset-before-request": RetryReset, "envoy-ratelimited": 0, "http3-post-connect-failure": 0,
}

// RetryPolicy is a compiled Envoy RetryPolicy.
type RetryPolicy struct {
	On            int
	NumRetries    int
	PerTryTimeout time.Duration
	StatusCodes   map[int]bool
	BaseInterval  time.Duration
	MaxInterval   time.Duration
	OtherHosts    bool // retry_host_predicate previous_hosts
}

func compileRetry(p *routev3.RetryPolicy) (*RetryPolicy, error) {
	rp := &RetryPolicy{NumRetries: 1, BaseInterval: 25 * time.Millisecond}
	for _, s := range strings.Split(p.GetRetryOn(), ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		bit, ok := retryOnNames[s]
		if !ok {
			return nil, fmt.Errorf("retry_on: unknown condition %q", s)
		}
		rp.On |= bit
	}
	if n := p.GetNumRetries(); n != nil {
		rp.NumRetries = int(n.GetValue())
	}
	if d := p.GetPerTryTimeout(); d != nil {
		rp.PerTryTimeout = d.AsDuration()
	}
	for _, c := range p.GetRetriableStatusCodes() {
		if rp.StatusCodes == nil {
			rp.StatusCodes = map[int]bool{}
		}
		rp.StatusCodes[int(c)] = true
	}
	if b := p.GetRetryBackOff(); b != nil {
		rp.BaseInterval = b.GetBaseInterval().AsDuration()
		if b.GetMaxInterval() != nil {
			rp.MaxInterval = b.GetMaxInterval().AsDuration()
			if rp.MaxInterval < rp.BaseInterval {
				return nil, fmt.Errorf("retry_back_off: max_interval %s is less than base_interval %s", rp.MaxInterval, rp.BaseInterval)
			}
		}
	}
	if rp.MaxInterval == 0 {
		rp.MaxInterval = 10 * rp.BaseInterval
	}
	for _, hp := range p.GetRetryHostPredicate() {
		if hp.GetName() == "envoy.retry_host_predicates.previous_hosts" {
			rp.OtherHosts = true
		}
	}
	return rp, nil
}

// RetryStatus reports whether an upstream response with this HTTP status
// (and grpc-status, "" when absent) should be retried.
func (p *RetryPolicy) RetryStatus(code int, grpcStatus string) bool {
	switch {
	case p.On&Retry5xx != 0 && code >= 500:
		return true
	case p.On&RetryGatewayError != 0 && (code == 502 || code == 503 || code == 504):
		return true
	case p.On&RetryRetriable4xx != 0 && code == 409:
		return true
	case p.On&RetryRetriableStatusCodes != 0 && p.StatusCodes[code]:
		return true
	}
	switch grpcStatus {
	case "1":
		return p.On&RetryGrpcCancelled != 0
	case "4":
		return p.On&RetryGrpcDeadlineExceeded != 0
	case "8":
		return p.On&RetryGrpcResourceExhausted != 0
	case "14":
		return p.On&RetryGrpcUnavailable != 0
	case "13":
		return p.On&RetryGrpcInternal != 0
	}
	return false
}

// RetryError reports whether a failure to get a response should be retried;
// connectFailed is true when no connection could be made, timeout when the
// per-try timeout fired.
func (p *RetryPolicy) RetryError(connectFailed, timeout bool) bool {
	if timeout {
		return p.On&(Retry5xx|RetryGatewayError|RetryReset) != 0
	}
	if connectFailed {
		return p.On&(Retry5xx|RetryGatewayError|RetryConnectFailure|RetryReset) != 0
	}
	return p.On&(Retry5xx|RetryGatewayError|RetryReset) != 0
}

// Backoff is Envoy's fully jittered exponential back-off for retry n (1-based).
func (p *RetryPolicy) Backoff(n int) time.Duration {
	ceil := p.BaseInterval << min(n-1, 16)
	if ceil > p.MaxInterval || ceil <= 0 {
		ceil = p.MaxInterval
	}
	if ceil <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(ceil)))
}
