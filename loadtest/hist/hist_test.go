package hist

import (
	"math"
	"testing"
	"time"
)

// Uniform 1..10000 µs: every percentile p must sit at p% of the range within
// the histogram's 3-significant-digit precision.
func TestPercentilesUniform(t *testing.T) {
	r := New()
	for i := 1; i <= 10000; i++ {
		r.Record(time.Duration(i) * time.Microsecond)
	}
	s := r.Summary()
	if s.Count != 10000 {
		t.Fatalf("count = %d", s.Count)
	}
	check := func(name string, got, want int64) {
		t.Helper()
		if math.Abs(float64(got-want)) > float64(want)*0.002+1 {
			t.Errorf("%s = %d, want %d ±0.2%%", name, got, want)
		}
	}
	check("p50", s.P50, 5000)
	check("p90", s.P90, 9000)
	check("p99", s.P99, 9900)
	check("p999", s.P999, 9990)
	check("max", s.Max, 10000)
	check("min", s.Min, 1)
	if math.Abs(s.Mean-5000.5) > 10 {
		t.Errorf("mean = %f", s.Mean)
	}
}

// A bimodal distribution: p50 in the fast mode, p99 in the slow one.
func TestPercentilesBimodal(t *testing.T) {
	r := New()
	for i := 0; i < 980; i++ {
		r.Record(100 * time.Microsecond)
	}
	for i := 0; i < 20; i++ {
		r.Record(50 * time.Millisecond)
	}
	s := r.Summary()
	if s.P50 != 100 || s.P90 != 100 {
		t.Errorf("p50/p90 = %d/%d, want 100", s.P50, s.P90)
	}
	if s.P99 < 49950 || s.P99 > 50050 {
		t.Errorf("p99 = %d, want ≈50000", s.P99)
	}
}

func TestMergeAndClamp(t *testing.T) {
	a, b := New(), New()
	a.Record(0)              // clamped up to 1 µs
	b.Record(10 * time.Hour) // clamped down to the top of the range
	a.Merge(b)
	s := a.Summary()
	if s.Count != 2 || s.Min != 1 {
		t.Fatalf("summary %+v", s)
	}
	if s.Max < highest*999/1000 {
		t.Fatalf("max %d not clamped to ≈%d", s.Max, highest)
	}
	if (New()).Summary() != (Summary{}) {
		t.Fatal("empty summary not zero")
	}
}
