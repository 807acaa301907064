package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/internal/app"
)

func TestBadConfigExitsTwo(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(bad, []byte("clusters: [{name: web, endpoints: [{address: web.local, port: 80}]}]"), 0o644)
	cases := map[string][]string{
		"one of --xds-addr or --clusters-file": {},
		"not both":                             {"--xds-addr", "x:1", "--clusters-file", bad},
		"--checkers-per-endpoint must be":      {"--clusters-file", bad, "--checkers-per-endpoint", "0"},
		"--gossip-addr":                        {"--clusters-file", bad, "--gossip-addr", "nope"},
		"--gossip-key":                         {"--clusters-file", bad, "--gossip-key", "c2hvcnQ="},
		"--verdict-rule":                       {"--clusters-file", bad, "--verdict-rule", "coin"},
		"endpoints[0].address":                 {"--clusters-file", bad},
	}
	for want, args := range cases {
		var out, errb bytes.Buffer
		args = append(args, "--admin-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0")
		if strings.HasPrefix(want, "--gossip-addr") {
			args = append(args, "--gossip-addr", "nope")
		}
		code := app.Exec(context.Background(), spec(), args, &out, &errb)
		if code != app.ExitUsage || !strings.Contains(errb.String(), want) {
			t.Errorf("args %v: exit %d, stderr %q; want exit 2 mentioning %q", args, code, errb.String(), want)
		}
	}
}
