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
	"runtime"
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

//go:embed refund.lua
var refundSrc string

var refundScript = redis.NewScript(refundSrc)

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

// call is one request's part for one hash slot (the whole request outside
// Cluster mode).
type call struct {
	slot int
	keys []string
	args []any // now, item count, 6 numbers per item (see script.lua)
	idx  []int // item indexes this call covers
	// Filled by the executor:
	reply string // "rejected:over,A,B,..." for this call
	err   error
}

type job struct {
	calls []call
	done  chan struct{}
	// group: more jobs queued with this one (a CheckBatch), so the
	// executor takes them together into one pipeline.
	group []*job
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
		o.Pipelines = 1
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
		if r.br.open() {
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
	j, err := r.submit(now, items)
	if err != nil {
		return err
	}
	return r.collect(ctx, j, now, items, results)
}

// CheckBatch implements limiter.BatchBackend: every request is queued
// before the first wait, so the executor sees them all at once and they
// share one pipeline (up to --redis-batch-size).
func (r *Redis) CheckBatch(ctx context.Context, reqs []limiter.Request) {
	jobs := make([]*job, len(reqs))
	var ready []int // requests built, not yet queued
	flush := func() {
		if len(ready) == 0 {
			return
		}
		head := jobs[ready[0]]
		head.group = head.group[:0]
		for _, i := range ready[1:] {
			head.group = append(head.group, jobs[i])
		}
		if err := r.enqueue(head); err != nil {
			for _, i := range ready {
				r.jobPool.Put(jobs[i])
				jobs[i], reqs[i].Err = nil, err
			}
		}
		ready = ready[:0]
	}
	for i := range reqs {
		if jobs[i], reqs[i].Err = r.build(reqs[i].Now, reqs[i].Items); reqs[i].Err != nil {
			continue
		}
		if ready = append(ready, i); len(ready) == r.opts.BatchSize {
			flush()
		}
	}
	flush()
	for i := range reqs {
		if jobs[i] != nil {
			reqs[i].Err = r.collect(ctx, jobs[i], reqs[i].Now, reqs[i].Items, reqs[i].Results)
		}
	}
}

// submit queues one request's calls for the executor.
func (r *Redis) submit(now time.Time, items []limiter.Item) (*job, error) {
	j, err := r.build(now, items)
	if err != nil {
		return nil, err
	}
	if err := r.enqueue(j); err != nil {
		r.jobPool.Put(j)
		return nil, err
	}
	return j, nil
}

// build turns one request's items into a job, unless the breaker is open.
func (r *Redis) build(now time.Time, items []limiter.Item) (*job, error) {
	if !r.br.allow() {
		r.errs.WithLabelValues("breaker_open").Inc()
		return nil, fmt.Errorf("%w: circuit breaker open", limiter.ErrUnavailable)
	}
	j := r.jobPool.Get().(*job)
	j.calls = r.buildCalls(j.calls[:0], now, now.UnixMicro(), items)
	j.group = j.group[:0]
	return j, nil
}

// enqueue hands j (and its group) to the executor without blocking.
func (r *Redis) enqueue(j *job) error {
	select {
	case r.queue <- j:
		return nil
	default:
		// Counts as a failure (it also ends a half-open probe that never ran).
		r.br.failure()
		r.errs.WithLabelValues("queue_full").Inc()
		return fmt.Errorf("%w: redis queue full", limiter.ErrUnavailable)
	}
}

// collect waits for a submitted job and reads its results. No timer per
// call: an executor finishes every pipeline within Timeout, so a queued job
// is answered within its wait in the queue plus Timeout; the caller's
// context still bounds the wait.
func (r *Redis) collect(ctx context.Context, j *job, now time.Time, items []limiter.Item, results []limiter.Result) error {
	select {
	case <-j.done:
	case <-ctx.Done():
		// The executor still owns j; it is dropped, not pooled. The caller
		// gave up: not a Redis failure.
		return fmt.Errorf("waiting for redis: %w", ctx.Err())
	}
	defer r.jobPool.Put(j)
	nowUS := now.UnixMicro()
	for ci := range j.calls {
		c := &j.calls[ci]
		if c.err != nil {
			return fmt.Errorf("%w: %v", limiter.ErrUnavailable, c.err)
		}
		if err := parseReply(c.reply, c.idx, items, results, nowUS); err != nil {
			return fmt.Errorf("%w: %v", limiter.ErrUnavailable, err)
		}
	}
	if len(j.calls) > 1 {
		r.refundSplit(ctx, now, nowUS, j.calls, items, results)
	}
	return nil
}

// refundSplit keeps "a rejected request charges nothing" across hash slots
// (Cluster mode): when the request as a whole is rejected — one slot part
// rejected, or its quota group members, spread over several slots, are all
// over — the parts that charged are refunded (one more round trip per slot,
// only in that case). Until the refund lands another request may see the
// extra hits (a transient over-count: it can deny, never over-admit).
func (r *Redis) refundSplit(ctx context.Context, now time.Time, nowUS int64, calls []call, items []limiter.Item, results []limiter.Result) {
	if !limiter.Rejected(items, results) {
		return
	}
	bySlot := map[int]*call{}
	for ci := range calls {
		for _, i := range calls[ci].idx {
			it := &items[i]
			if !results[i].Charged || it.Hits == 0 {
				continue
			}
			c := bySlot[calls[ci].slot]
			if c == nil {
				c = &call{}
				bySlot[calls[ci].slot] = c
			}
			amount := int64(it.Hits)
			switch it.Algorithm {
			case rules.TokenBucket:
				c.keys = append(c.keys, it.Key)
				t, _ := limiter.Emission(it)
				amount *= t
			case rules.SlidingWindow:
				c.keys = append(c.keys, limiter.WindowKey(it.Key, limiter.WindowStart(now, it.Unit)))
			default:
				c.keys = append(c.keys, limiter.WindowKey(it.Key, limiter.WindowStart(now, it.Unit)))
			}
			c.args = append(c.args, algArg[it.Algorithm], amount)
			// Uncharged, the hits are available again.
			results[i].Charged = false
			results[i].Remaining = uint32(min(int64(results[i].Remaining)+int64(it.Hits), int64(it.Limit)))
		}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.opts.Timeout)
	defer cancel()
	for _, c := range bySlot {
		r.roundTrips.Inc()
		if err := refundScript.Run(ctx, r.opts.Client, c.keys, c.args...).Err(); err != nil && err != redis.Nil {
			r.errs.WithLabelValues("refund").Inc()
		}
	}
}

// parseReply reads "rejected:over,A,B,over,A,B" without allocating.
func parseReply(s string, idx []int, items []limiter.Item, results []limiter.Result, nowUS int64) error {
	p := replyParser{s: s}
	rejected := p.int(':')
	for _, i := range idx {
		over := p.int(',')
		a := p.int(',')
		b := p.int(',')
		if p.bad {
			break
		}
		results[i] = limiter.Outcome(&items[i], limiter.State{A: a, B: b}, over == 1, rejected == 0 && over == 0, nowUS)
	}
	if p.bad || p.pos < len(p.s) {
		return fmt.Errorf("malformed script reply %q for %d items", s, len(idx))
	}
	return nil
}

type replyParser struct {
	s   string
	pos int
	bad bool
}

// int reads digits up to sep (or the end).
func (p *replyParser) int(sep byte) int64 {
	var v int64
	start := p.pos
	for p.pos < len(p.s) && p.s[p.pos] != sep {
		c := p.s[p.pos]
		if c < '0' || c > '9' {
			p.bad = true
			return 0
		}
		v = v*10 + int64(c-'0')
		p.pos++
	}
	if p.pos == start {
		p.bad = true
	}
	if p.pos < len(p.s) {
		p.pos++ // the separator
	}
	return v
}

// buildCalls turns items into script calls: one per request, or in Cluster
// mode one per hash slot (each atomic on its own; see README). A quota
// group spread over several slots cannot be decided by any one part: its
// members are sent as count-only, and refundSplit applies the group rule.
func (r *Redis) buildCalls(calls []call, now time.Time, nowUS int64, items []limiter.Item) []call {
	calls = calls[:0]
	splitQuota := false
	if r.opts.Cluster {
		qs := -1
		for i := range items {
			if items[i].Enforce != limiter.QuotaMember {
				continue
			}
			if s := Slot(items[i].Key); qs < 0 {
				qs = s
			} else if s != qs {
				splitQuota = true
				break
			}
		}
	}
	for i := range items {
		s := 0
		if r.opts.Cluster {
			s = Slot(items[i].Key)
		}
		ci := -1
		for k := range calls {
			if calls[k].slot == s {
				ci = k
				break
			}
		}
		if ci < 0 {
			ci = len(calls)
			if cap(calls) > ci {
				calls = calls[:ci+1]
			} else {
				calls = append(calls, call{})
			}
			c := &calls[ci]
			c.slot, c.keys, c.idx, c.reply, c.err = s, c.keys[:0], c.idx[:0], "", nil
			c.args = append(c.args[:0], nowUS, 0)
		}
		calls[ci].add(&items[i], i, now, nowUS, splitQuota)
	}
	for k := range calls {
		calls[k].args[1] = len(calls[k].idx)
	}
	return calls
}

var algArg = [...]int{rules.FixedWindow: 1, rules.SlidingWindow: 2, rules.TokenBucket: 3}

func (c *call) add(it *limiter.Item, i int, now time.Time, nowUS int64, splitQuota bool) {
	c.idx = append(c.idx, i)
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
	enforce := int(it.Enforce) // script.lua: 0 count only, 1 enforced, 2 quota group
	if splitQuota && it.Enforce == limiter.QuotaMember {
		enforce = int(limiter.CountOnly)
	}
	c.args = append(c.args, algArg[it.Algorithm], it.Limit, it.Hits, enforce, p1, p2)
}

func (r *Redis) executor() {
	defer r.wg.Done()
	batch := make([]*job, 0, r.opts.BatchSize)
	var groups []group
	var wait *time.Timer
	for {
		select {
		case <-r.stop:
			return
		case j := <-r.queue:
			batch = append(append(batch[:0], j), j.group...)
		}
		// Let handlers that are ready queue their requests first: they
		// join this pipeline (on few cores the woken executor would
		// otherwise run first and send one request per pipeline).
		runtime.Gosched()
		waited := r.opts.BatchWait <= 0
	fill:
		for len(batch) < r.opts.BatchSize {
			select {
			case j := <-r.queue:
				batch = append(append(batch, j), j.group...)
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
					batch = append(append(batch, j), j.group...)
				case <-wait.C:
					break fill
				}
			}
			if !wait.Stop() {
				<-wait.C
			}
		}
		r.exec(batch, &groups)
		for _, j := range batch {
			j.done <- struct{}{}
		}
	}
}

// group is every call of one batch that goes to one hash slot: it becomes a
// single EVALSHA, so a batch costs one command per slot, not per request.
type group struct {
	slot  int
	calls []*call
	keys  []string
	args  []any
	cmd   *redis.StringCmd
	retry bool // resend with EVAL (after NOSCRIPT)
}

func (r *Redis) exec(batch []*job, reuse *[]group) {
	ctx, cancel := context.WithTimeout(context.Background(), r.opts.Timeout)
	defer cancel()
	r.batchSize.Observe(float64(len(batch)))
	groups := (*reuse)[:0]
	for _, j := range batch {
		for ci := range j.calls {
			c := &j.calls[ci]
			gi := -1
			for k := range groups {
				if groups[k].slot == c.slot {
					gi = k
					break
				}
			}
			if gi < 0 {
				gi = len(groups)
				if cap(groups) > gi {
					groups = groups[:gi+1]
				} else {
					groups = append(groups, group{})
				}
				g := &groups[gi]
				g.slot, g.calls, g.keys, g.args = c.slot, g.calls[:0], g.keys[:0], g.args[:0]
			}
			g := &groups[gi]
			g.calls = append(g.calls, c)
			g.keys = append(g.keys, c.keys...)
			g.args = append(g.args, c.args...)
		}
	}
	*reuse = groups
	err := r.run(ctx, groups, false)
	if err == nil {
		// NOSCRIPT (Redis restarted, SCRIPT FLUSH, a new cluster node):
		// resend only those groups with EVAL, which also loads the script.
		// The others already ran and must not run twice.
		for k := range groups {
			g := &groups[k]
			g.retry = false
			if e := g.cmd.Err(); e != nil && strings.HasPrefix(e.Error(), "NOSCRIPT") {
				g.retry = true
			}
		}
		err = r.run(ctx, groups, true)
	}
	if err != nil {
		r.fail(err)
		for _, j := range batch {
			for ci := range j.calls {
				j.calls[ci].err = err
			}
		}
		return
	}
	r.br.success()
	for k := range groups {
		g := &groups[k]
		reply, err := g.cmd.Result()
		if err != nil {
			r.errs.WithLabelValues("script").Inc()
			for _, c := range g.calls {
				c.err = err
			}
			continue
		}
		// Split "req|req|..." among the group's calls, in order.
		for n, c := range g.calls {
			end := strings.IndexByte(reply, '|')
			if end < 0 || n == len(g.calls)-1 {
				end = len(reply)
			}
			c.reply = reply[:end]
			reply = reply[min(end+1, len(reply)):]
		}
	}
}

// run sends every group in one pipeline (one round trip; per node in
// Cluster mode). It returns only connection-level errors.
func (r *Redis) run(ctx context.Context, groups []group, eval bool) error {
	pipe := r.opts.Client.Pipeline()
	n := 0
	for k := range groups {
		g := &groups[k]
		if eval && !g.retry {
			continue
		}
		args := make([]any, 0, 3+len(g.keys)+len(g.args))
		if eval {
			args = append(args, "eval", scriptSrc, len(g.keys))
		} else {
			args = append(args, "evalsha", script.Hash(), len(g.keys))
		}
		for _, k := range g.keys {
			args = append(args, k)
		}
		g.cmd = redis.NewStringCmd(ctx, append(args, g.args...)...)
		pipe.Process(ctx, g.cmd)
		n++
	}
	if n == 0 {
		return nil
	}
	r.roundTrips.Inc()
	if _, err := pipe.Exec(ctx); err != nil && !isServerError(err) {
		return err
	}
	return nil
}

func (r *Redis) fail(err error) {
	r.br.failure()
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
