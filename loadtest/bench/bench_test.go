package bench

import (
	"bytes"
	"context"
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/internal/testbin"
	"github.com/sidemesh/sidemesh/loadtest/report"
)

// A quick bench over real processes: the noop RLS and the upstream started
// from the loadtest binary, the real rls binary with a private redis-server;
// the controlplane is absent from bin/ and must be skipped with a note.
func TestQuickBench(t *testing.T) {
	redis, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not installed")
	}
	bin := t.TempDir()
	rls := testbin.Build(t, "./services/rls/cmd/rls")
	if err := os.Symlink(rls, filepath.Join(bin, "rls")); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	b := &Bench{Out: out, Bin: bin, Self: testbin.Build(t, "./loadtest/cmd/loadtest"), Redis: redis, Size: Quick,
		Stdout: &stdout, Stderr: &stderr, Only: map[string]bool{"rls-noop": true, "rls-redis": true, "rls-limit": true, "http-h1": true, "xds-sotw": true}}
	path, err := b.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range b.entries {
		switch e.Name {
		case "xds-sotw", "xds-delta":
			if !strings.Contains(e.Skipped, "no ") {
				t.Errorf("%s: want a skip note, got %+v", e.Name, e)
			}
			continue
		}
		if e.Err != nil || e.Result == nil || e.Result.Failed() || e.Result.Requests == 0 {
			t.Errorf("%s: err %v result %+v\nstderr: %s", e.Name, e.Err, e.Result, stderr.String())
			continue
		}
		if _, err := report.ReadJSON(filepath.Join(b.dataDir, e.Name+".json")); err != nil {
			t.Error(err)
		}
		svg, err := os.ReadFile(filepath.Join(b.dataDir, e.Name+".svg"))
		if err != nil {
			t.Fatal(err)
		}
		if err := xml.Unmarshal(svg, new(struct{})); err != nil {
			t.Errorf("%s.svg is not well-formed XML: %v", e.Name, err)
		}
		if !strings.Contains(string(md), "## "+e.Name) {
			t.Errorf("report lacks section %s", e.Name)
		}
	}
	if got := b.entries[1].Result; got == nil || got.Values["cpu_ratio_to_noop"] <= 0 || got.Values["redis_roundtrips_per_request"] <= 0 {
		t.Errorf("rls-redis lacks the noop ratio or round trips: %+v", got)
	}
	if saved, err := report.ReadJSON(filepath.Join(b.dataDir, "rls-redis.json")); err != nil || saved.Values["cpu_ratio_to_noop"] <= 0 {
		t.Errorf("rls-redis.json lacks the derived noop ratio: %v %+v", err, saved)
	}
	if !strings.Contains(string(md), "| xds-sotw | skipped |") {
		t.Errorf("report does not list the skipped scenario:\n%s", md)
	}
}
