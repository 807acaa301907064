// Package redisbackend counts rate limits in Redis (single node, Sentinel or
// Cluster) with one atomic Lua script per request, and batches concurrent
// requests into shared pipelines so Redis round trips stay well below one
// per request.
package redisbackend

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sidemesh/sidemesh/services/rls/internal/limiter"
	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

//go:embed script.lua
var scriptSrc string

var script = redis.NewScript(scriptSrc)

// Options configures the backend.
type Options struct {
	Client redis.UniversalClient
	// Cluster splits a request's keys by hash slot (one script per slot).
	Cluster bool
	// Timeout bounds one pipeline round trip (and so each caller's wait).
	Timeout time.Duration
	// BatchSize caps the requests in one pipeline; BatchWait is how long an
	// executor waits for more requests once it has one (0: take what is
	// queued, never wait).
	BatchSize int
	BatchWait time.Duration
	// Pipelines is how many pipelines may be in flight at once.
	Pipelines int
	// BreakerFailures consecutive failed round trips open the circuit for
	// BreakerCooldown.
	BreakerFailures int
	BreakerCooldown time.Duration
	Registerer      prometheus.Registerer
}

// Redis is the backend.
type Redis struct {
	opts    Options
	queue   chan *job
	br      breaker
	stop    chan struct{}
	wg      sync.WaitGroup
	jobPool sync.Pool

	roundTrips prometheus.Counter
	batchSize  prometheus.Histogram
	errs       *prometheus.CounterVec
	breakerG   prometheus.GaugeFunc
}

type call struct {
	keys []string
	args []any
	idx  []int // item indexes this call covers
	res  []any
	err  error
}

type job struct {
	calls []call
	done  chan struct{}
}

// New starts the backend's pipeline executors; Close stops them.
func New(o Options) (*Redis, error) {
	if o.Client == nil {
		return nil, errors.New("redis backend: no client")
	}
	if o.Timeout <= 0 {
		o.Timeout = 100 * time.Millisecond
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 256
	}
	if o.Pipelines <= 0 {
		o.Pipelines = 4
	}
	if o.BreakerFailures <= 0 {
		o.BreakerFailures = 5
	}
	if o.BreakerCooldown <= 0 {
		o.BreakerCooldown = time.Second
	}
	r := &Redis{
		opts:  o,
		queue: make(chan *job, 8192),
		stop:  make(chan struct{}),
		br:    breaker{threshold: int64(o.BreakerFailures), cooldown: o.BreakerCooldown},
		roundTrips: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rls_redis_round_trips_total", Help: "Redis pipelines sent (one network round trip each; per node in Cluster mode).",
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "rls_redis_batch_requests", Help: "ShouldRateLimit requests per Redis pipeline.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512},
		}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rls_redis_errors_total", Help: "Redis failures by kind (timeout, connection, script, breaker_open).",
		}, []string{"kind"}),
	}
	r.breakerG = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "rls_redis_breaker_open", Help: "1 while the Redis circuit breaker refuses calls.",
	}, func() float64 {
		if r.br.open(time.Now()) {
			return 1
		}
		return 0
	})
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{r.roundTrips, r.batchSize, r.errs, r.breakerG} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("redis backend metrics: %w", err)
			}
		}
	}
	r.jobPool.New = func() any { return &job{done: make(chan struct{}, 1)} }
	for i := 0; i < o.Pipelines; i++ {
		r.wg.Add(1)
		go r.executor()
	}
	return r, nil
}

// Close stops the executors (queued callers get ErrUnavailable by timeout).
func (r *Redis) Close() {
	close(r.stop)
	r.wg.Wait()
}

// Ping checks that Redis answers within the call timeout (every node of a
// cluster).
func (r *Redis) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, max(r.opts.Timeout, 500*time.Millisecond))
	defer cancel()
	if cc, ok := r.opts.Client.(*redis.ClusterClient); ok {
		return cc.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error { return c.Ping(ctx).Err() })
	}
	return r.opts.Client.Ping(ctx).Err()
}

// Check implements limiter.Backend.
func (r *Redis) Check(ctx context.Context, now time.Time, items []limiter.Item, results []limiter.Result) error {
	if !r.br.allow(now) {
		r.errs.WithLabelValues("breaker_open").Inc()
		return fmt.Errorf("%w: circuit breaker open", limiter.ErrUnavailable)
	}
	nowUS := now.UnixMicro()
	j := r.jobPool.Get().(*job)
	j.calls = r.buildCalls(j.calls[:0], now, nowUS, items)
	timer := time.NewTimer(r.opts.Timeout + r.opts.BatchWait + 50*time.Millisecond)
	defer timer.Stop()
	select {
	case r.queue <- j:
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", limiter.ErrUnavailable, ctx.Err())
	case <-timer.C:
		r.errs.WithLabelValues("timeout").Inc()
		return fmt.Errorf("%w: redis queue full", limiter.ErrUnavailable)
	}
	select {
	case <-j.done:
	case <-ctx.Done():
		// The executor still owns j; it is dropped, not pooled.
		return fmt.Errorf("%w: %v", limiter.ErrUnavailable, ctx.Err())
	case <-timer.C:
		r.errs.WithLabelValues("timeout").Inc()
		return fmt.Errorf("%w: redis timed out", limiter.ErrUnavailable)
	}
	defer r.jobPool.Put(j)
	for ci := range j.calls {
		c := &j.calls[ci]
		if c.err != nil {
			return fmt.Errorf("%w: %v", limiter.ErrUnavailable, c.err)
		}
		if len(c.res) != 1+3*len(c.idx) {
			return fmt.Errorf("%w: script returned %d values for %d items", limiter.ErrUnavailable, len(c.res), len(c.idx))
		}
		for n, i := range c.idx {
			over, _ := c.res[1+3*n].(int64)
			a, _ := c.res[2+3*n].(int64)
			b, _ := c.res[3+3*n].(int64)
			rejected, _ := c.res[0].(int64)
			results[i] = limiter.Outcome(&items[i], limiter.State{A: a, B: b}, over == 1, rejected == 0 && over == 0, nowUS)
		}
	}
	return nil
}

// buildCalls turns items into script calls: one per request, or in Cluster
// mode one per hash slot (each atomic on its own; see README).
func (r *Redis) buildCalls(calls []call, now time.Time, nowUS int64, items []limiter.Item) []call {
	if !r.opts.Cluster {
		if cap(calls) > 0 {
			calls = calls[:1]
		} else {
			calls = append(calls, call{})
		}
		c := &calls[0]
		c.keys, c.args, c.idx, c.res, c.err = c.keys[:0], c.args[:0], c.idx[:0], nil, nil
		c.args = append(c.args, strconv.FormatInt(nowUS, 10), 0)
		for i := range items {
			c.add(&items[i], i, now, nowUS)
		}
		c.args[1] = len(c.idx)
		return calls
	}
	bySlot := map[int]int{}
	for i := range items {
		s := Slot(items[i].Key)
		ci, ok := bySlot[s]
		if !ok {
			ci = len(calls)
			bySlot[s] = ci
			calls = append(calls, call{args: []any{strconv.FormatInt(nowUS, 10), 0}})
		}
		calls[ci].add(&items[i], i, now, nowUS)
	}
	for ci := range calls {
		calls[ci].args[1] = len(calls[ci].idx)
	}
	return calls
}

var algArg = [...]string{rules.FixedWindow: "f", rules.SlidingWindow: "s", rules.TokenBucket: "t"}

func (c *call) add(it *limiter.Item, i int, now time.Time, nowUS int64) {
	c.idx = append(c.idx, i)
	enforce := "0"
	if it.Enforce {
		enforce = "1"
	}
	unitS := int64(it.Unit / time.Second)
	var p1, p2 int64
	switch it.Algorithm {
	case rules.SlidingWindow:
		ws := limiter.WindowStart(now, it.Unit)
		c.keys = append(c.keys, limiter.WindowKey(it.Key, ws-unitS), limiter.WindowKey(it.Key, ws))
		p1, p2 = it.Unit.Microseconds(), nowUS%it.Unit.Microseconds()
	case rules.TokenBucket:
		c.keys = append(c.keys, it.Key)
		p1, p2 = limiter.Emission(it)
	default:
		c.keys = append(c.keys, limiter.WindowKey(it.Key, limiter.WindowStart(now, it.Unit)))
		p1 = unitS
	}
	c.args = append(c.args, algArg[it.Algorithm], it.Limit, it.Hits, enforce, p1, p2)
}

func (r *Redis) executor() {
	defer r.wg.Done()
	batch := make([]*job, 0, r.opts.BatchSize)
	var wait *time.Timer
	for {
		select {
		case <-r.stop:
			return
		case j := <-r.queue:
			batch = append(batch[:0], j)
		}
		waited := r.opts.BatchWait <= 0
	fill:
		for len(batch) < r.opts.BatchSize {
			select {
			case j := <-r.queue:
				batch = append(batch, j)
				continue
			default:
			}
			if waited {
				break
			}
			waited = true
			if wait == nil {
				wait = time.NewTimer(r.opts.BatchWait)
			} else {
				wait.Reset(r.opts.BatchWait)
			}
			for len(batch) < r.opts.BatchSize {
				select {
				case j := <-r.queue:
					batch = append(batch, j)
				case <-wait.C:
					break fill
				}
			}
			if !wait.Stop() {
				<-wait.C
			}
		}
		r.exec(batch)
		for _, j := range batch {
			j.done <- struct{}{}
		}
	}
}

func (r *Redis) exec(batch []*job) {
	ctx, cancel := context.WithTimeout(context.Background(), r.opts.Timeout)
	defer cancel()
	r.batchSize.Observe(float64(len(batch)))
	pipe := r.opts.Client.Pipeline()
	var cmds []*redis.Cmd
	for _, j := range batch {
		for ci := range j.calls {
			cmds = append(cmds, pipe.EvalSha(ctx, script.Hash(), j.calls[ci].keys, j.calls[ci].args...))
		}
	}
	r.roundTrips.Inc()
	_, err := pipe.Exec(ctx)
	if err != nil && !isServerError(err) {
		r.fail(err)
		for _, j := range batch {
			for ci := range j.calls {
				j.calls[ci].err = err
			}
		}
		return
	}
	// NOSCRIPT (Redis restarted or SCRIPT FLUSH): resend those with EVAL,
	// which also loads the script for next time.
	var retry []int
	for i, c := range cmds {
		if c.Err() != nil && strings.HasPrefix(c.Err().Error(), "NOSCRIPT") {
			retry = append(retry, i)
		}
	}
	if len(retry) > 0 {
		pipe := r.opts.Client.Pipeline()
		n := 0
		for _, j := range batch {
			for ci := range j.calls {
				if len(retry) > 0 && retry[0] == n {
					cmds[n] = pipe.Eval(ctx, scriptSrc, j.calls[ci].keys, j.calls[ci].args...)
					retry = retry[1:]
				}
				n++
			}
		}
		r.roundTrips.Inc()
		if _, err := pipe.Exec(ctx); err != nil && !isServerError(err) {
			r.fail(err)
			for _, j := range batch {
				for ci := range j.calls {
					j.calls[ci].err = err
				}
			}
			return
		}
	}
	r.br.success()
	n := 0
	for _, j := range batch {
		for ci := range j.calls {
			c := &j.calls[ci]
			res, err := cmds[n].Slice()
			n++
			c.res, c.err = res, err
			if err != nil {
				r.errs.WithLabelValues("script").Inc()
			}
		}
	}
}

func (r *Redis) fail(err error) {
	r.br.failure(time.Now())
	kind := "connection"
	if errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "timeout") {
		kind = "timeout"
	}
	r.errs.WithLabelValues(kind).Inc()
}

// isServerError tells a Redis error reply (one command failed, the connection
// is fine) from a network failure.
func isServerError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "i/o timeout")
}
