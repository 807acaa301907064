package harness

import (
	"context"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestCheckAddr(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	AddOutputFlags(fs)
	ctx := context.Background()
	for _, ok := range []string{"127.0.0.1:80", "[::1]:9", "localhost:8080", "http://127.0.0.1:19000/metrics", "http://localhost/"} {
		if err := CheckAddr(ctx, fs, "target", ok); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"10.0.0.1:80", "192.0.2.1:1", "http://203.0.113.5:80/", "nohostport", ":80"} {
		err := CheckAddr(ctx, fs, "target", bad)
		if err == nil || !strings.Contains(err.Error(), "--target") {
			t.Errorf("%s: err %v, want a refusal naming --target", bad, err)
		}
	}
	fs.Set("allow-remote", "true")
	if err := CheckAddr(ctx, fs, "target", "10.0.0.1:80"); err != nil {
		t.Errorf("--allow-remote ignored: %v", err)
	}
}

func TestParamsSkipsDefaults(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	AddLoadFlags(fs, 64)
	AddOutputFlags(fs)
	p := Params(fs)
	if p["concurrency"] != "64" || p["duration"] != "10s" {
		t.Errorf("params %v", p)
	}
	for _, k := range []string{"requests", "rate", "json", "target-pid", "target-metrics", "allow-remote"} {
		if _, ok := p[k]; ok {
			t.Errorf("zero-valued %s listed", k)
		}
	}
}
