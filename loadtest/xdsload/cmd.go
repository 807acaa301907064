package xdsload

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sidemesh/sidemesh/internal/app"
	"github.com/sidemesh/sidemesh/loadtest/harness"
	"github.com/sidemesh/sidemesh/loadtest/hist"
	"github.com/sidemesh/sidemesh/loadtest/report"
	"github.com/sidemesh/sidemesh/loadtest/target"
)

// Spec is the `loadtest xds` subcommand.
func Spec() app.Spec {
	return app.Spec{
		Name: "loadtest xds", EnvPrefix: "LOADTEST_XDS",
		Summary: "N simulated ADS clients (SotW or delta): time from a model change to every client ACKed, bytes per push",
		Usage: `The change is made by rewriting --model (a generated model: --generate SxE) or by running --change-cmd.
Examples:
  loadtest xds --model /tmp/m.yaml --generate 500x10 --generate-only      # write the model, then start:
  bin/controlplane --xds-addr 127.0.0.1:18000 --model /tmp/m.yaml &
  loadtest xds --target 127.0.0.1:18000 --model /tmp/m.yaml --generate 500x10 --clients 1000 --mode delta --target-pid $!
  loadtest xds --clients 100 --change-cmd 'sed -i s/15101/1510$LOADTEST_CHANGE/ mesh.yaml'`,
		Flags: func(fs *pflag.FlagSet) {
			fs.String("target", "127.0.0.1:18000", "controlplane xDS (ADS) address")
			fs.Int("clients", 100, "simulated ADS clients (one stream each)")
			fs.Int("conns", 0, "gRPC connections the streams share (0: one per client, like real proxies)")
			fs.String("mode", "sotw", "xDS variant: sotw or delta")
			fs.Int("changes", 3, "model changes to measure")
			fs.Duration("change-timeout", 30*time.Second, "how long every client may take to get one change (and the initial sync)")
			fs.Duration("pause", 500*time.Millisecond, "pause between changes")
			fs.Duration("connect-timeout", 30*time.Second, "how long to wait for --target to accept connections (a controlplane just started)")
			fs.Duration("duration", 5*time.Minute, "bound on the whole run")
			fs.String("model", "", "model file the controlplane watches; rewritten for each change (needs --generate)")
			fs.String("generate", "", "SERVICESxENDPOINTS: write a generated model of that size to --model at start, e.g. 500x10")
			fs.Bool("generate-only", false, "write the generated model and exit (to start the controlplane on it)")
			fs.String("write-mode", "rename", "how the model is rewritten: rename (temp file + rename, atomic) or inplace")
			fs.String("change-cmd", "", "shell command making change $LOADTEST_CHANGE instead of rewriting --model")
			fs.String("node-prefix", "loadtest", "node ids are PREFIX-i")
			fs.String("node-cluster", "loadtest", "node cluster")
			fs.String("zone", "zone-a", "node locality zone")
			fs.String("role", "sidecar", "node metadata role")
			harness.AddOutputFlags(fs)
		},
		Run: run,
	}
}

func run(ctx context.Context, env *app.Env) error {
	fs := env.Flags
	addr, _ := fs.GetString("target")
	clients, _ := fs.GetInt("clients")
	nconns, _ := fs.GetInt("conns")
	mode, _ := fs.GetString("mode")
	dur, _ := fs.GetDuration("duration")
	opt := Options{Clients: clients, Delta: mode == "delta"}
	opt.Changes, _ = fs.GetInt("changes")
	opt.ChangeTimeout, _ = fs.GetDuration("change-timeout")
	opt.Pause, _ = fs.GetDuration("pause")
	opt.Node.IDPrefix, _ = fs.GetString("node-prefix")
	opt.Node.Cluster, _ = fs.GetString("node-cluster")
	opt.Node.Zone, _ = fs.GetString("zone")
	opt.Node.Role, _ = fs.GetString("role")
	switch {
	case mode != "sotw" && mode != "delta":
		return app.Usagef("--mode %q: want sotw or delta", mode)
	case clients < 1 || clients > 100000:
		return app.Usagef("--clients must be in [1, 100000], got %d", clients)
	case nconns < 0:
		return app.Usagef("--conns must not be negative")
	case opt.Changes < 0 || opt.Changes > 10000:
		return app.Usagef("--changes must be in [0, 10000], got %d", opt.Changes)
	case opt.ChangeTimeout <= 0 || dur <= 0 || dur > time.Hour:
		return app.Usagef("--change-timeout must be positive and --duration in (0, 1h]")
	}
	trig, err := buildTrigger(fs, &opt)
	if err != nil {
		return err
	}
	if only, _ := fs.GetBool("generate-only"); only {
		m, ok := trig.(*Model)
		if !ok {
			return app.Usagef("--generate-only needs --model and --generate")
		}
		if err := m.Write(); err != nil {
			return fmt.Errorf("writing %s: %w", m.Path, err)
		}
		fmt.Fprintf(env.Stderr, "wrote %s: %d services × %d endpoints\n", m.Path, m.Services, m.Eps)
		return nil
	}
	if err := harness.CheckAddr(ctx, fs, "target", addr); err != nil {
		return err
	}
	if m, ok := trig.(*Model); ok {
		// Start from this run's own model (fresh marker, nothing moved).
		if err := m.Write(); err != nil {
			return fmt.Errorf("writing %s: %w", m.Path, err)
		}
	}
	src, err := harness.TargetSource(ctx, fs)
	if err != nil {
		return err
	}
	if nconns == 0 || nconns > clients {
		nconns = clients
	}
	conns := make([]*grpc.ClientConn, 0, nconns)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range nconns {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
		if err != nil {
			return app.Usagef("--target %s: %v", addr, err)
		}
		conns = append(conns, c)
	}
	// A controlplane just started may not listen yet: wait for it (with a
	// bound) instead of failing every stream on "connection refused".
	connectTimeout, _ := fs.GetDuration("connect-timeout")
	if err := waitReady(ctx, conns[0], addr, connectTimeout, env.Stderr); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	var watch *target.Watch
	if src != nil {
		if watch, err = target.Start(ctx, src, 100*time.Millisecond); err != nil {
			return fmt.Errorf("target cost: %w", err)
		}
	}
	opt.Status = harness.Status(env.Stderr)
	began := time.Now()
	out, runErr := Run(ctx, conns, opt, trig)
	harness.ClearProgress(env.Stderr)
	elapsed := time.Since(began)
	if out == nil {
		return runErr
	}
	res := Summarise(addr, mode, opt, out, elapsed)
	res.Params = harness.Params(fs)
	if watch != nil {
		st, err := watch.Stop(context.WithoutCancel(ctx))
		if err != nil {
			return fmt.Errorf("target cost: %w", err)
		}
		res.Cost = harness.Cost(st, 0, elapsed) // CPU per (client, change) would mislead: the run includes the initial sync
	}
	if runErr != nil {
		res.AddCheck("run", false, "%v", runErr)
	}
	return harness.Emit(env, res)
}

// waitReady connects c and waits until it is ready or limit passes.
func waitReady(ctx context.Context, c *grpc.ClientConn, addr string, limit time.Duration, progress io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	c.Connect()
	said := false
	for st := c.GetState(); st != connectivity.Ready; st = c.GetState() {
		if st == connectivity.TransientFailure && !said {
			fmt.Fprintf(progress, "waiting for the xDS server at %s ...\n", addr)
			said = true
		}
		if !c.WaitForStateChange(ctx, st) {
			return fmt.Errorf("--target %s: not reachable within %s (last state %s)", addr, limit, st)
		}
	}
	return nil
}

func buildTrigger(fs *pflag.FlagSet, opt *Options) (Trigger, error) {
	model, _ := fs.GetString("model")
	gen, _ := fs.GetString("generate")
	cmd, _ := fs.GetString("change-cmd")
	wm, _ := fs.GetString("write-mode")
	if wm != "rename" && wm != "inplace" {
		return nil, app.Usagef("--write-mode %q: want rename or inplace", wm)
	}
	switch {
	case cmd != "" && (model != "" || gen != ""):
		return nil, app.Usagef("give --change-cmd or --model/--generate, not both")
	case cmd != "":
		return Command{Cmd: cmd}, nil
	case model == "" || gen == "":
		if opt.Changes == 0 {
			return Command{Cmd: "true"}, nil
		}
		return nil, app.Usagef("say how to change the model: --model FILE --generate SxE, or --change-cmd CMD")
	}
	s, e, err := ParseSize(gen)
	if err != nil {
		return nil, app.Usagef("%v", err)
	}
	m := &Model{Path: model, Services: s, Eps: e, Rename: wm == "rename", Epoch: uint32(time.Now().UnixNano()/1000) % epochs}
	opt.Initial = HasPort(m.MarkerPort())
	return m, nil
}

// Summarise turns an outcome into the report: latency is change → ACK over
// every client and change; bytes are per change per client.
func Summarise(addr, mode string, opt Options, out *Outcome, elapsed time.Duration) *report.Result {
	h, init := hist.New(), hist.New()
	var got, bytes, msgs int64
	for _, c := range out.Changes {
		for _, d := range c.Latencies {
			h.Record(d)
		}
		got += int64(len(c.Latencies))
		bytes += c.Bytes
		msgs += c.Messages
	}
	for _, d := range out.Initial.Latencies {
		init.Record(d)
	}
	want := int64(opt.Clients * len(out.Changes))
	r := &report.Result{
		Scenario: "xds", Target: addr, Mode: mode, Started: time.Now().Add(-elapsed).UTC(),
		ElapsedSeconds: elapsed.Seconds(), Requests: uint64(got), Errors: uint64(want - got),
		Latency: h.Summary(), Values: map[string]float64{},
	}
	v := r.Values
	v["clients"] = float64(opt.Clients)
	v["changes"] = float64(len(out.Changes))
	v["initial_sync_p50_ms"] = float64(init.Quantile(50)) / 1000
	v["initial_sync_max_ms"] = float64(init.Summary().Max) / 1000
	v["initial_bytes_per_client"] = float64(out.Initial.Bytes) / float64(opt.Clients)
	if n := len(out.Changes); n > 0 {
		v["bytes_per_change_total"] = float64(bytes) / float64(n)
		v["bytes_per_change_per_client"] = float64(bytes) / float64(n) / float64(opt.Clients)
		v["messages_per_change_per_client"] = float64(msgs) / float64(n) / float64(opt.Clients)
		v["change_p99_ms"] = float64(r.Latency.P99) / 1000
		v["change_max_ms"] = float64(r.Latency.Max) / 1000
	}
	v["broken_streams"] = float64(out.Failed)
	v["undecodable_resources"] = float64(out.Bad)
	if out.Err != nil {
		r.ErrorSamples = []string{out.Err.Error()}
	}
	r.AddCheck("all-acked", got == want && out.Failed == 0, "%d of %d (client, change) pairs ACKed within the timeout; %d broken streams", got, want, out.Failed)
	return r
}
