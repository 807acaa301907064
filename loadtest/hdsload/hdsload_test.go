package hdsload

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/testbin"
	"github.com/sidemesh/sidemesh/loadtest/harness/harnesstest"
)

func TestGenerateAndRead(t *testing.T) {
	cat, err := Generate(95, 10, 2*time.Second, []string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := cat.Write(path); err != nil {
		t.Fatal(err)
	}
	back, err := ReadCatalog(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Clusters) != 10 || len(back.Expected()) != 95 || back.Clusters[0].HealthCheck["interval"] != "2s" {
		t.Fatalf("round trip: %d clusters %d endpoints %v", len(back.Clusters), len(back.Expected()), back.Clusters[0].HealthCheck)
	}
	for _, bad := range [][2]int{{0, 1}, {5, 6}, {MaxEndpoints + 1, 1}} {
		if _, err := Generate(bad[0], bad[1], time.Second, []string{"a"}); err == nil {
			t.Errorf("Generate(%v) accepted", bad)
		}
	}
}

func TestTruth(t *testing.T) {
	exp, _ := Generate(10000, 10, time.Second, []string{"a"})
	tr := FractionTruth(0.2)
	bad := 0
	for k := range exp.Expected() {
		if !tr(k) {
			bad++
		}
	}
	if bad < 1800 || bad > 2200 {
		t.Errorf("fraction 0.2 marked %d of 10000 unhealthy", bad)
	}
	ft, err := ParseTruth(strings.NewReader("# down\n127.0.0.1:20001\nlt-cluster-2/127.0.0.1:20002 # only there\n\n"))
	if err != nil {
		t.Fatal(err)
	}
	if ft(Key{"x", "127.0.0.1", 20001}) || ft(Key{"lt-cluster-2", "127.0.0.1", 20002}) || !ft(Key{"other", "127.0.0.1", 20002}) || !ft(Key{"x", "127.0.0.1", 20003}) {
		t.Error("truth file misread")
	}
	for _, s := range []string{"nonsense", "/1.2.3.4:5", "host:0", "host:x"} {
		if _, err := ParseTruth(strings.NewReader(s)); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("%q: err %v", s, err)
		}
	}
}

func FuzzParseTruth(f *testing.F) {
	f.Add("127.0.0.1:80\n")
	f.Add("c/[::1]:9 # x\n")
	f.Add("/:")
	f.Fuzz(func(t *testing.T, s string) {
		if tr, err := ParseTruth(strings.NewReader(s)); err == nil {
			tr(Key{"c", "::1", 9})
		}
	})
}

// The real HDS binary, three replicas: full coverage with k checkers, the
// k·M probe budget, correct verdicts, and convergence after a SIGKILL.
func TestFleetAgainstRealReplicas(t *testing.T) {
	bin := testbin.Build(t, "./services/hds/cmd/hds")
	code, r, stderr := harnesstest.Exec(t, Spec(), "--hds-bin", bin, "--replicas", "3", "--proxies", "20", "--endpoints", "200",
		"--duration", "1s", "--kill", "--timeout", "45s", "--hds-arg=--gossip-timings=fast")
	if code != 0 {
		t.Fatalf("exit %d: %s\nchecks %+v", code, stderr, r.Checks)
	}
	for _, name := range []string{"coverage", "probes-kM", "verdicts", "converge-after-kill"} {
		found := false
		for _, c := range r.Checks {
			found = found || (c.Name == name && c.OK)
		}
		if !found {
			t.Errorf("check %s missing or failed: %+v", name, r.Checks)
		}
	}
	if r.Values["coverage"] != 1 || r.Values["assigned_checks"] != 400 || r.Values["reconnects"] < 1 {
		t.Errorf("values %v", r.Values)
	}
	if r.Cost == nil || r.Cost.CPUSeconds <= 0 {
		t.Errorf("replica cost not measured: %+v", r.Cost)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{}, {"--targets", "127.0.0.1:1", "--hds-bin", "x"}, {"--targets", "127.0.0.1:1"},
		{"--targets", "198.51.100.1:1", "--clusters-file", "f"}, {"--hds-bin", "x", "--replicas", "0"},
		{"--targets", "127.0.0.1:1", "--clusters-file", "/nonexistent"}, {"--hds-bin", "x", "--unhealthy-fraction", "2"},
		{"--targets", "127.0.0.1:1", "--clusters-file", "f", "--kill"},
	} {
		if code, _, stderr := harnesstest.Exec(t, Spec(), args...); code != 2 || stderr == "" {
			t.Errorf("%v: exit %d stderr %q, want usage error", args, code, stderr)
		}
	}
}
