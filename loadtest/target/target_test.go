package target

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseText(t *testing.T) {
	in := `# HELP x help
# TYPE rls_redis_roundtrips_total counter
rls_redis_roundtrips_total{node="a"} 10
rls_redis_roundtrips_total{node="b",weird="x}y \" z"} 5 1700000000
process_cpu_seconds_total 1.5
process_resident_memory_bytes 2.5e+07
nan_metric NaN
`
	s, err := ParseText(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if s["rls_redis_roundtrips_total"] != 15 || s["process_cpu_seconds_total"] != 1.5 || s["process_resident_memory_bytes"] != 25e6 {
		t.Fatalf("parsed %v", s)
	}
	for _, bad := range []string{"novalue", `x{a="b" 1`, "x 1 2 3", "x abc"} {
		if _, err := ParseText(strings.NewReader(bad)); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("%q: err = %v, want one naming line 1", bad, err)
		}
	}
}

func FuzzParseText(f *testing.F) {
	f.Add("a 1\n")
	f.Add(`a{b="c\"}"} 2 3` + "\n# c\n")
	f.Add("a{")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = ParseText(strings.NewReader(s)) // must not panic
	})
}

func FuzzParseStat(f *testing.F) {
	f.Add("1 (a b)) S 1 2 3 4 5 6 7 8 9 10 11 12 13")
	f.Fuzz(func(t *testing.T, s string) { _, _ = parseStat(s) })
}

func burn(d time.Duration) {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
	}
}

// Our own process: burning CPU must show up in the /proc reading.
func TestProcSelf(t *testing.T) {
	w, err := Start(context.Background(), Proc{PID: os.Getpid()}, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	burn(200 * time.Millisecond)
	st, err := w.Stop(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.CPUSeconds < 0.02 { // loaded box: the burn may get only part of a core
		t.Errorf("cpu = %f s after burning 0.2 s", st.CPUSeconds)
	}
	if st.PeakRSSBytes < 1<<20 {
		t.Errorf("peak rss = %f", st.PeakRSSBytes)
	}
	if _, err := Start(context.Background(), Proc{PID: 1 << 30}, time.Second); err == nil {
		t.Error("missing pid accepted")
	}
}

func TestMetricsDeltas(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1)
		fmt.Fprintf(w, "process_cpu_seconds_total %d\nprocess_resident_memory_bytes %d\nrt_total %d\n", i, 1000*i, 7*i)
	}))
	defer srv.Close()
	w, err := Start(context.Background(), Metrics{URL: srv.URL}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	st, err := w.Stop(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.CPUSeconds != 1 || st.PeakRSSBytes != 2000 || st.Deltas["rt_total"] != 7 {
		t.Fatalf("stats %+v deltas %v", st, st.Deltas)
	}
}
