package hdsload

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	healthfeedv1 "github.com/sidemesh/sidemesh/proto/healthfeed/v1"
)

// Verdicts follows one replica's health feed (sidemesh.healthfeed.v1), the
// aggregated result the controlplane would see.
type Verdicts struct {
	mu   sync.Mutex
	v    map[Key]healthfeedv1.Verdict
	err  error
	done chan struct{}
}

// WatchVerdicts subscribes to addr's health feed until ctx ends, resubscribing
// if the stream breaks.
func WatchVerdicts(ctx context.Context, addr string) (*Verdicts, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	w := &Verdicts{v: map[Key]healthfeedv1.Verdict{}, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer conn.Close()
		for ctx.Err() == nil {
			err := w.follow(ctx, healthfeedv1.NewHealthFeedClient(conn))
			w.mu.Lock()
			w.err = err
			w.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return w, nil
}

func (w *Verdicts) follow(ctx context.Context, c healthfeedv1.HealthFeedClient) error {
	st, err := c.Watch(ctx, &healthfeedv1.WatchRequest{Subscriber: "loadtest"})
	if err != nil {
		return err
	}
	for {
		u, err := st.Recv()
		if err != nil {
			return err
		}
		w.mu.Lock()
		if u.GetFull() {
			clear(w.v)
		}
		for _, e := range u.GetEndpoints() {
			k := e.GetEndpoint()
			w.v[Key{Cluster: k.GetCluster(), Addr: k.GetAddress(), Port: k.GetPort()}] = e.GetVerdict()
		}
		for _, k := range u.GetRemoved() {
			delete(w.v, Key{Cluster: k.GetCluster(), Addr: k.GetAddress(), Port: k.GetPort()})
		}
		w.mu.Unlock()
	}
}

// Correct counts expected endpoints whose verdict matches the truth.
func (w *Verdicts) Correct(expected map[Key]bool, truth Truth) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for k := range expected {
		want := healthfeedv1.Verdict_VERDICT_UNHEALTHY
		if truth(k) {
			want = healthfeedv1.Verdict_VERDICT_HEALTHY
		}
		if w.v[k] == want {
			n++
		}
	}
	return n
}

// Wait blocks until the watcher has stopped (after its ctx ended).
func (w *Verdicts) Wait() { <-w.done }
