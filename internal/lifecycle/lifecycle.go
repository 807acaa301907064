// Package lifecycle runs a service's servers until a signal or a failure, then
// drains them within a bounded time.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// Unit is one thing that serves until told to stop.
type Unit struct {
	Name string
	// Serve blocks until the unit stops; it returns nil on a clean stop.
	Serve func() error
	// Shutdown stops accepting and drains in-flight work until ctx ends.
	Shutdown func(ctx context.Context) error
}

// Run starts every unit and waits. When ctx ends (SIGTERM) or any unit fails,
// all units are shut down, sharing one drain deadline. It returns the first
// unit failure, or nil after a clean signal-driven stop.
func Run(ctx context.Context, log *slog.Logger, drain time.Duration, units ...Unit) error {
	failed := make(chan error, len(units))
	var wg sync.WaitGroup
	for _, u := range units {
		wg.Add(1)
		go func(u Unit) {
			defer wg.Done()
			if err := u.Serve(); err != nil {
				failed <- fmt.Errorf("%s: %w", u.Name, err)
			}
		}(u)
	}
	var cause error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "drain_timeout", drain)
	case cause = <-failed:
		log.Error("unit failed, shutting down", "err", cause)
	}
	dctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	var sw sync.WaitGroup
	for _, u := range units {
		sw.Add(1)
		go func(u Unit) {
			defer sw.Done()
			if err := u.Shutdown(dctx); err != nil && !errors.Is(err, context.Canceled) {
				log.Warn("drain incomplete", "unit", u.Name, "err", err)
			}
		}(u)
	}
	sw.Wait()
	wg.Wait()
	if cause == nil {
		select {
		case cause = <-failed:
		default:
		}
	}
	if cause == nil {
		log.Info("stopped cleanly")
	}
	return cause
}

// HTTP wraps an http.Server serving on ln.
func HTTP(name string, srv *http.Server, ln net.Listener) Unit {
	return Unit{
		Name: name,
		Serve: func() error {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
		Shutdown: srv.Shutdown,
	}
}

// Func wraps a function that runs until its context is cancelled.
func Func(name string, f func(ctx context.Context) error) Unit {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	return Unit{
		Name: name,
		Serve: func() error {
			defer close(done)
			if err := f(ctx); err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		},
		Shutdown: func(sctx context.Context) error {
			cancel()
			select {
			case <-done:
				return nil
			case <-sctx.Done():
				return sctx.Err()
			}
		},
	}
}
