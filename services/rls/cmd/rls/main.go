// Command rls is the sidemesh global rate-limit service (envoy.service.ratelimit.v3).
package main

import (
	"context"
	"fmt"
	"net"
	"net/http/pprof"
	"os"
	"strconv"
	"strings"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sidemesh/sidemesh/internal/app"
	"github.com/sidemesh/sidemesh/internal/grpcserver"
	"github.com/sidemesh/sidemesh/internal/lifecycle"
	batchv1 "github.com/sidemesh/sidemesh/proto/ratelimitbatch/v1"
	"github.com/sidemesh/sidemesh/services/rls/internal/batch"
	"github.com/sidemesh/sidemesh/services/rls/internal/limiter"
	"github.com/sidemesh/sidemesh/services/rls/internal/redisbackend"
	"github.com/sidemesh/sidemesh/services/rls/internal/reload"
	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
	"github.com/sidemesh/sidemesh/services/rls/internal/service"
)

func main() {
	app.Main(app.Spec{
		Name:      "rls",
		EnvPrefix: "RLS",
		Summary:   "sidemesh global rate-limit service (envoy.service.ratelimit.v3), envoyproxy/ratelimit rule files, Redis or memory backend",
		AdminAddr: "127.0.0.1:9081",
		Flags:     flags,
		Run:       run,
	})
}

func flags(fs *pflag.FlagSet) {
	fs.String("grpc-addr", "127.0.0.1:8081", "gRPC address (RateLimitService + grpc.health.v1)")
	fs.String("rules", "", "rule file or directory of *.yaml rule files (envoyproxy/ratelimit format); hot-reloaded")
	fs.Bool("merge-domain-config", false, "combine the rule files that declare the same domain into one domain instead of refusing them (envoyproxy/ratelimit MERGE_DOMAIN_CONFIG, whose env name is honoured when this is not set)")
	fs.String("backend", "redis", "counter backend: redis (global across replicas) or memory (one replica)")
	fs.String("failure-mode", "allow", "answer when the backend is unavailable: allow (OK) or deny (OVER_LIMIT)")
	fs.Bool("response-headers", false, "add RateLimit-Limit/-Remaining/-Reset (and Retry-After when over limit) to responses")
	fs.Int("local-cache-size", 100000, "keys remembered as over limit until their window resets (0 disables the local cache)")
	fs.String("key-prefix", "rl:", "prefix of every counter key")
	fs.Float64("near-limit-ratio", 0.8, "share of the limit above which hits count as near_limit in metrics")
	fs.Int("max-descriptors", service.DefaultLimits.MaxDescriptors, "most descriptors one request may carry")
	fs.Int("max-entries", service.DefaultLimits.MaxEntries, "most entries one descriptor may carry")
	fs.Int("max-key-length", service.DefaultLimits.MaxKeyLen, "longest domain or entry key, in bytes")
	fs.Int("max-value-length", service.DefaultLimits.MaxValueLen, "longest entry value, in bytes")
	fs.Bool("quota-mode", false, "treat every descriptor as quota_mode (envoyproxy/ratelimit QUOTA_MODE)")
	fs.Bool("response-dynamic-metadata", false, "return request and rule metadata in dynamic_metadata (envoyproxy/ratelimit RESPONSE_DYNAMIC_METADATA)")
	fs.Int("max-metric-values", service.DefaultMaxMetricValues, "distinct metric labels carrying request values (detailed_metric, value_to_metric) per rule; more go to <rule>:overflow")

	fs.Int("grpc-workers", 0, "gRPC stream worker goroutines kept for reuse (0: a goroutine per RPC, as grpc-go does by default)")
	fs.Bool("pprof", false, "serve Go profiles at /debug/pprof/ on the admin address")
	fs.String("redis-url", "redis://127.0.0.1:6379/0", "Redis URL (redis:// or rediss:// for TLS; user:password@ allowed)")
	fs.String("redis-type", "single", "Redis deployment: single, sentinel or cluster")
	fs.StringSlice("redis-addrs", nil, "sentinel addresses (sentinel) or seed nodes (cluster), comma-separated")
	fs.String("redis-sentinel-master", "", "Sentinel master name")
	fs.String("redis-username", "", "Redis ACL user (overrides the URL's)")
	fs.String("redis-password", "", "Redis password (overrides the URL's); prefer RLS_REDIS_PASSWORD")
	fs.String("redis-sentinel-username", "", "user for the sentinels themselves")
	fs.String("redis-sentinel-password", "", "password for the sentinels themselves")
	fs.Bool("redis-tls", false, "connect to Redis with TLS")
	fs.String("redis-tls-ca", "", "PEM CA bundle to verify Redis")
	fs.String("redis-tls-cert", "", "PEM client certificate (mutual TLS)")
	fs.String("redis-tls-key", "", "PEM client key (mutual TLS)")
	fs.String("redis-tls-server-name", "", "expected Redis server name")
	fs.Bool("redis-tls-skip-verify", false, "do not verify the Redis certificate (testing only)")
	fs.Int("redis-pool-size", 16, "Redis connections (per node in Cluster mode)")
	fs.Duration("redis-timeout", 200*time.Millisecond, "bound on one Redis round trip; a caller never waits much longer")
	fs.Int("redis-batch-size", 256, "most requests sharing one Redis pipeline")
	fs.Duration("redis-batch-wait", 0, "how long a pipeline waits for more requests once it has one (0: send what is queued at once)")
	fs.Int("redis-pipelines", 1, "Redis pipelines in flight at once (1 gives the biggest batches; measured best here)")
	fs.Int("redis-breaker-failures", 5, "consecutive failed round trips that open the circuit breaker")
	fs.Duration("redis-breaker-cooldown", time.Second, "how long the open breaker refuses calls before one probe")
}

func run(ctx context.Context, env *app.Env) error {
	f := env.Flags
	str := func(n string) string { v, _ := f.GetString(n); return v }
	num := func(n string) int { v, _ := f.GetInt(n); return v }
	dur := func(n string) time.Duration { v, _ := f.GetDuration(n); return v }
	boolean := func(n string) bool { v, _ := f.GetBool(n); return v }

	if str("rules") == "" {
		return app.Usagef("--rules is required (a rule file or a directory of *.yaml files)")
	}
	mode, err := service.ParseFailureMode(str("failure-mode"))
	if err != nil {
		return app.Usagef("--failure-mode: %v", err)
	}
	limits := service.Limits{MaxDescriptors: num("max-descriptors"), MaxEntries: num("max-entries"), MaxKeyLen: num("max-key-length"), MaxValueLen: num("max-value-length")}
	if num("grpc-workers") < 0 {
		return app.Usagef("--grpc-workers must not be negative")
	}
	if limits.MaxDescriptors < 1 || limits.MaxEntries < 1 || limits.MaxKeyLen < 1 || limits.MaxValueLen < 1 {
		return app.Usagef("--max-descriptors, --max-entries, --max-key-length and --max-value-length must be at least 1")
	}
	merge, err := mergeDomainConfig(env)
	if err != nil {
		return err
	}
	ratio, _ := f.GetFloat64("near-limit-ratio")
	if ratio <= 0 || ratio > 1 {
		return app.Usagef("--near-limit-ratio must be in (0, 1], got %v", ratio)
	}
	reg := env.Admin.Registry()
	if boolean("pprof") {
		env.Admin.HandleFunc("/debug/pprof/", pprof.Index)
		env.Admin.HandleFunc("/debug/pprof/profile", pprof.Profile)
		env.Admin.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		env.Admin.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}

	var backend limiter.Backend
	var closeBackend func()
	switch str("backend") {
	case "memory":
		backend = limiter.NewMemory()
		closeBackend = func() {}
	case "redis":
		if num("redis-batch-size") < 1 || num("redis-pipelines") < 1 || num("redis-pool-size") < 1 || num("redis-breaker-failures") < 1 {
			return app.Usagef("--redis-batch-size, --redis-pipelines, --redis-pool-size and --redis-breaker-failures must be at least 1")
		}
		if dur("redis-timeout") <= 0 || dur("redis-batch-wait") < 0 || dur("redis-breaker-cooldown") <= 0 {
			return app.Usagef("--redis-timeout and --redis-breaker-cooldown must be positive, --redis-batch-wait not negative")
		}
		addrs, _ := f.GetStringSlice("redis-addrs")
		client, cluster, err := redisbackend.NewClient(redisbackend.ClientConfig{
			Type: str("redis-type"), URL: str("redis-url"), Addrs: addrs, MasterName: str("redis-sentinel-master"),
			Username: str("redis-username"), Password: str("redis-password"),
			SentinelUsername: str("redis-sentinel-username"), SentinelPassword: str("redis-sentinel-password"),
			TLS: boolean("redis-tls") || strings.HasPrefix(str("redis-url"), "rediss://"), TLSCA: str("redis-tls-ca"),
			TLSCert: str("redis-tls-cert"), TLSKey: str("redis-tls-key"), TLSServerName: str("redis-tls-server-name"),
			TLSSkipVerify: boolean("redis-tls-skip-verify"), PoolSize: num("redis-pool-size"), Timeout: dur("redis-timeout"),
		})
		if err != nil {
			return app.Usagef("%v", err)
		}
		rb, err := redisbackend.New(redisbackend.Options{
			Client: client, Cluster: cluster, Timeout: dur("redis-timeout"),
			BatchSize: num("redis-batch-size"), BatchWait: dur("redis-batch-wait"), Pipelines: num("redis-pipelines"),
			BreakerFailures: num("redis-breaker-failures"), BreakerCooldown: dur("redis-breaker-cooldown"), Registerer: reg,
		})
		if err != nil {
			client.Close()
			return err
		}
		backend = rb
		closeBackend = func() { rb.Close(); client.Close() }
		env.Admin.AddReadyCheck("redis", rb.Ping)
		if err := rb.Ping(ctx); err != nil {
			// Not fatal: the service answers by failure mode and recovers when Redis comes.
			env.Log.Warn("redis not reachable at start; answering by failure mode until it is", "err", err)
		}
	default:
		return app.Usagef("--backend must be redis or memory, got %q", str("backend"))
	}
	defer closeBackend()

	var cache *limiter.OverCache
	if n := num("local-cache-size"); n > 0 {
		cache = limiter.NewOverCache(n)
	}
	svc, err := service.New(service.Options{
		Backend: backend, KeyPrefix: str("key-prefix"), FailureMode: mode, ResponseHeaders: boolean("response-headers"),
		LocalCache: cache, Limits: limits, NearLimitRatio: ratio, Log: env.Log, Registerer: reg,
		QuotaMode: boolean("quota-mode"), DynamicMetadata: boolean("response-dynamic-metadata"), MaxMetricValues: num("max-metric-values"),
	})
	if err != nil {
		return err
	}
	watcher, err := reload.New(str("rules"), svc.SetRules, env.Log, reg)
	if err != nil {
		return err
	}
	watcher.Options = rules.Options{MergeDomains: merge}
	if err := watcher.Load(); err != nil {
		return app.Usagef("%v", err)
	}

	ln, err := net.Listen("tcp", str("grpc-addr"))
	if err != nil {
		return app.Usagef("--grpc-addr %s: %v", str("grpc-addr"), err)
	}
	// Optional reused stream workers (they keep their grown stacks); off by
	// default because the extra hand-off measured no better here.
	gs := grpcserver.New(grpc.NumStreamWorkers(uint32(num("grpc-workers"))),
		// Static flow-control windows turn off grpc-go's BDP estimation.
		// Its pings exist to grow windows for bulk transfers; RLS messages
		// are a few hundred bytes, and at moderate rates nearly every other
		// call paid a PING write and an ACK read on each side.
		grpc.StaticStreamWindowSize(staticStreamWindow), grpc.StaticConnWindowSize(staticConnWindow))
	rlsv3.RegisterRateLimitServiceServer(gs, svc)
	// sidemesh's batch stream (proto/ratelimitbatch): the same answers,
	// many calls per message; Envoy keeps using the unary RPC.
	bs := batch.New(svc, 0)
	batchv1.RegisterRateLimitBatchServer(gs, bs)
	gs.Health.SetServingStatus(rlsv3.RateLimitService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	env.Log.Info("rls listening", "grpc", ln.Addr().String(), "backend", str("backend"), "rules", str("rules"))
	return env.Serve(
		lifecycle.Unit{Name: "grpc", Serve: func() error {
			if err := gs.Serve(ln); err != nil {
				return fmt.Errorf("grpc: %w", err)
			}
			return nil
		}, Shutdown: func(ctx context.Context) error {
			// GracefulStop first (GOAWAY: clients open new streams
			// elsewhere), then end the long-lived batch streams, which it
			// would otherwise wait for until the drain timeout.
			stopped := make(chan error, 1)
			go func() { stopped <- gs.Shutdown(ctx) }()
			if err := bs.Drain(ctx); err != nil {
				env.Log.Warn("batch streams did not drain", "err", err)
			}
			return <-stopped
		}},
		lifecycle.Func("rules-watcher", watcher.Run),
	)
}

// anchorMergeEnv is envoyproxy/ratelimit's own name for --merge-domain-config.
const anchorMergeEnv = "MERGE_DOMAIN_CONFIG"

// mergeDomainConfig is --merge-domain-config as set by the flag,
// RLS_MERGE_DOMAIN_CONFIG or the config file; when none of them sets it,
// the anchor's MERGE_DOMAIN_CONFIG decides, so an envoyproxy/ratelimit
// deployment's environment keeps its meaning.
func mergeDomainConfig(env *app.Env) (bool, error) {
	v, _ := env.Flags.GetBool("merge-domain-config")
	if env.Flags.Changed("merge-domain-config") || env.Config.IsSet("merge-domain-config") || env.Config.IsSet("merge_domain_config") {
		return v, nil
	}
	s, ok := os.LookupEnv(anchorMergeEnv)
	if !ok || s == "" {
		return v, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, app.Usagef("environment %s: invalid value %q (true or false)", anchorMergeEnv, s)
	}
	env.Log.Info("rule files of one domain: taken from the anchor's environment variable", "env", anchorMergeEnv, "merge_domain_config", b)
	return b, nil
}

// Flow-control windows of the gRPC server: the stream window bounds one
// request (far above --max-descriptors of long values), the connection
// window lets many concurrent calls arrive without waiting for a
// WINDOW_UPDATE.
const (
	staticStreamWindow = 1 << 20
	staticConnWindow   = 16 << 20
)
