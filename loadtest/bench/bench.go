// Package bench runs the standard scenarios on loopback, starting what they
// need (a private redis-server, the sidemesh binaries found in bin/), and
// writes a Markdown report with one SVG chart per scenario plus the JSON.
package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/sidemesh/sidemesh/internal/app"
	"github.com/sidemesh/sidemesh/loadtest/harness"
	"github.com/sidemesh/sidemesh/loadtest/hdsload"
	"github.com/sidemesh/sidemesh/loadtest/httpload"
	"github.com/sidemesh/sidemesh/loadtest/report"
	"github.com/sidemesh/sidemesh/loadtest/rlsload"
	"github.com/sidemesh/sidemesh/loadtest/xdsload"
)

// Size is how big each scenario runs.
type Size struct {
	Load        time.Duration // rls/http runs
	Concurrency int
	XDSClients  int
	XDSModel    string // SxE
	XDSChanges  int
	HDSProxies  int
	HDSEps      int
	HDSSteady   time.Duration
}

// Standard fits the whole bench in well under 5 minutes on 2 cores.
var Standard = Size{Load: 10 * time.Second, Concurrency: 64, XDSClients: 200, XDSModel: "100x10", XDSChanges: 3, HDSProxies: 300, HDSEps: 3000, HDSSteady: 5 * time.Second}

// Quick is for tests and smoke runs.
var Quick = Size{Load: time.Second, Concurrency: 8, XDSClients: 10, XDSModel: "10x2", XDSChanges: 1, HDSProxies: 10, HDSEps: 50, HDSSteady: time.Second}

// Entry is one scenario's outcome in the report.
type Entry struct {
	Name, Title string
	Command     string // the equivalent command line
	Result      *report.Result
	Skipped     string // why it did not run
	Err         error
}

// Bench holds one bench run.
type Bench struct {
	Out       string // results directory
	Bin       string // directory of the sidemesh binaries
	Self      string // the loadtest binary (noop-rls, upstream run as children)
	Redis     string // redis-server path ("" = absent)
	Size      Size
	Stdout    io.Writer
	Stderr    io.Writer
	Only      map[string]bool
	stamp     string
	loadStart string
	dataDir   string
	entries   []*Entry
}

func (b *Bench) bin(name string) string {
	p := filepath.Join(b.Bin, name)
	if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
		return p
	}
	return ""
}

// exec runs a scenario subcommand in-process, its table on stdout, and
// records the JSON result.
func (b *Bench) exec(ctx context.Context, e *Entry, spec app.Spec, args ...string) {
	jsonPath := filepath.Join(b.dataDir, e.Name+".json")
	e.Command = "loadtest " + strings.TrimPrefix(spec.Name, "loadtest ") + " " + strings.Join(args, " ")
	fmt.Fprintf(b.Stdout, "\n=== %s: %s\n", e.Name, e.Command)
	var errb bytes.Buffer
	code := app.Exec(ctx, spec, append(args, "--json-out", jsonPath, "--log-level", "warn"), b.Stdout, io.MultiWriter(&errb, b.Stderr))
	r, err := report.ReadJSON(jsonPath)
	if err != nil {
		e.Err = fmt.Errorf("exit %d, no result: %s", code, strings.TrimSpace(errb.String()))
		return
	}
	e.Result = r
	if code != 0 && !r.Failed() {
		e.Err = fmt.Errorf("exit %d: %s", code, strings.TrimSpace(errb.String()))
	}
}

// saveJSON rewrites an entry's JSON after the bench added derived values.
func (b *Bench) saveJSON(e *Entry) {
	f, err := os.Create(filepath.Join(b.dataDir, e.Name+".json"))
	if err != nil {
		e.Err = err
		return
	}
	if err := e.Result.WriteJSON(f); err != nil {
		e.Err = err
	}
	if err := f.Close(); err != nil && e.Err == nil {
		e.Err = err
	}
}

func (b *Bench) add(name, title string) *Entry {
	e := &Entry{Name: name, Title: title}
	b.entries = append(b.entries, e)
	return e
}

func (b *Bench) want(name string) bool { return len(b.Only) == 0 || b.Only[name] }

// Run runs every scenario and writes the report; it returns the report path.
func (b *Bench) Run(ctx context.Context) (string, error) {
	now := time.Now().UTC()
	b.loadStart = loadAvg()
	b.stamp = now.Format("2006-01-02")
	b.dataDir = filepath.Join(b.Out, b.stamp)
	if err := os.MkdirAll(b.dataDir, 0o755); err != nil {
		return "", err
	}
	logs, err := os.MkdirTemp("", "loadtest-bench-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(logs)
	for _, s := range []func(context.Context, string){b.rls, b.http, b.xds, b.hds} {
		if ctx.Err() != nil {
			break
		}
		s(ctx, logs)
	}
	path := filepath.Join(b.Out, b.stamp+".md")
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	werr := b.writeMarkdown(f, now)
	if err := f.Close(); werr == nil {
		werr = err
	}
	return path, werr
}

func (b *Bench) skip(e *Entry, format string, args ...any) {
	e.Skipped = fmt.Sprintf(format, args...)
	fmt.Fprintf(b.Stdout, "\n=== %s: skipped: %s\n", e.Name, e.Skipped)
}

func (b *Bench) loadArgs() []string {
	return []string{"--concurrency", strconv.Itoa(b.Size.Concurrency), "--duration", b.Size.Load.String()}
}

func (b *Bench) rls(ctx context.Context, logs string) {
	var noopCost float64
	if b.want("rls-noop") {
		e := b.add("rls-noop", "RLS baseline: bare grpc-go ShouldRateLimit server answering OK")
		addr, _ := harness.FreeAddr()
		p, err := startProc(logs, "noop-rls", b.Self, "noop-rls", "--addr", addr, "--admin-addr", "127.0.0.1:0")
		if err == nil {
			err = p.waitPort(ctx, addr, 15*time.Second)
		}
		if err != nil {
			e.Err = err
		} else {
			b.exec(ctx, e, rlsload.Spec(), append(b.loadArgs(), "--target", addr, "--conns", "4", "--keys", "unique", "--target-pid", strconv.Itoa(p.pid()))...)
			if e.Result != nil && e.Result.Cost != nil {
				noopCost = e.Result.Cost.CPUMicrosPerRequest
			}
		}
		p.stop()
	}
	if !b.want("rls-redis") && !b.want("rls-limit") && !b.want("rls-half-load") {
		return
	}
	e := b.add("rls-redis", "sidemesh RLS + Redis, unique keys")
	switch {
	case b.Redis == "":
		b.skip(e, "redis-server not found in PATH")
		return
	case b.bin("rls") == "":
		b.skip(e, "no %s/rls (run make build)", b.Bin)
		return
	}
	raddr, _ := harness.FreeAddr()
	_, rport, _ := strings.Cut(raddr, ":")
	redis, err := startProc(logs, "redis", b.Redis, "--port", rport, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err == nil {
		defer redis.stop()
		err = redis.waitPort(ctx, raddr, 15*time.Second)
	}
	if err != nil {
		e.Err = err
		return
	}
	rules := filepath.Join(logs, "rules")
	os.MkdirAll(rules, 0o755)
	os.WriteFile(filepath.Join(rules, "bench.yaml"), []byte(
		"domain: bench\ndescriptors:\n  - key: user\n    rate_limit: {unit: second, requests_per_unit: 1000000000}\n  - key: tight\n    rate_limit: {unit: minute, requests_per_unit: 5}\n"), 0o644)
	gaddr, _ := harness.FreeAddr()
	aaddr, _ := harness.FreeAddr()
	rls, err := startProc(logs, "rls", b.bin("rls"), "--grpc-addr", gaddr, "--admin-addr", aaddr, "--rules", rules, "--backend", "redis", "--redis-url", "redis://"+raddr+"/0")
	if err == nil {
		defer rls.stop()
		err = rls.waitPort(ctx, gaddr, 20*time.Second)
	}
	if err != nil {
		e.Err = err
		return
	}
	metrics := "http://" + aaddr + "/metrics"
	common := []string{"--target", gaddr, "--conns", "4", "--domain", "bench", "--target-metrics", metrics}
	b.exec(ctx, e, rlsload.Spec(), append(append(b.loadArgs(), common...), "--keys", "unique")...)
	if e.Result != nil && e.Result.Cost != nil && noopCost > 0 {
		e.Result.Values["cpu_ratio_to_noop"] = e.Result.Cost.CPUMicrosPerRequest / noopCost
		b.saveJSON(e)
	}
	var maxRPS float64
	if e.Result != nil {
		maxRPS = e.Result.Throughput
	}
	if b.want("rls-limit") {
		lim := b.add("rls-limit", "sidemesh RLS + Redis, one hot key limited to 5/minute: no over-admission")
		b.exec(ctx, lim, rlsload.Spec(), append(common, "--concurrency", strconv.Itoa(b.Size.Concurrency), "--duration", "3s",
			"--keys", "hot", "--key", "tight", "--expect-limit", "5", "--per", "minute")...)
	}
	if !b.want("rls-half-load") {
		return
	}
	half := b.add("rls-half-load", "sidemesh RLS + Redis, open loop at half the measured maximum (CO-corrected latency)")
	if maxRPS < 2 {
		b.skip(half, "no maximum throughput measured")
		return
	}
	// Open loop needs spare workers so the schedule, not the pool, sets the pace.
	rate := strconv.FormatFloat(float64(int(maxRPS/2)), 'f', 0, 64)
	b.exec(ctx, half, rlsload.Spec(), append(common, "--duration", b.Size.Load.String(), "--concurrency", "128", "--keys", "zipf:10000", "--rate", rate)...)
}

// httpCase is one HTTP load shape, run direct and through the proxy.
type httpCase struct {
	suffix, title string
	args          []string
}

func (b *Bench) http(ctx context.Context, logs string) {
	conc := strconv.Itoa(b.Size.Concurrency)
	cases := []httpCase{
		{"h1", fmt.Sprintf("HTTP/1.1, %s connections", conc), []string{"--concurrency", conc}},
		{"h1-c1", "HTTP/1.1, one connection (latency)", []string{"--concurrency", "1"}},
		{"h2c", fmt.Sprintf("h2c, %s streams over 4 connections", conc), []string{"--concurrency", conc, "--h2c", "--conns", "4"}},
	}
	want := false
	for _, c := range cases {
		want = want || b.want("http-"+c.suffix) || b.want("http-proxy-"+c.suffix)
	}
	if !want {
		return
	}
	upAddr, _ := harness.FreeAddr()
	up, err := startProc(logs, "upstream", b.Self, "upstream", "--addr", upAddr, "--admin-addr", "127.0.0.1:0")
	if err == nil {
		defer up.stop()
		err = up.waitPort(ctx, upAddr, 15*time.Second)
	}
	if err != nil {
		b.add("http-h1", "built-in upstream").Err = err
		return
	}
	direct := map[string]*Entry{}
	for _, c := range cases {
		if !b.want("http-" + c.suffix) {
			continue
		}
		e := b.add("http-"+c.suffix, "built-in upstream direct, "+c.title)
		b.exec(ctx, e, httpload.Spec(), append([]string{"--duration", b.Size.Load.String(), "--url", "http://" + upAddr + "/",
			"--target-pid", strconv.Itoa(up.pid())}, c.args...)...)
		direct[c.suffix] = e
	}

	var proxyCases []httpCase
	for _, c := range cases {
		if b.want("http-proxy-" + c.suffix) {
			proxyCases = append(proxyCases, c)
		}
	}
	if len(proxyCases) == 0 {
		return
	}
	first := b.add("http-proxy-"+proxyCases[0].suffix, "bin/proxy → built-in upstream, "+proxyCases[0].title)
	if b.bin("proxy") == "" {
		b.skip(first, "no %s/proxy (run make build)", b.Bin)
		return
	}
	// The proxy gets one listener → route → cluster from a static ADS server,
	// so its data path is measured without the controlplane.
	listen, _ := harness.FreeAddr()
	_, lport, _ := strings.Cut(listen, ":")
	adsAddr, _ := harness.FreeAddr()
	ads, err := startProc(logs, "xds-static", b.Self, "xds-static", "--addr", adsAddr, "--listen-port", lport, "--upstream", upAddr, "--admin-addr", "127.0.0.1:0")
	if err == nil {
		defer ads.stop()
		err = ads.waitPort(ctx, adsAddr, 15*time.Second)
	}
	var proxy *proc
	if err == nil {
		admin, _ := harness.FreeAddr()
		proxy, err = startProc(logs, "proxy", b.bin("proxy"), "--node-id", "loadtest-bench", "--cluster", "loadtest", "--xds-addr", adsAddr, "--admin-addr", admin)
		if err == nil {
			defer proxy.stop()
			err = proxy.waitPort(ctx, listen, 30*time.Second)
		}
	}
	if err != nil {
		b.skip(first, "proxy did not open its listener: %v", err)
		return
	}
	for i, c := range proxyCases {
		e := first
		if i > 0 {
			e = b.add("http-proxy-"+c.suffix, "bin/proxy → built-in upstream, "+c.title)
		}
		b.exec(ctx, e, httpload.Spec(), append([]string{"--duration", b.Size.Load.String(), "--url", "http://" + listen + "/",
			"--target-pid", strconv.Itoa(proxy.pid())}, c.args...)...)
		if d := direct[c.suffix]; e.Result != nil && d != nil && d.Result != nil {
			e.Result.Values["added_p50_us_vs_direct"] = float64(e.Result.Latency.P50 - d.Result.Latency.P50)
			e.Result.Values["throughput_ratio_to_direct"] = e.Result.Throughput / d.Result.Throughput
			b.saveJSON(e)
		}
	}
}

func (b *Bench) xds(ctx context.Context, logs string) {
	if !b.want("xds-sotw") && !b.want("xds-delta") {
		return
	}
	for _, mode := range []string{"sotw", "delta"} {
		e := b.add("xds-"+mode, fmt.Sprintf("controlplane fan-out, %s: change → every client ACKed", mode))
		if b.bin("controlplane") == "" {
			b.skip(e, "no %s/controlplane (run make build)", b.Bin)
			continue
		}
		model := filepath.Join(logs, "model-"+mode+".yaml")
		gen := []string{"--model", model, "--generate", b.Size.XDSModel}
		if code := app.Exec(ctx, xdsload.Spec(), append(gen, "--generate-only"), io.Discard, b.Stderr); code != 0 {
			e.Err = fmt.Errorf("generating the model failed")
			continue
		}
		xaddr, _ := harness.FreeAddr()
		aaddr, _ := harness.FreeAddr()
		args := []string{"--xds-addr", xaddr, "--admin-addr", aaddr, "--model", model}
		// Measure the fan-out, not the file watcher's quiet period.
		if help, _ := exec.Command(b.bin("controlplane"), "--help").Output(); bytes.Contains(help, []byte("--reload-debounce")) {
			args = append(args, "--reload-debounce", "10ms")
		}
		cp, err := startProc(logs, "controlplane-"+mode, b.bin("controlplane"), args...)
		if err == nil {
			err = cp.waitPort(ctx, xaddr, 20*time.Second)
		}
		if err != nil {
			b.skip(e, "controlplane did not serve xDS: %v", err)
			cp.stop()
			continue
		}
		// The run rewrites the model at once: wait until the controlplane
		// says it is ready (its model watch is up), not only listening.
		waitReady(ctx, "http://"+aaddr+"/ready", 20*time.Second)
		b.exec(ctx, e, xdsload.Spec(), append(gen, "--target", xaddr, "--clients", strconv.Itoa(b.Size.XDSClients), "--mode", mode,
			"--changes", strconv.Itoa(b.Size.XDSChanges), "--target-pid", strconv.Itoa(cp.pid()))...)
		cp.stop()
	}
}

func (b *Bench) hds(ctx context.Context, _ string) {
	if !b.want("hds") {
		return
	}
	e := b.add("hds", "HDS fleet: 3 replicas, simulated proxies, one replica SIGKILLed")
	if b.bin("hds") == "" {
		b.skip(e, "no %s/hds (run make build)", b.Bin)
		return
	}
	b.exec(ctx, e, hdsload.Spec(), "--hds-bin", b.bin("hds"), "--replicas", "3", "--proxies", strconv.Itoa(b.Size.HDSProxies),
		"--endpoints", strconv.Itoa(b.Size.HDSEps), "--duration", b.Size.HDSSteady.String(), "--kill", "--hds-arg=--gossip-timings=fast")
}

// Spec is the `loadtest bench` subcommand.
func Spec() app.Spec {
	return app.Spec{
		Name: "loadtest bench", EnvPrefix: "LOADTEST_BENCH",
		Summary: "run the standard scenarios on loopback and write <out>/<date>.md with SVG charts and JSON",
		Flags: func(fs *pflag.FlagSet) {
			fs.String("out", "loadtest/results", "results directory")
			fs.String("bin", "bin", "directory holding rls, controlplane, hds, proxy")
			fs.Bool("quick", false, "tiny sizes (smoke test, seconds)")
			fs.StringSlice("only", nil, "run only these scenarios (rls-noop, rls-redis, rls-limit, rls-half-load, http-h1, http-h1-c1, http-h2c, http-proxy-h1, http-proxy-h1-c1, http-proxy-h2c, xds-sotw, xds-delta, hds)")
		},
		Run: func(ctx context.Context, env *app.Env) error {
			b := &Bench{Size: Standard, Stdout: env.Stdout, Stderr: env.Stderr, Only: map[string]bool{}}
			b.Out, _ = env.Flags.GetString("out")
			b.Bin, _ = env.Flags.GetString("bin")
			if q, _ := env.Flags.GetBool("quick"); q {
				b.Size = Quick
			}
			only, _ := env.Flags.GetStringSlice("only")
			for _, o := range only {
				b.Only[o] = true
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			b.Self = self
			b.Redis, _ = exec.LookPath("redis-server")
			path, err := b.Run(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(env.Stdout, "\nreport: %s\n", path)
			var bad []string
			for _, e := range b.entries {
				if e.Err != nil || (e.Result != nil && e.Result.Failed()) {
					bad = append(bad, e.Name)
				}
			}
			if len(bad) > 0 {
				return fmt.Errorf("scenarios failed: %s (see %s)", strings.Join(bad, ", "), path)
			}
			return nil
		},
	}
}

// waitReady polls url until it answers 200 or timeout (best effort: a
// target without /ready is simply given the time).
func waitReady(ctx context.Context, url string, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}
