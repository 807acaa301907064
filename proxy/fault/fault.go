// Package fault is Envoy's envoy.filters.http.fault for the sidemesh proxy:
// a delay and/or an abort (HTTP status or gRPC status) injected into a
// percentage of requests, optionally controlled by request headers, limited
// to matching requests, upstream cluster and downstream nodes, and capped
// by max_active_faults.
package fault

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/sidemesh/sidemesh/proxy/internal/pct"
	"github.com/sidemesh/sidemesh/proxy/internal/strmatch"
)

// Envoy's fault control headers.
const (
	HeaderDelay             = "X-Envoy-Fault-Delay-Request"
	HeaderDelayPercentage   = "X-Envoy-Fault-Delay-Request-Percentage"
	HeaderAbort             = "X-Envoy-Fault-Abort-Request"
	HeaderAbortGRPC         = "X-Envoy-Fault-Abort-Grpc-Request"
	HeaderAbortPercentage   = "X-Envoy-Fault-Abort-Request-Percentage"
	headerDownstreamService = "X-Envoy-Downstream-Service-Node"
)

// Stats are Envoy's fault filter counters.
type Stats struct {
	DelaysInjected, AbortsInjected, FaultsOverflow uint64
	Active                                         int64
}

// Filter is one configured fault filter.
type Filter struct {
	delayFixed  time.Duration
	delayHeader bool
	delayPct    *typev3.FractionalPercent

	abortHTTP   int
	abortGRPC   int // -1: none
	abortHeader bool
	abortPct    *typev3.FractionalPercent
	abortBody   string

	cluster   string
	headers   []func(http.Header) bool
	nodes     map[string]bool
	maxActive int64 // 0: unlimited

	active                   atomic.Int64
	delays, aborts, overflow atomic.Uint64
}

// New validates cfg and builds the filter.
func New(cfg *faultv3.HTTPFault) (*Filter, error) {
	if err := cfg.ValidateAll(); err != nil {
		return nil, fmt.Errorf("fault filter: %w", err)
	}
	if cfg.GetResponseRateLimit() != nil {
		return nil, fmt.Errorf("fault filter: response_rate_limit is not supported")
	}
	f := &Filter{abortGRPC: -1, cluster: cfg.GetUpstreamCluster()}
	if d := cfg.GetDelay(); d != nil {
		f.delayPct = percentOr100(d.GetPercentage())
		switch d.GetFaultDelaySecifier().(type) {
		case *faultcommonv3.FaultDelay_FixedDelay:
			f.delayFixed = d.GetFixedDelay().AsDuration()
		case *faultcommonv3.FaultDelay_HeaderDelay_:
			f.delayHeader = true
		}
	}
	if a := cfg.GetAbort(); a != nil {
		f.abortPct = percentOr100(a.GetPercentage())
		f.abortBody = "fault filter abort"
		if b := a.GetResponseBody(); b != "" {
			f.abortBody = b
		}
		switch a.GetErrorType().(type) {
		case *faultv3.FaultAbort_HttpStatus:
			f.abortHTTP = int(a.GetHttpStatus())
		case *faultv3.FaultAbort_GrpcStatus:
			f.abortGRPC = int(a.GetGrpcStatus())
		case *faultv3.FaultAbort_HeaderAbort_:
			f.abortHeader = true
		}
	}
	for i, hm := range cfg.GetHeaders() {
		m, err := headerMatcher(hm)
		if err != nil {
			return nil, fmt.Errorf("fault filter: headers[%d]: %w", i, err)
		}
		f.headers = append(f.headers, m)
	}
	if ns := cfg.GetDownstreamNodes(); len(ns) > 0 {
		f.nodes = map[string]bool{}
		for _, n := range ns {
			f.nodes[n] = true
		}
	}
	if m := cfg.GetMaxActiveFaults(); m != nil {
		f.maxActive = int64(m.GetValue())
		if f.maxActive == 0 {
			f.maxActive = -1 // 0 means no faults at all
		}
	}
	return f, nil
}

func percentOr100(p *typev3.FractionalPercent) *typev3.FractionalPercent {
	if p == nil {
		return &typev3.FractionalPercent{Numerator: 100}
	}
	return p
}

// headerMatcher supports the HeaderMatcher forms fault configs use.
func headerMatcher(hm *routev3.HeaderMatcher) (func(http.Header) bool, error) {
	name := http.CanonicalHeaderKey(hm.GetName())
	var f func(v string, present bool) bool
	switch s := hm.GetHeaderMatchSpecifier().(type) {
	case nil:
		f = func(_ string, present bool) bool { return present }
	case *routev3.HeaderMatcher_PresentMatch:
		f = func(_ string, present bool) bool { return present == s.PresentMatch }
	case *routev3.HeaderMatcher_ExactMatch:
		f = func(v string, present bool) bool { return present && v == s.ExactMatch }
	case *routev3.HeaderMatcher_StringMatch:
		m, err := strmatch.Compile(s.StringMatch)
		if err != nil {
			return nil, err
		}
		f = func(v string, present bool) bool { return present && m(v) }
	default:
		return nil, fmt.Errorf("header matcher %T is not supported", s)
	}
	invert := hm.GetInvertMatch()
	return func(h http.Header) bool {
		vs, ok := h[name]
		return f(strings.Join(vs, ","), ok) != invert
	}, nil
}

// Stats returns the counters.
func (f *Filter) Stats() Stats {
	return Stats{DelaysInjected: f.delays.Load(), AbortsInjected: f.aborts.Load(), FaultsOverflow: f.overflow.Load(), Active: f.active.Load()}
}

// Plan is what to do to one request.
type Plan struct {
	Delay time.Duration
	// AbortHTTP (>0) or AbortGRPC (>=0) end the request after the delay.
	AbortHTTP int
	AbortGRPC int
	AbortBody string
	release   func()
}

// Done releases the request's active-fault slot; call it when the request
// finishes (Handler does).
func (p *Plan) Done() {
	if p.release != nil {
		p.release()
		p.release = nil
	}
}

// Faulty reports whether the plan injects anything.
func (p *Plan) Faulty() bool { return p.Delay > 0 || p.AbortHTTP > 0 || p.AbortGRPC >= 0 }

// Decide draws the faults for r, routed to cluster.
func (f *Filter) Decide(r *http.Request, cluster string) Plan {
	p := Plan{AbortGRPC: -1}
	if f.cluster != "" && f.cluster != cluster {
		return p
	}
	for _, m := range f.headers {
		if !m(r.Header) {
			return p
		}
	}
	if f.nodes != nil && !f.nodes[r.Header.Get(headerDownstreamService)] {
		return p
	}
	delay := f.delayFixed
	if f.delayHeader {
		delay = 0
		if ms, err := strconv.ParseUint(r.Header.Get(HeaderDelay), 10, 32); err == nil {
			delay = time.Duration(ms) * time.Millisecond
		}
	}
	if delay > 0 && pct.Sample(headerPercent(r, HeaderDelayPercentage, f.delayPct, f.delayHeader)) {
		p.Delay = delay
	}
	abortHTTP, abortGRPC := f.abortHTTP, f.abortGRPC
	if f.abortHeader {
		if c, err := strconv.Atoi(r.Header.Get(HeaderAbort)); err == nil && c >= 200 && c < 600 {
			abortHTTP = c
		} else if c, err := strconv.Atoi(r.Header.Get(HeaderAbortGRPC)); err == nil && c >= 0 {
			abortGRPC = c
		}
	}
	if (abortHTTP > 0 || abortGRPC >= 0) && pct.Sample(headerPercent(r, HeaderAbortPercentage, f.abortPct, f.abortHeader)) {
		p.AbortHTTP, p.AbortGRPC, p.AbortBody = abortHTTP, abortGRPC, f.abortBody
	}
	if !p.Faulty() {
		return p
	}
	n := f.active.Add(1)
	if f.maxActive != 0 && (f.maxActive < 0 || n > f.maxActive) {
		f.active.Add(-1)
		f.overflow.Add(1)
		return Plan{AbortGRPC: -1}
	}
	if p.Delay > 0 {
		f.delays.Add(1)
	}
	if p.AbortHTTP > 0 || p.AbortGRPC >= 0 {
		f.aborts.Add(1)
	}
	p.release = func() { f.active.Add(-1) }
	return p
}

// headerPercent: with header-controlled faults, the percentage header
// (a numerator over the configured denominator) may lower the configured
// percentage, never raise it.
func headerPercent(r *http.Request, header string, conf *typev3.FractionalPercent, fromHeader bool) *typev3.FractionalPercent {
	if !fromHeader {
		return conf
	}
	v, err := strconv.ParseUint(r.Header.Get(header), 10, 32)
	if err != nil || uint32(v) >= conf.GetNumerator() {
		return conf
	}
	return &typev3.FractionalPercent{Numerator: uint32(v), Denominator: conf.GetDenominator()}
}

// Handler injects faults in front of next; clusterOf names the request's
// upstream cluster (for upstream_cluster), may be nil.
func (f *Filter) Handler(next http.Handler, clusterOf func(*http.Request) string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cluster := ""
		if clusterOf != nil {
			cluster = clusterOf(r)
		}
		p := f.Decide(r, cluster)
		defer p.Done()
		if p.Delay > 0 && !sleep(r.Context(), p.Delay) {
			return // the client went away during the delay
		}
		switch {
		case p.AbortGRPC >= 0 && (p.AbortHTTP == 0 || strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")):
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Grpc-Status", strconv.Itoa(p.AbortGRPC))
			w.Header().Set("Grpc-Message", p.AbortBody)
			w.WriteHeader(http.StatusOK)
		case p.AbortHTTP > 0:
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(p.AbortHTTP)
			_, _ = w.Write([]byte(p.AbortBody))
		default:
			next.ServeHTTP(w, r)
		}
	})
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
