// Command controlplane is the sidemesh xDS control plane: it serves the mesh
// model over ADS (SotW and delta) to proxies, Envoys, HDS and proxyless gRPC
// clients, and folds the HDS health feed into EDS. `controlplane bootstrap`
// prints an Envoy bootstrap for the mesh.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http/pprof"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sidemesh/sidemesh/controlplane/bootstrap"
	"github.com/sidemesh/sidemesh/controlplane/controller"
	"github.com/sidemesh/sidemesh/controlplane/healthfeed"
	"github.com/sidemesh/sidemesh/controlplane/k8ssource"
	"github.com/sidemesh/sidemesh/controlplane/translate"
	"github.com/sidemesh/sidemesh/controlplane/xds"
	"github.com/sidemesh/sidemesh/internal/app"
	"github.com/sidemesh/sidemesh/internal/grpcserver"
	"github.com/sidemesh/sidemesh/internal/lifecycle"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "bootstrap" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		code := app.Exec(ctx, bootstrapSpec(), os.Args[2:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	app.Main(serveSpec())
}

func serveSpec() app.Spec {
	return app.Spec{
		Name:      "controlplane",
		EnvPrefix: "CONTROLPLANE",
		Summary:   "sidemesh xDS control plane (ADS SotW + delta, hot-reloaded mesh model, HDS health feed)",
		Usage:     "Subcommand: controlplane bootstrap --help prints an Envoy bootstrap for a mesh node.\nAdmin pages: /config_dump?node=ID, /clients, /model, /healthz, /ready, /metrics.",
		AdminAddr: "127.0.0.1:19000",
		Flags: func(fs *pflag.FlagSet) {
			fs.String("xds-addr", "127.0.0.1:18000", "ADS gRPC listen address")
			fs.String("model", "", "mesh model: a YAML file or a directory of them (required)")
			fs.StringSlice("hds-addr", nil, "HDS replicas serving the health feed, comma-separated; tried in turn")
			fs.String("kubernetes-namespace", "", "discover endpoints from Services/EndpointSlices in this namespace (empty: off); routes stay in the model")
			fs.String("kubeconfig", "", "kubeconfig for --kubernetes-namespace (empty: in-cluster service account)")
			fs.Duration("reload-debounce", 200*time.Millisecond, "quiet time after an in-place model write before reloading (a file renamed into place reloads at once)")
			fs.Bool("pprof", false, "serve Go profiles under /debug/pprof/ on the admin address")
		},
		Run: run,
	}
}

func run(ctx context.Context, env *app.Env) error {
	path, _ := env.Flags.GetString("model")
	xdsAddr, _ := env.Flags.GetString("xds-addr")
	hdsAddrs, _ := env.Flags.GetStringSlice("hds-addr")
	debounce, _ := env.Flags.GetDuration("reload-debounce")
	if path == "" {
		return app.Usagef("--model is required (a mesh YAML file or directory)")
	}
	if debounce <= 0 {
		return app.Usagef("--reload-debounce must be positive")
	}
	reg := env.Admin.Registry()
	srv := xds.New(ctx, env.Log, reg)
	ctl := controller.New(path, debounce, env.Log, srv, reg)
	if err := ctl.Load(ctx); err != nil {
		return app.Usagef("%v", err)
	}
	ln, err := net.Listen("tcp", xdsAddr)
	if err != nil {
		return app.Usagef("xds-addr %s: %v", xdsAddr, err)
	}
	// One stream per client: the default stream limit would cap the fleet.
	g := grpcserver.New(append(xds.ServerOptions(), grpc.MaxConcurrentStreams(1<<20))...)
	srv.Register(g.Server)
	srv.RegisterAdmin(env.Admin)
	env.Admin.HandleFunc("GET /model", ctl.ServeStatus)
	if on, _ := env.Flags.GetBool("pprof"); on {
		env.Admin.HandleFunc("GET /debug/pprof/", pprof.Index)
		env.Admin.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		env.Admin.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		env.Admin.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		env.Admin.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	env.Admin.AddReadyCheck("model", ctl.Ready)
	env.Log.Info("xDS listening", "addr", ln.Addr().String(), "model", path)

	units := []lifecycle.Unit{
		{Name: "xds", Serve: func() error { return g.Serve(ln) }, Shutdown: g.Shutdown},
		lifecycle.Func("model-watch", ctl.Watch),
	}
	if ns, _ := env.Flags.GetString("kubernetes-namespace"); ns != "" {
		kc, _ := env.Flags.GetString("kubeconfig")
		client, err := kubeClient(kc)
		if err != nil {
			return app.Usagef("kubernetes-namespace %s: %v", ns, err)
		}
		src := k8ssource.New(client, ns, env.Log.With("component", "kubernetes"), debounce,
			func(s k8ssource.Snapshot) { ctl.SetDiscovered(ctx, s) })
		units = append(units, lifecycle.Func("kubernetes", src.Run))
	}
	var addrs []string
	for _, a := range hdsAddrs {
		if a = strings.TrimSpace(a); a != "" {
			if _, _, err := net.SplitHostPort(a); err != nil {
				return app.Usagef("hds-addr %q: %v", a, err)
			}
			addrs = append(addrs, a)
		}
	}
	if len(addrs) > 0 {
		sub := &healthfeed.Subscriber{
			Addrs: addrs, Name: "controlplane", Log: env.Log.With("component", "healthfeed"),
			OnChange: func(h translate.Health) { ctl.SetHealth(ctx, h) },
		}
		sub.RegisterMetrics(reg)
		units = append(units, lifecycle.Func("healthfeed", sub.Run))
	}
	return env.Serve(units...)
}

func bootstrapSpec() app.Spec {
	return app.Spec{
		Name:      "controlplane bootstrap",
		EnvPrefix: "CONTROLPLANE_BOOTSTRAP",
		Summary:   "print an Envoy bootstrap YAML for a sidemesh node",
		Flags: func(fs *pflag.FlagSet) {
			fs.String("node-id", "", "xDS node id; the model's proxies[].id (required)")
			fs.String("role", "", "sidecar or ingress (required)")
			fs.String("cluster", "", "xDS node cluster (default: node id)")
			fs.String("zone", "", "locality zone of the node")
			fs.String("xds-addr", "127.0.0.1:18000", "control plane ADS host:port")
			fs.String("hds-addr", "", "HDS replica host:port for hds_config (empty: none)")
			fs.String("rls-addr", "", "RLS host:port for a static rls_cluster (empty: none)")
			fs.String("envoy-admin-addr", "127.0.0.1:9901", "Envoy admin listener host:port (empty: none)")
			fs.Bool("delta", false, "use incremental (delta) xDS")
		},
		Run: func(_ context.Context, env *app.Env) error {
			s := func(n string) string { v, _ := env.Flags.GetString(n); return v }
			delta, _ := env.Flags.GetBool("delta")
			b, err := bootstrap.Build(bootstrap.Options{
				NodeID: s("node-id"), Role: s("role"), Cluster: s("cluster"), Zone: s("zone"),
				XDSAddr: s("xds-addr"), HDSAddr: s("hds-addr"), RLSAddr: s("rls-addr"), AdminAddr: s("envoy-admin-addr"), Delta: delta,
			})
			if err != nil {
				return app.Usagef("%v", err)
			}
			y, err := bootstrap.YAML(b)
			if err != nil {
				return errors.New("rendering bootstrap: " + err.Error())
			}
			_, err = env.Stdout.Write(y)
			return err
		},
	}
}

// kubeClient connects with a kubeconfig file, or in-cluster when path is empty.
func kubeClient(path string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if path == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", path)
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	return kubernetes.NewForConfig(cfg)
}
