package httpload

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/sidemesh/sidemesh/internal/app"
	"github.com/sidemesh/sidemesh/loadtest/harness"
)

// Spec is the `loadtest http` subcommand.
func Spec() app.Spec {
	return app.Spec{
		Name: "loadtest http", EnvPrefix: "LOADTEST_HTTP",
		Summary: "HTTP/1.1 or h2c load through a proxy or direct, closed or open loop, status histogram",
		Usage: `Examples:
  loadtest http --url http://127.0.0.1:18080/ --concurrency 64 --duration 10s --target-pid $(pgrep -nx proxy)
  loadtest http --url http://127.0.0.1:18080/ --h2c --conns 4 --concurrency 64
  loadtest http --url http://127.0.0.1:18080/api/x --header 'x-user: alice' --rate 200 --duration 5s`,
		Flags: func(fs *pflag.FlagSet) {
			fs.String("url", "http://127.0.0.1:18080/", "request URL (http only)")
			harness.AddLoadFlags(fs, 64)
			fs.Int("conns", 0, "connections (default: --concurrency for HTTP/1.1, 4 for h2c)")
			fs.Bool("h2c", false, "HTTP/2 over cleartext with prior knowledge")
			fs.String("method", "GET", "request method")
			fs.StringArray("header", nil, "request header \"Name: value\" (repeatable)")
			fs.String("host", "", "Host header override")
			fs.Int("body-size", 0, "request body bytes (0: none)")
			fs.Duration("timeout", 10*time.Second, "per-request timeout")
			fs.Float64("max-error-fraction", 0, "fail the run if transport errors exceed this fraction of requests")
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
	opt := Options{Workers: cfg.Concurrency, Headers: http.Header{}}
	opt.URL, _ = fs.GetString("url")
	u, err := url.Parse(opt.URL)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return app.Usagef("--url %q: want http://host:port/path", opt.URL)
	}
	if u.Port() == "" {
		u.Host += ":80"
	}
	if err := harness.CheckAddr(ctx, fs, "url", u.Host); err != nil {
		return err
	}
	opt.H2C, _ = fs.GetBool("h2c")
	opt.Conns, _ = fs.GetInt("conns")
	if opt.Conns == 0 {
		opt.Conns = cfg.Concurrency
		if opt.H2C {
			opt.Conns = 4
		}
	}
	if opt.Conns < 1 || opt.Conns > 10000 {
		return app.Usagef("--conns must be in [1, 10000], got %d", opt.Conns)
	}
	opt.Method, _ = fs.GetString("method")
	opt.Method = strings.ToUpper(opt.Method)
	hs, _ := fs.GetStringArray("header")
	for _, h := range hs {
		k, v, err := ParseHeader(h)
		if err != nil {
			return app.Usagef("%v", err)
		}
		opt.Headers.Add(k, v)
	}
	opt.HostName, _ = fs.GetString("host")
	n, _ := fs.GetInt("body-size")
	if n < 0 || n > 64<<20 {
		return app.Usagef("--body-size must be in [0, 64 MiB], got %d", n)
	}
	if n > 0 {
		opt.Body = make([]byte, n)
	}
	opt.Timeout, _ = fs.GetDuration("timeout")
	maxErr, _ := fs.GetFloat64("max-error-fraction")
	src, err := harness.TargetSource(ctx, fs)
	if err != nil {
		return err
	}
	l := New(opt)
	defer l.Close()
	res, _, err := harness.Measure(ctx, env, "http", opt.URL, cfg, src, l.Op)
	if err != nil {
		return err
	}
	res.Params = harness.Params(fs)
	var non2xx uint64
	for code, c := range res.Outcomes {
		if !strings.HasPrefix(code, "2") {
			non2xx += c
		}
	}
	res.Values["non_2xx"] = float64(non2xx)
	if res.Requests > 0 {
		frac := float64(res.Errors) / float64(res.Requests)
		res.AddCheck("errors", frac <= maxErr, "%d transport errors (%.4f of requests, allowed %.4f)", res.Errors, frac, maxErr)
	}
	return harness.Emit(env, res)
}
