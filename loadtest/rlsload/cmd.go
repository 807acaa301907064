package rlsload

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/spf13/pflag"

	"github.com/sidemesh/sidemesh/internal/app"
	"github.com/sidemesh/sidemesh/internal/lifecycle"
	"github.com/sidemesh/sidemesh/loadtest/harness"
)

// Spec is the `loadtest rls` subcommand.
func Spec() app.Spec {
	return app.Spec{
		Name: "loadtest rls", EnvPrefix: "LOADTEST_RLS",
		Summary: "ShouldRateLimit load (envoy.service.ratelimit.v3) against a rate limit service",
		Usage: `Examples:
  loadtest rls --target 127.0.0.1:18081 --concurrency 64 --conns 4 --duration 10s --keys unique --target-pid $(pgrep -nx rls)
  loadtest rls --keys hot --expect-limit 5 --per minute --domain sidemesh --key user     # fails on over-admission
  loadtest rls --rate 5000 --keys zipf:10000 --target-metrics http://127.0.0.1:19081/metrics`,
		Flags: func(fs *pflag.FlagSet) {
			fs.String("target", "127.0.0.1:18081", "RLS gRPC address host:port")
			harness.AddLoadFlags(fs, 64)
			fs.Int("conns", 4, "gRPC connections (workers are spread over them)")
			fs.String("client", ClientH2, "unary gRPC client: h2 (loadtest/h2grpc, a lean HTTP/2 client so the generator costs little CPU) or grpc (grpc-go ClientConn); --batch always uses grpc-go")
			fs.Bool("batch", false, "send calls as the sidemesh proxy does: batched on one RateLimitBatch stream per connection (falls back to unary against an RLS without it)")
			fs.String("domain", "sidemesh", "rate limit domain")
			fs.String("key", "user", "descriptor entry key")
			fs.String("keys", "unique", "descriptor values: unique (new counter per request), hot (one counter), zipf:N (Zipf s=1.1 over N), N (uniform over N)")
			fs.Int("descriptors", 1, "descriptors per request (each its own counter)")
			fs.Duration("timeout", 5*time.Second, "per-request deadline")
			fs.Uint64("expect-limit", 0, "configured limit for --key: fail if any counter admits more than this per --per window (0: no check)")
			fs.String("per", "minute", "unit of --expect-limit: second, minute, hour, day")
			fs.String("roundtrip-metric", "auto", "counter in the target's /metrics counting Redis round trips (auto: first metric matching redis.*round_?trips?(_total)?)")
			fs.String("run-id", "", "prefix of descriptor values (default: a fresh one per run, so earlier runs' counters do not interfere)")
			harness.AddOutputFlags(fs)
		},
		Run: run,
	}
}

func run(ctx context.Context, env *app.Env) error {
	fs := env.Flags
	cfg, err := harness.LoadConfig(fs)
	if err != nil {
		return err
	}
	opt := Options{Per: time.Minute}
	opt.Target, _ = fs.GetString("target")
	if err := harness.CheckAddr(ctx, fs, "target", opt.Target); err != nil {
		return err
	}
	opt.Conns, _ = fs.GetInt("conns")
	opt.Batch, _ = fs.GetBool("batch")
	opt.Client, _ = fs.GetString("client")
	switch {
	case opt.Client != ClientH2 && opt.Client != ClientGRPC:
		return app.Usagef("--client %q: want h2 or grpc", opt.Client)
	case opt.Batch && opt.Client == ClientH2 && fs.Changed("client"):
		return app.Usagef("--batch needs --client grpc (batch streams are grpc-go streams)")
	case opt.Batch:
		opt.Client = ClientGRPC
	}
	opt.Domain, _ = fs.GetString("domain")
	opt.Key, _ = fs.GetString("key")
	opt.Descriptors, _ = fs.GetInt("descriptors")
	opt.Timeout, _ = fs.GetDuration("timeout")
	opt.ExpectLimit, _ = fs.GetUint64("expect-limit")
	opt.RunID, _ = fs.GetString("run-id")
	ks, _ := fs.GetString("keys")
	if opt.Keys, err = ParseKeys(ks); err != nil {
		return app.Usagef("%v", err)
	}
	per, _ := fs.GetString("per")
	if opt.Per, err = Unit(per); err != nil {
		return app.Usagef("%v", err)
	}
	switch {
	case opt.Conns < 1 || opt.Conns > 1024:
		return app.Usagef("--conns must be in [1, 1024], got %d", opt.Conns)
	case opt.Descriptors < 1 || opt.Descriptors > 64:
		return app.Usagef("--descriptors must be in [1, 64], got %d", opt.Descriptors)
	case opt.Domain == "" || opt.Key == "":
		return app.Usagef("--domain and --key must not be empty")
	case opt.Timeout <= 0:
		return app.Usagef("--timeout must be positive")
	}
	if opt.RunID == "" {
		opt.RunID = "lt" + strconv.FormatInt(time.Now().UnixNano()%1e10, 36)
	}
	src, err := harness.TargetSource(ctx, fs)
	if err != nil {
		return err
	}
	var l *Load
	if opt.Client == ClientH2 {
		slots, err := DialH2(ctx, opt.Target, opt.Conns)
		if err != nil {
			return err
		}
		defer CloseH2(slots)
		l = NewH2(opt, slots, cfg.Concurrency)
	} else {
		conns, err := Dial(ctx, opt.Target, opt.Conns)
		if err != nil {
			return err
		}
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		l = New(ctx, opt, conns, cfg.Concurrency)
	}
	res, deltas, err := harness.Measure(ctx, env, "rls", opt.Target, cfg, src, l.Op)
	if err != nil {
		return err
	}
	res.Params = harness.Params(fs)
	res.Params["run-id"] = opt.RunID
	res.Params["client"] = opt.Client // the effective one (--batch forces grpc)
	rt, _ := fs.GetString("roundtrip-metric")
	l.Finish(res, deltas, rt)
	if res.Requests > 0 && res.Errors == res.Requests {
		res.AddCheck("answers", false, "every request failed")
	}
	return harness.Emit(env, res)
}

// NoopSpec is the `loadtest noop-rls` subcommand.
func NoopSpec() app.Spec {
	return app.Spec{
		Name: "loadtest noop-rls", EnvPrefix: "LOADTEST_NOOP_RLS",
		Summary:   "a bare grpc-go ShouldRateLimit server that answers OK at once (the CPU baseline for RLS ratios)",
		AdminAddr: "127.0.0.1:0",
		Flags: func(fs *pflag.FlagSet) {
			fs.String("addr", "127.0.0.1:18091", "gRPC listen address")
		},
		Run: func(ctx context.Context, env *app.Env) error {
			addr, _ := env.Flags.GetString("addr")
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return app.Usagef("--addr %s: %v", addr, err)
			}
			s := NewNoopServer()
			env.Log.Info("noop RLS listening", "addr", ln.Addr().String())
			fmt.Fprintln(env.Stdout, ln.Addr().String())
			return env.Serve(lifecycle.Unit{
				Name:  "noop-rls",
				Serve: func() error { return s.Serve(ln) },
				Shutdown: func(ctx context.Context) error {
					done := make(chan struct{})
					go func() { s.GracefulStop(); close(done) }()
					select {
					case <-done:
						return nil
					case <-ctx.Done():
						s.Stop()
						return ctx.Err()
					}
				},
			})
		},
	}
}
