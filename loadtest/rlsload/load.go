// Package rlsload drives envoy.service.ratelimit.v3 ShouldRateLimit load
// against any rate limit service and checks what it admitted against the
// configured limit.
package rlsload

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strings"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sidemesh/sidemesh/loadtest/report"
	"github.com/sidemesh/sidemesh/loadtest/runner"
	"github.com/sidemesh/sidemesh/loadtest/target"
	"github.com/sidemesh/sidemesh/proxy/ratelimit"
)

// Options describe an RLS load run.
type Options struct {
	Target string
	Conns  int
	// Batch sends calls on sidemesh's RateLimitBatch streams, one per
	// connection, batched as the proxy batches them.
	Batch bool
	// Client is ClientH2 or ClientGRPC (unary calls only; Batch uses grpc-go).
	Client      string
	Domain      string
	Key         string
	Keys        KeyDist
	Descriptors int
	Timeout     time.Duration
	// RunID prefixes every descriptor value so counters of earlier runs
	// never count against this one.
	RunID string
	// ExpectLimit, if > 0, is the configured limit per Per for Key: the run
	// fails if any counter admitted more than that in any window it spanned.
	ExpectLimit uint64
	Per         time.Duration
}

// Unit parses --per.
func Unit(s string) (time.Duration, error) {
	switch s {
	case "second":
		return time.Second, nil
	case "minute":
		return time.Minute, nil
	case "hour":
		return time.Hour, nil
	case "day":
		return 24 * time.Hour, nil
	}
	return 0, fmt.Errorf("--per %q: want second, minute, hour or day", s)
}

// Dial opens n connections to addr and waits until each is ready.
func Dial(ctx context.Context, addr string, n int) ([]*grpc.ClientConn, error) {
	var conns []*grpc.ClientConn
	fail := func(err error) ([]*grpc.ClientConn, error) {
		for _, c := range conns {
			c.Close()
		}
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for range n {
		// Each ClientConn is its own HTTP/2 connection (own transport).
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return fail(fmt.Errorf("dial %s: %w", addr, err))
		}
		conns = append(conns, c)
		c.Connect()
		for s := c.GetState(); s != connectivity.Ready; s = c.GetState() {
			if !c.WaitForStateChange(ctx, s) {
				return fail(fmt.Errorf("connecting to %s: still %s after 10s", addr, s))
			}
		}
	}
	return conns, nil
}

// admitted counts, per counter value, OK answers and the span of windows
// they could have fallen into.
type admitted struct {
	count       uint64
	first, last time.Time
}

// Load is a prepared run: one request function plus its bookkeeping.
type Load struct {
	opt     Options
	clients []ratelimit.RLSClient
	h2      []*H2Conn
	bufs    []h2Bufs // per worker, for h2
	pickers []*Picker
	track   []map[string]*admitted // per worker, merged after the run
}

// New prepares a load over conns for concurrency workers; ctx ends the
// batch streams.
func New(ctx context.Context, opt Options, conns []*grpc.ClientConn, concurrency int) *Load {
	l := &Load{opt: opt}
	for _, c := range conns {
		if opt.Batch {
			l.clients = append(l.clients, ratelimit.NewBatchClient(ctx, c, ratelimit.BatchOptions{Streams: 1}))
		} else {
			l.clients = append(l.clients, rlspb.NewRateLimitServiceClient(c))
		}
	}
	l.workers(concurrency)
	return l
}

// NewH2 prepares a unary load over h2grpc connections.
func NewH2(opt Options, slots []*H2Conn, concurrency int) *Load {
	l := &Load{opt: opt, h2: slots}
	l.bufs = make([]h2Bufs, concurrency)
	l.workers(concurrency)
	return l
}

// h2Bufs are a worker's request and response buffers.
type h2Bufs struct{ req, resp []byte }

func (l *Load) workers(concurrency int) {
	for i := range concurrency {
		l.pickers = append(l.pickers, l.opt.Keys.NewPicker(uint64(i)+1))
		l.track = append(l.track, map[string]*admitted{})
	}
}

func (l *Load) value(k uint64, d int) string {
	if d == 0 {
		return fmt.Sprintf("%s-%d", l.opt.RunID, k)
	}
	return fmt.Sprintf("%s-%d-d%d", l.opt.RunID, k, d)
}

// Op is the runner operation: one ShouldRateLimit call.
func (l *Load) Op(ctx context.Context, worker int, seq uint64) (string, error) {
	k := l.pickers[worker].Pick(seq)
	if l.h2 != nil {
		return l.opH2(ctx, worker, k)
	}
	req := &rlspb.RateLimitRequest{Domain: l.opt.Domain, HitsAddend: 1}
	for d := range l.opt.Descriptors {
		req.Descriptors = append(req.Descriptors, &rlcommon.RateLimitDescriptor{
			Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: l.opt.Key, Value: l.value(k, d)}},
		})
	}
	ctx, cancel := context.WithTimeout(ctx, l.opt.Timeout)
	defer cancel()
	sent := time.Now()
	resp, err := l.clients[worker%len(l.clients)].ShouldRateLimit(ctx, req)
	if err != nil {
		return "", err
	}
	code := resp.GetOverallCode()
	l.admit(worker, k, code, sent)
	return code.String(), nil
}

// opH2 is Op over h2grpc: the request is encoded by hand into the worker's
// buffer and only overall_code is read from the answer.
func (l *Load) opH2(ctx context.Context, worker int, k uint64) (string, error) {
	b := &l.bufs[worker]
	b.req = l.appendRequest(b.req[:0], k)
	ctx, cancel := context.WithTimeout(ctx, l.opt.Timeout)
	defer cancel()
	sent := time.Now()
	var err error
	b.resp, err = l.h2[worker%len(l.h2)].invoke(ctx, b.req, b.resp[:0])
	if err != nil {
		return "", err
	}
	code, err := overallCode(b.resp)
	if err != nil {
		return "", err
	}
	l.admit(worker, k, code, sent)
	return code.String(), nil
}

// admit tallies an OK answer for the over-admission check.
func (l *Load) admit(worker int, k uint64, code rlspb.RateLimitResponse_Code, sent time.Time) {
	if code != rlspb.RateLimitResponse_OK || l.opt.ExpectLimit == 0 {
		return
	}
	now := time.Now()
	for d := range l.opt.Descriptors {
		v := l.value(k, d)
		a := l.track[worker][v]
		if a == nil {
			a = &admitted{first: sent}
			l.track[worker][v] = a
		}
		a.count++
		a.last = now
	}
}

// Violation is one counter that admitted more than the limit allows.
type Violation struct {
	Value    string
	Admitted uint64
	Allowed  uint64
}

// OverAdmissions merges the per-worker tallies and returns every counter
// whose OK answers exceed limit × windows spanned (from the first request's
// send to the last answer: a sound bound whatever window algorithm the
// service uses, fixed, sliding or token bucket).
func (l *Load) OverAdmissions() (checked int, v []Violation) {
	all := map[string]*admitted{}
	for _, m := range l.track {
		for k, a := range m {
			b := all[k]
			if b == nil {
				all[k] = &admitted{count: a.count, first: a.first, last: a.last}
				continue
			}
			b.count += a.count
			if a.first.Before(b.first) {
				b.first = a.first
			}
			if a.last.After(b.last) {
				b.last = a.last
			}
		}
	}
	per := l.opt.Per
	for k, a := range all {
		windows := uint64(a.last.UnixNano()/int64(per)-a.first.UnixNano()/int64(per)) + 1
		if allowed := l.opt.ExpectLimit * windows; a.count > allowed {
			v = append(v, Violation{Value: k, Admitted: a.count, Allowed: allowed})
		}
	}
	sort.Slice(v, func(i, j int) bool { return v[i].Admitted-v[i].Allowed > v[j].Admitted-v[j].Allowed })
	return len(all), v
}

// Finish adds the RLS-specific values and checks to r.
func (l *Load) Finish(r *report.Result, deltas target.Samples, rtMetric string) {
	if l.opt.ExpectLimit > 0 {
		n, v := l.OverAdmissions()
		if len(v) == 0 {
			r.AddCheck("no-over-admission", true, "%d counters, none admitted more than %d per %s", n, l.opt.ExpectLimit, l.opt.Per)
		} else {
			var over uint64
			for _, x := range v {
				over += x.Admitted - x.Allowed
			}
			r.AddCheck("no-over-admission", false, "%d of %d counters over the limit, %d requests over-admitted; worst %s admitted %d, allowed %d",
				len(v), n, over, v[0].Value, v[0].Admitted, v[0].Allowed)
			r.Values["over_admitted_requests"] = float64(over)
		}
	}
	if deltas != nil && r.Requests > 0 {
		if name := RoundTripMetric(deltas, rtMetric); name != "" {
			r.Values["redis_roundtrips_per_request"] = deltas[name] / float64(r.Requests)
			r.Params["roundtrip-metric"] = name
		}
	}
	ok, over := r.Outcomes["OK"], r.Outcomes["OVER_LIMIT"]
	if ok+over > 0 {
		r.Values["over_limit_fraction"] = math.Round(float64(over)/float64(ok+over)*1e4) / 1e4
	}
}

// DefaultRoundTripMetric names the counter looked for when --roundtrip-metric
// is "auto": any metric matching this pattern.
var autoRoundTrip = regexp.MustCompile(`(?i)redis.*(round_?trips?|rtts?)(_total)?$`)

// RoundTripMetric picks the round-trip counter among the target's metrics:
// name itself if given, else the first auto match; "" if none.
func RoundTripMetric(s target.Samples, name string) string {
	if name != "" && name != "auto" {
		if _, ok := s[name]; ok {
			return name
		}
		return ""
	}
	var names []string
	for k := range s {
		if autoRoundTrip.MatchString(k) && !strings.HasSuffix(k, "_created") {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	if len(names) == 0 {
		return ""
	}
	return names[0]
}

var _ runner.Op = (*Load)(nil).Op
