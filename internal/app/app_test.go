package app

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func spec(run func(ctx context.Context, e *Env) error) Spec {
	return Spec{
		Name: "demo", EnvPrefix: "DEMO", Summary: "test binary",
		Flags: func(fs *pflag.FlagSet) {
			fs.String("grpc-addr", "127.0.0.1:1", "grpc address")
			fs.Int("workers", 4, "workers")
			fs.StringSlice("join", nil, "seeds")
		},
		Run: run,
	}
}

func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte("grpc-addr: 127.0.0.1:3\nworkers: 9\njoin: [a:1, b:2]\n"), 0o644)
	t.Setenv("DEMO_WORKERS", "7")
	var addr string
	var workers int
	var join []string
	run := func(_ context.Context, e *Env) error {
		addr, _ = e.Flags.GetString("grpc-addr")
		workers, _ = e.Flags.GetInt("workers")
		join, _ = e.Flags.GetStringSlice("join")
		return nil
	}
	var out, errb bytes.Buffer
	// file sets grpc-addr, env beats file for workers.
	if code := Exec(context.Background(), spec(run), []string{"--config", cfg}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if addr != "127.0.0.1:3" || workers != 7 || strings.Join(join, ",") != "a:1,b:2" {
		t.Fatalf("file/env merge: addr=%s workers=%d join=%v", addr, workers, join)
	}
	// flag beats env and file.
	if code := Exec(context.Background(), spec(run), []string{"--config", cfg, "--workers", "2", "--grpc-addr", "127.0.0.1:4"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if addr != "127.0.0.1:4" || workers != 2 {
		t.Fatalf("flag precedence: addr=%s workers=%d", addr, workers)
	}
	// default when nothing set.
	os.Unsetenv("DEMO_WORKERS")
	if code := Exec(context.Background(), spec(run), nil, &out, &errb); code != 0 || workers != 4 || addr != "127.0.0.1:1" {
		t.Fatalf("defaults: code=%d addr=%s workers=%d", code, addr, workers)
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	unknown := filepath.Join(dir, "u.yaml")
	os.WriteFile(unknown, []byte("grpc_adr: x\n"), 0o644)
	badType := filepath.Join(dir, "t.yaml")
	os.WriteFile(badType, []byte("workers: many\n"), 0o644)
	broken := filepath.Join(dir, "b.yaml")
	os.WriteFile(broken, []byte("workers: [\n"), 0o644)
	never := func(context.Context, *Env) error { t.Fatal("run must not be called"); return nil }
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--nope"}, "unknown flag: --nope"},
		{[]string{"--config", filepath.Join(dir, "missing.yaml")}, "missing.yaml"},
		{[]string{"--config", unknown}, "unknown key(s) grpc_adr"},
		{[]string{"--config", badType}, "key workers: invalid value \"many\""},
		{[]string{"--config", broken}, "b.yaml"},
		{[]string{"--log-format", "xml"}, "log-format"},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		code := Exec(context.Background(), spec(never), c.args, &out, &errb)
		if code != ExitUsage || !strings.Contains(errb.String(), c.want) {
			t.Errorf("%v: exit %d stderr %q, want 2 and %q", c.args, code, errb.String(), c.want)
		}
	}
	t.Setenv("DEMO_WORKERS", "x")
	var out, errb bytes.Buffer
	if code := Exec(context.Background(), spec(never), nil, &out, &errb); code != ExitUsage || !strings.Contains(errb.String(), "DEMO_WORKERS") {
		t.Errorf("bad env: exit %d %q", code, errb.String())
	}
}

func TestHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Exec(context.Background(), spec(nil), []string{"--help"}, &out, &errb); code != 0 {
		t.Fatalf("help exit %d", code)
	}
	for _, want := range []string{"Usage: demo", "--grpc-addr", "DEMO_<FLAG>"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
}
