// Command meshrun starts the whole sidemesh local mesh as processes on
// 127.0.0.1 (make run), prints what runs where, tails every log with a
// prefix, and stops everything cleanly on Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/sidemesh/sidemesh/internal/devmesh"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "demo-app":
			os.Exit(demoApp(os.Args[2:]))
		case "probe":
			os.Exit(probe(os.Args[2:]))
		}
	}
	os.Exit(run(os.Args[1:]))
}

func demoApp(args []string) int {
	fs := flag.NewFlagSet("demo-app", flag.ContinueOnError)
	name := fs.String("name", "web", "service name")
	zone := fs.String("zone", "zone-a", "zone")
	addr := fs.String("addr", "127.0.0.1:18101", "listen address")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	app := &devmesh.DemoApp{Name: *name, Zone: *zone}
	fmt.Fprintf(os.Stderr, "demo app %s (%s) listening on %s\n", *name, *zone, *addr)
	if err := app.Serve(ctx, *addr); err != nil {
		fmt.Fprintf(os.Stderr, "demo-app: %v\n", err)
		return 1
	}
	return 0
}

// probe exits 0 when every URL answers 200: the container health check of
// images that have no shell or curl.
func probe(urls []string) int {
	if len(urls) == 0 {
		fmt.Fprintln(os.Stderr, "usage: meshrun probe URL...")
		return 2
	}
	c := &http.Client{Timeout: 3 * time.Second}
	for _, u := range urls {
		resp, err := c.Get(u)
		if err != nil {
			fmt.Fprintf(os.Stderr, "probe %s: %v\n", u, err)
			return 1
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			fmt.Fprintf(os.Stderr, "probe %s: %s\n", u, resp.Status)
			return 1
		}
	}
	return 0
}

func run(args []string) int {
	self, _ := os.Executable()
	fs := flag.NewFlagSet("meshrun", flag.ContinueOnError)
	binDir := fs.String("bin-dir", filepath.Dir(self), "directory holding controlplane, hds, rls, proxy")
	root := fs.String("root", ".", "repository root (example configs are read from here)")
	noRedis := fs.Bool("no-redis", false, "do not start Redis; RLS replicas use the memory backend")
	offset := fs.Int("port-offset", 0, "add this to every port, the model's listeners and endpoints included (to run beside another mesh; keep ports below 32768, the ephemeral range)")
	quiet := fs.Bool("quiet", false, "do not tail logs (they are still written to --log-dir)")
	logDir := fs.String("log-dir", ".meshrun/logs", "where each process's log is written")
	exitAfterReady := fs.Bool("exit-after-ready", false, "stop everything once the table is printed (for tests)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "meshrun — start the sidemesh local mesh (make run)\n\nUsage: meshrun [flags]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	var out io.Writer = os.Stdout
	m := &devmesh.Mesh{BinDir: *binDir, Self: self, LogDir: *logDir}
	opts := devmesh.Options{Root: *root, Offset: *offset}
	if *offset != 0 {
		// The model names ports too (listeners, endpoints): shift a copy.
		if err := os.MkdirAll(*logDir, 0o755); err != nil {
			fmt.Fprintf(os.Stderr, "meshrun: %v\n", err)
			return 1
		}
		opts.Model, _ = filepath.Abs(filepath.Join(*logDir, "mesh.yaml"))
		if err := devmesh.OffsetModel(filepath.Join(*root, "controlplane/examples/mesh.yaml"), opts.Model, *offset); err != nil {
			fmt.Fprintf(os.Stderr, "meshrun: --port-offset: %v\n", err)
			return 1
		}
	}
	var procs []devmesh.Proc
	if !*noRedis && devmesh.RedisServer() != "" {
		opts.RedisPort = 16379 + *offset
		dir, _ := filepath.Abs(filepath.Join(*logDir, "..", "redis"))
		os.MkdirAll(dir, 0o755)
		procs = append(procs, devmesh.RedisProc(opts.RedisPort, dir))
	} else {
		fmt.Fprintln(out, "note: no redis-server (apt-get install redis-server) or --no-redis: RLS replicas use the embedded memory backend, so each replica counts on its own")
	}
	procs = append(procs, devmesh.Plan(opts)...)

	fmt.Fprintln(out, "starting the sidemesh local mesh…")
	if err := m.Start(ctx, procs); err != nil {
		fmt.Fprintf(os.Stderr, "meshrun: %v\n", err)
		m.Stop(10 * time.Second)
		return 1
	}
	m.WaitReady(ctx, 30*time.Second, func(s string) { fmt.Fprintln(out, "  ", s) })
	fmt.Fprintln(out)
	m.Table(out)
	ingress := fmt.Sprintf("127.0.0.1:%d", 18080+*offset)
	fmt.Fprintf(out, `
Try it:
  curl -s http://%[1]s/hello                                   # routing: ingress -> web (via its sidecar)
  curl -s http://%[1]s/api/items                               # routing: ingress -> api
  for i in $(seq 7); do curl -s -o /dev/null -w '%%{http_code} ' -H 'x-user: alice' http://%[1]s/api/x; done; echo   # rate limit: 5x 200 then 429
  curl -s -X POST http://127.0.0.1:%[2]d/fail; curl -s 127.0.0.1:%[3]d/endpoints   # health: web fails its check, HDS sees it
  curl -s -X POST http://127.0.0.1:%[2]d/recover
Logs: %[4]s/<process>.log   Stop: Ctrl-C
`, ingress, 18101+*offset, 19082+*offset, *logDir)
	if *exitAfterReady {
		stop()
	} else if !*quiet {
		m.Tail(out)
	}
	<-ctx.Done()
	fmt.Fprintln(out, "\nstopping the mesh…")
	if err := m.Stop(20 * time.Second); err != nil {
		fmt.Fprintf(os.Stderr, "meshrun: %v\n", err)
		return 1
	}
	fmt.Fprintln(out, "all processes stopped")
	return 0
}
