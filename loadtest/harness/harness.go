// Package harness is the glue every scenario shares: common flags, the
// loopback-only safety check, the live progress line, target cost sampling
// and printing the result.
package harness

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/sidemesh/sidemesh/internal/app"
	"github.com/sidemesh/sidemesh/loadtest/report"
	"github.com/sidemesh/sidemesh/loadtest/runner"
	"github.com/sidemesh/sidemesh/loadtest/target"
)

// AddLoadFlags adds the flags that shape a request loop.
func AddLoadFlags(fs *pflag.FlagSet, concurrency int) {
	fs.Int("concurrency", concurrency, "concurrent workers (in-flight requests)")
	fs.Duration("duration", 10*time.Second, "run length; always bounds the run (max 1h)")
	fs.Uint64("requests", 0, "stop after this many requests (0: duration only)")
	fs.Float64("rate", 0, "open loop: requests per second, latency measured from each request's intended start (0: closed loop)")
}

// AddOutputFlags adds the flags every scenario has: output, safety, target cost.
func AddOutputFlags(fs *pflag.FlagSet) {
	fs.Bool("json", false, "print the result as JSON instead of a table")
	fs.String("json-out", "", "also write the JSON result to this file")
	fs.Bool("allow-remote", false, "allow targets that are not loopback addresses")
	fs.Int("target-pid", 0, "PID of the target process: report its CPU seconds and peak RSS over the run from /proc")
	fs.String("target-metrics", "", "URL of the target's Prometheus /metrics: CPU and RSS from process_* metrics (and counters such as Redis round trips)")
}

// LoadConfig reads the AddLoadFlags flags.
func LoadConfig(fs *pflag.FlagSet) (runner.Config, error) {
	var c runner.Config
	c.Concurrency, _ = fs.GetInt("concurrency")
	c.Duration, _ = fs.GetDuration("duration")
	c.Requests, _ = fs.GetUint64("requests")
	c.Rate, _ = fs.GetFloat64("rate")
	if err := c.Validate(); err != nil {
		return c, app.Usagef("%v", err)
	}
	return c, nil
}

// CheckAddr refuses a host:port or URL whose host is not loopback unless
// remote targets are allowed. Names are resolved: every address must be
// loopback, so "localhost" passes and a name pointing elsewhere does not.
func CheckAddr(ctx context.Context, fs *pflag.FlagSet, flag, addr string) error {
	if allow, _ := fs.GetBool("allow-remote"); allow {
		return nil
	}
	host := addr
	if strings.Contains(addr, "://") {
		u, err := url.Parse(addr)
		if err != nil {
			return app.Usagef("--%s %q: %v", flag, addr, err)
		}
		host = u.Hostname()
	} else if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	} else {
		return app.Usagef("--%s %q: want host:port: %v", flag, addr, err)
	}
	if ok, err := IsLoopback(ctx, host); err != nil {
		return app.Usagef("--%s %q: %v", flag, addr, err)
	} else if !ok {
		return app.Usagef("--%s %q is not a loopback address; pass --allow-remote to load a remote target", flag, addr)
	}
	return nil
}

// IsLoopback resolves host and reports whether every address is loopback.
func IsLoopback(ctx context.Context, host string) (bool, error) {
	if host == "" {
		return false, fmt.Errorf("empty host")
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback(), nil
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return false, fmt.Errorf("resolving %s: %w", host, err)
	}
	for _, ip := range ips {
		if !ip.IP.IsLoopback() {
			return false, nil
		}
	}
	return len(ips) > 0, nil
}

// TargetSource builds the cost source from --target-pid / --target-metrics;
// nil when neither is given.
func TargetSource(ctx context.Context, fs *pflag.FlagSet) (target.Source, error) {
	pid, _ := fs.GetInt("target-pid")
	mu, _ := fs.GetString("target-metrics")
	switch {
	case pid != 0 && mu != "":
		return nil, app.Usagef("give --target-pid or --target-metrics, not both")
	case pid < 0:
		return nil, app.Usagef("--target-pid must be positive, got %d", pid)
	case pid > 0:
		return target.Proc{PID: pid}, nil
	case mu != "":
		if err := CheckAddr(ctx, fs, "target-metrics", mu); err != nil {
			return nil, err
		}
		return target.Metrics{URL: mu}, nil
	}
	return nil, nil
}

// Progress returns a live progress printer for w when w is a terminal, else nil.
func Progress(w io.Writer) func(runner.Snapshot) {
	f, ok := w.(*os.File)
	if !ok {
		return nil
	}
	st, err := f.Stat()
	if err != nil || st.Mode()&os.ModeCharDevice == 0 {
		return nil
	}
	var last runner.Snapshot
	return func(s runner.Snapshot) {
		rate := float64(s.Requests-last.Requests) / (s.Elapsed - last.Elapsed).Seconds()
		last = s
		fmt.Fprintf(f, "\r\033[K%6.1fs  %10d req  %8.0f req/s  %d errors", s.Elapsed.Seconds(), s.Requests, rate, s.Errors)
	}
}

// Status returns a printer of one-line status updates for w when w is a
// terminal (scenarios without a request loop use it), else a no-op.
func Status(w io.Writer) func(format string, args ...any) {
	if Progress(w) == nil {
		return func(string, ...any) {}
	}
	return func(format string, args ...any) {
		fmt.Fprintf(w, "\r\033[K"+format, args...)
	}
}

// ClearProgress erases the progress line, if one was drawn.
func ClearProgress(w io.Writer) {
	if Progress(w) != nil {
		fmt.Fprint(w, "\r\033[K")
	}
}

// Measure runs op under cfg, sampling src (if any) around it, and returns
// the generic result plus the target's counter deltas (nil without metrics).
func Measure(ctx context.Context, env *app.Env, scenario, tgt string, cfg runner.Config, src target.Source, op runner.Op) (*report.Result, target.Samples, error) {
	var w *target.Watch
	if src != nil {
		var err error
		if w, err = target.Start(ctx, src, 100*time.Millisecond); err != nil {
			return nil, nil, fmt.Errorf("target cost: %w", err)
		}
	}
	if cfg.Progress == nil {
		cfg.Progress = Progress(env.Stderr)
	}
	cpu0, cpuOK := selfCPU()
	res, err := runner.Run(ctx, cfg, op)
	cpu1, _ := selfCPU()
	ClearProgress(env.Stderr)
	if err != nil {
		return nil, nil, err
	}
	out := report.FromRun(scenario, tgt, cfg.Rate, res)
	if cpuOK {
		// The load generator competes for the same cores as the target on
		// one box: its own cost says how much of the machine it took.
		out.Generator = &report.GeneratorCost{CPUSeconds: (cpu1 - cpu0).Seconds(), GOMAXPROCS: runtime.GOMAXPROCS(0)}
		if res.Requests > 0 {
			out.Generator.CPUMicrosPerRequest = out.Generator.CPUSeconds * 1e6 / float64(res.Requests)
		}
		if res.Elapsed > 0 {
			out.Generator.CPUCores = out.Generator.CPUSeconds / res.Elapsed.Seconds()
		}
	}
	var deltas target.Samples
	if w != nil {
		st, err := w.Stop(context.WithoutCancel(ctx))
		if err != nil {
			return nil, nil, fmt.Errorf("target cost: %w", err)
		}
		out.Cost = Cost(st, res.Requests, res.Elapsed)
		deltas = st.Deltas
	}
	return out, deltas, nil
}

// Cost converts sampled stats into per-request numbers.
func Cost(st target.Stats, requests uint64, elapsed time.Duration) *report.TargetCost {
	c := &report.TargetCost{Source: st.Source, CPUSeconds: st.CPUSeconds, PeakRSSMiB: st.PeakRSSBytes / (1 << 20)}
	if requests > 0 {
		c.CPUMicrosPerRequest = st.CPUSeconds * 1e6 / float64(requests)
	}
	if elapsed > 0 {
		c.CPUCores = st.CPUSeconds / elapsed.Seconds()
	}
	return c
}

// Emit prints the result (table or JSON), writes --json-out, and turns a
// failed check into an error so the exit code is non-zero.
func Emit(env *app.Env, r *report.Result) error {
	if path, _ := env.Flags.GetString("json-out"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return fmt.Errorf("--json-out: %w", err)
		}
		werr := r.WriteJSON(f)
		if err := f.Close(); werr == nil {
			werr = err
		}
		if werr != nil {
			return fmt.Errorf("--json-out %s: %w", path, werr)
		}
	}
	if js, _ := env.Flags.GetBool("json"); js {
		if err := r.WriteJSON(env.Stdout); err != nil {
			return err
		}
	} else {
		r.WriteTable(env.Stdout)
	}
	if r.Failed() {
		var failed []string
		for _, c := range r.Checks {
			if !c.OK {
				failed = append(failed, c.Name+": "+c.Detail)
			}
		}
		return fmt.Errorf("check failed: %s", strings.Join(failed, "; "))
	}
	return nil
}

// Params renders the flags the user changed, for the report header.
func Params(fs *pflag.FlagSet) map[string]string {
	m := map[string]string{}
	fs.VisitAll(func(f *pflag.Flag) {
		switch f.Name {
		case "json", "json-out", "help", "config", "log-level", "log-format":
			return
		}
		switch v := f.Value.String(); v {
		case "", "0", "0s", "false", "[]":
		default:
			m[f.Name] = v
		}
	})
	return m
}

// FreeAddr returns a loopback address with a port free at the time of the
// call (for child processes that need their port on the command line).
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
