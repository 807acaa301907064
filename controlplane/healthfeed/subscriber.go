// Package healthfeed subscribes to the HDS replicas' aggregated endpoint
// health (proto/healthfeed/v1 HealthFeed.Watch) and keeps the current
// verdict per endpoint, reconnecting across replicas with backoff.
package healthfeed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sidemesh/sidemesh/controlplane/translate"
	healthfeedv1 "github.com/sidemesh/sidemesh/proto/healthfeed/v1"
)

// Subscriber follows the health feed of any one of Addrs.
type Subscriber struct {
	Addrs []string
	Name  string // our name in the replica's logs
	Log   *slog.Logger
	// OnChange gets the full current health after every update. It runs on
	// the subscriber's goroutine.
	OnChange func(translate.Health)
	// Backoff bounds between failed attempts (defaults 100ms, 5s).
	MinBackoff, MaxBackoff time.Duration

	connected atomic.Pointer[string]
	mu        sync.Mutex
	state     map[translate.EndpointKey]healthfeedv1.Verdict

	updates prometheus.Counter
	conns   *prometheus.CounterVec
}

// RegisterMetrics adds the subscriber's metrics to reg; call before Run.
func (s *Subscriber) RegisterMetrics(reg prometheus.Registerer) {
	s.updates = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sidemesh_controlplane_healthfeed_updates_total", Help: "Health feed messages received.",
	})
	s.conns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sidemesh_controlplane_healthfeed_connects_total", Help: "Health feed connection attempts by result.",
	}, []string{"result"})
	reg.MustRegister(s.updates, s.conns, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sidemesh_controlplane_healthfeed_connected", Help: "1 while a health feed stream is up.",
	}, func() float64 {
		if s.Connected() != "" {
			return 1
		}
		return 0
	}))
}

// Connected is the replica address currently streaming, or "".
func (s *Subscriber) Connected() string {
	if p := s.connected.Load(); p != nil {
		return *p
	}
	return ""
}

// Health is a copy of the current health.
func (s *Subscriber) Health() translate.Health {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.healthLocked()
}

func (s *Subscriber) healthLocked() translate.Health {
	h := make(translate.Health, len(s.state))
	for k, v := range s.state {
		switch v {
		case healthfeedv1.Verdict_VERDICT_HEALTHY:
			h[k] = corev3.HealthStatus_HEALTHY
		case healthfeedv1.Verdict_VERDICT_UNHEALTHY:
			h[k] = corev3.HealthStatus_UNHEALTHY
		}
	}
	return h
}

// Run follows the feed until ctx ends: on any failure it moves to the next
// address, waiting with exponential backoff (reset after a good stream).
func (s *Subscriber) Run(ctx context.Context) error {
	if len(s.Addrs) == 0 {
		return errors.New("healthfeed: no addresses")
	}
	minB, maxB := s.MinBackoff, s.MaxBackoff
	if minB <= 0 {
		minB = 100 * time.Millisecond
	}
	if maxB <= 0 {
		maxB = 5 * time.Second
	}
	backoff := minB
	for i := 0; ctx.Err() == nil; i++ {
		addr := s.Addrs[i%len(s.Addrs)]
		got, err := s.watch(ctx, addr)
		s.connected.Store(nil)
		if ctx.Err() != nil {
			return nil
		}
		if got {
			backoff = minB
		}
		// Warn once per outage, not on every retry.
		lvl := slog.LevelDebug
		if got || i == 0 {
			lvl = slog.LevelWarn
		}
		s.Log.Log(ctx, lvl, "health feed stream ended; trying the next replica", "addr", addr, "err", err, "retry_in", backoff)
		// Jitter keeps many control planes from reconnecting in lockstep.
		wait := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		backoff = min(backoff*2, maxB)
	}
	return nil
}

// watch streams from one replica; got reports whether any message came.
func (s *Subscriber) watch(ctx context.Context, addr string) (got bool, err error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return false, fmt.Errorf("dial %s: %w", addr, err)
	}
	defer cc.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := healthfeedv1.NewHealthFeedClient(cc).Watch(ctx, &healthfeedv1.WatchRequest{Subscriber: s.Name})
	if err != nil {
		s.count("error")
		return false, err
	}
	for {
		u, err := st.Recv()
		if err != nil {
			if !got {
				s.count("error")
			}
			return got, err
		}
		if !got {
			got = true
			s.count("ok")
			s.connected.Store(&addr)
			s.Log.Info("health feed connected", "addr", addr, "replica", u.GetReplica())
		}
		if s.updates != nil {
			s.updates.Inc()
		}
		s.apply(u)
	}
}

func (s *Subscriber) count(result string) {
	if s.conns != nil {
		s.conns.WithLabelValues(result).Inc()
	}
}

func key(k *healthfeedv1.EndpointKey) translate.EndpointKey {
	return translate.EndpointKey{Cluster: k.GetCluster(), Address: k.GetAddress(), Port: k.GetPort()}
}

func (s *Subscriber) apply(u *healthfeedv1.HealthUpdate) {
	s.mu.Lock()
	if u.GetFull() || s.state == nil {
		// A full snapshot replaces everything: what it omits is unknown.
		s.state = map[translate.EndpointKey]healthfeedv1.Verdict{}
	}
	for _, e := range u.GetEndpoints() {
		if e.GetEndpoint() == nil {
			continue
		}
		s.state[key(e.GetEndpoint())] = e.GetVerdict()
	}
	for _, k := range u.GetRemoved() {
		delete(s.state, key(k))
	}
	h := s.healthLocked()
	s.mu.Unlock()
	if s.OnChange != nil {
		s.OnChange(h)
	}
}
