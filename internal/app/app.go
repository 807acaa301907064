// Package app is the shared main of every sidemesh binary: it reads
// configuration from flags, environment and a file (in that precedence, over
// defaults), sets up logging and the admin server, runs the service until
// SIGTERM/SIGINT and drains it within a bounded time.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/sidemesh/sidemesh/internal/admin"
	"github.com/sidemesh/sidemesh/internal/lifecycle"
	"github.com/sidemesh/sidemesh/internal/logging"
)

// Exit codes.
const (
	ExitOK     = 0
	ExitFailed = 1 // the service failed while running
	ExitUsage  = 2 // bad flags, environment or config file
)

// Spec describes one binary.
type Spec struct {
	Name      string // binary name, e.g. "rls"
	EnvPrefix string // environment prefix, e.g. "RLS" for RLS_GRPC_ADDR
	Summary   string // one line shown in --help
	Usage     string // optional extra text after the flags in --help
	// AdminAddr is the default admin address; empty means the binary has no
	// admin server (e.g. loadtest).
	AdminAddr string
	// Flags adds the binary's own flags.
	Flags func(fs *pflag.FlagSet)
	// AdminListener, when set, may supply the admin listener for addr (e.g.
	// a socket inherited in a hot restart); nil, nil means bind addr.
	AdminListener func(fs *pflag.FlagSet, addr string) (net.Listener, error)
	// Run builds the service and usually ends with env.Serve(units...).
	Run func(ctx context.Context, env *Env) error
}

// Env is what a running binary gets.
type Env struct {
	Flags  *pflag.FlagSet // typed values, already merged from env and file
	Config *viper.Viper
	Log    *slog.Logger
	Admin  *admin.Server // nil when the binary has no admin server
	Stdout io.Writer
	Stderr io.Writer

	ctx       context.Context
	adminLn   net.Listener
	drain     time.Duration
	adminAddr string
}

// UsageError marks an error caused by bad input at start: exit code 2.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// Usagef returns a UsageError.
func Usagef(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// Main runs spec with os.Args and exits.
func Main(spec Spec) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := Exec(ctx, spec, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exec runs spec with args and returns the exit code.
func Exec(ctx context.Context, spec Spec, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet(spec.Name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	if spec.Flags != nil {
		spec.Flags(fs)
	}
	fs.String("config", "", "configuration file (YAML, JSON or TOML); keys are flag names")
	if spec.AdminAddr != "" {
		fs.String("admin-addr", spec.AdminAddr, "admin HTTP address (/healthz, /ready, /metrics)")
		fs.Duration("drain-timeout", 15*time.Second, "how long to drain in-flight work on SIGTERM")
	}
	fs.String("log-level", "info", "log level: debug, info, warn, error")
	fs.String("log-format", "text", "log format: text or json")
	fs.BoolP("help", "h", false, "show this help")

	usage := func(w io.Writer) {
		fmt.Fprintf(w, "%s — %s\n\nUsage: %s [flags]\n\nFlags:\n%s", spec.Name, spec.Summary, spec.Name, fs.FlagUsages())
		fmt.Fprintf(w, "\nEvery flag can also be set as environment variable %s_<FLAG> (dashes become underscores)\nor as a key in the --config file; precedence: flag > environment > file > default.\n", spec.EnvPrefix)
		if spec.Usage != "" {
			fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(spec.Usage))
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			usage(stdout)
			return ExitOK
		}
		fmt.Fprintf(stderr, "%s: %v\nRun '%s --help' for usage.\n", spec.Name, err, spec.Name)
		return ExitUsage
	}
	if h, _ := fs.GetBool("help"); h {
		usage(stdout)
		return ExitOK
	}
	v, err := Merge(fs, spec.EnvPrefix)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", spec.Name, err)
		return ExitUsage
	}
	lf, _ := fs.GetString("log-format")
	ll, _ := fs.GetString("log-level")
	log, err := logging.New(stderr, lf, ll)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", spec.Name, err)
		return ExitUsage
	}
	log = log.With("service", spec.Name)
	env := &Env{Flags: fs, Config: v, Log: log, Stdout: stdout, Stderr: stderr, ctx: ctx}
	if spec.AdminAddr != "" {
		env.adminAddr, _ = fs.GetString("admin-addr")
		env.drain, _ = fs.GetDuration("drain-timeout")
		var ln net.Listener
		var err error
		if spec.AdminListener != nil {
			if ln, err = spec.AdminListener(fs, env.adminAddr); err != nil {
				fmt.Fprintf(stderr, "%s: %v\n", spec.Name, err)
				return ExitUsage
			}
		}
		if ln == nil && err == nil {
			ln, err = net.Listen("tcp", env.adminAddr)
		}
		if err != nil {
			fmt.Fprintf(stderr, "%s: admin-addr %s: %v\n", spec.Name, env.adminAddr, err)
			return ExitUsage
		}
		env.adminLn = ln
		env.Admin = admin.New()
		defer ln.Close()
	}
	if err := spec.Run(ctx, env); err != nil {
		var ue *UsageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "%s: %v\n", spec.Name, err)
			return ExitUsage
		}
		log.Error("exiting", "err", err)
		return ExitFailed
	}
	return ExitOK
}

// Context is the run context: it ends on SIGTERM/SIGINT.
func (e *Env) Context() context.Context { return e.ctx }

// AdminAddr is the address the admin server listens on.
func (e *Env) AdminAddr() string {
	if e.adminLn != nil {
		return e.adminLn.Addr().String()
	}
	return ""
}

// AdminListener is the admin server's listening socket (nil without one).
func (e *Env) AdminListener() net.Listener { return e.adminLn }

// DrainTimeout is the configured drain bound.
func (e *Env) DrainTimeout() time.Duration { return e.drain }

// Serve runs units plus the admin server until the context ends, then drains.
func (e *Env) Serve(units ...lifecycle.Unit) error {
	if e.Admin != nil {
		adm := e.Admin
		ln := e.adminLn
		units = append(units, lifecycle.Unit{
			Name:     "admin",
			Serve:    func() error { return adm.Serve(ln) },
			Shutdown: adm.Shutdown,
		})
		e.Log.Info("admin listening", "addr", ln.Addr().String())
	}
	drain := e.drain
	if drain <= 0 {
		drain = 15 * time.Second
	}
	return lifecycle.Run(e.ctx, e.Log, drain, units...)
}

// Merge applies environment variables and the --config file to every flag the
// command line did not set, through viper, and validates them by flag type.
// Unknown keys in the file are an error naming the file and key.
func Merge(fs *pflag.FlagSet, envPrefix string) (*viper.Viper, error) {
	v := viper.New()
	if err := v.BindPFlags(fs); err != nil {
		return nil, fmt.Errorf("binding flags: %w", err)
	}
	v.SetEnvPrefix(envPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	v.AutomaticEnv()

	fileV := viper.New()
	path, _ := fs.GetString("config")
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("config file %s: %w", path, err)
		}
		fileV.SetConfigFile(path)
		if err := fileV.ReadInConfig(); err != nil {
			return nil, fmt.Errorf("config file %s: %w", path, err)
		}
		var unknown []string
		for _, k := range fileV.AllKeys() {
			if fs.Lookup(k) == nil && fs.Lookup(strings.ReplaceAll(k, "_", "-")) == nil {
				unknown = append(unknown, k)
			}
		}
		if len(unknown) > 0 {
			sort.Strings(unknown)
			return nil, fmt.Errorf("config file %s: unknown key(s) %s (keys are flag names, e.g. grpc-addr)", path, strings.Join(unknown, ", "))
		}
		if err := v.MergeConfigMap(fileV.AllSettings()); err != nil {
			return nil, fmt.Errorf("config file %s: %w", path, err)
		}
	}
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "config" || f.Name == "help" {
			return
		}
		envName := strings.ToUpper(envPrefix + "_" + strings.ReplaceAll(f.Name, "-", "_"))
		var raw any
		var src string
		if s, ok := os.LookupEnv(envName); ok {
			raw, src = s, "environment "+envName
		} else if fileV.IsSet(f.Name) {
			raw, src = fileV.Get(f.Name), "config file "+path+": key "+f.Name
		} else if alt := strings.ReplaceAll(f.Name, "-", "_"); fileV.IsSet(alt) {
			raw, src = fileV.Get(alt), "config file "+path+": key "+alt
		} else {
			return
		}
		if err := f.Value.Set(stringify(raw)); err != nil {
			errs = append(errs, fmt.Errorf("%s: invalid value %q for --%s: %v", src, stringify(raw), f.Name, err))
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return v, nil
}

func stringify(x any) string {
	switch t := x.(type) {
	case []any:
		parts := make([]string, len(t))
		for i, p := range t {
			parts[i] = fmt.Sprint(p)
		}
		return strings.Join(parts, ",")
	case []string:
		return strings.Join(t, ",")
	default:
		return fmt.Sprint(t)
	}
}
