// Package hist records request latencies in an HDR histogram and summarises
// them as percentiles.
package hist

import (
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// Range of recordable latencies: 1 µs .. 5 min at 3 significant digits.
// Values outside are clamped so a stalled request is never dropped silently.
const (
	lowest  = 1
	highest = int64(5 * time.Minute / time.Microsecond)
	digits  = 3
)

// Recorder is one goroutine's latency histogram (not safe for concurrent use:
// each worker owns one and they are merged at the end, which keeps the hot
// path free of locks).
type Recorder struct{ h *hdr.Histogram }

// New returns an empty recorder.
func New() *Recorder { return &Recorder{h: hdr.New(lowest, highest, digits)} }

// Record adds one latency.
func (r *Recorder) Record(d time.Duration) {
	us := d.Microseconds()
	if us < lowest {
		us = lowest
	}
	if us > highest {
		us = highest
	}
	_ = r.h.RecordValue(us) // cannot fail: value clamped into range
}

// Merge adds every value recorded in o.
func (r *Recorder) Merge(o *Recorder) { r.h.Merge(o.h) }

// Count is the number of recorded values.
func (r *Recorder) Count() int64 { return r.h.TotalCount() }

// Summary is a latency distribution in microseconds.
type Summary struct {
	Count int64   `json:"count"`
	Min   int64   `json:"min_us"`
	Mean  float64 `json:"mean_us"`
	P50   int64   `json:"p50_us"`
	P90   int64   `json:"p90_us"`
	P99   int64   `json:"p99_us"`
	P999  int64   `json:"p999_us"`
	Max   int64   `json:"max_us"`
}

// Summary computes the percentiles; all zero when nothing was recorded.
func (r *Recorder) Summary() Summary {
	if r.h.TotalCount() == 0 {
		return Summary{}
	}
	return Summary{
		Count: r.h.TotalCount(),
		Min:   r.h.Min(),
		Mean:  r.h.Mean(),
		P50:   r.h.ValueAtQuantile(50),
		P90:   r.h.ValueAtQuantile(90),
		P99:   r.h.ValueAtQuantile(99),
		P999:  r.h.ValueAtQuantile(99.9),
		Max:   r.h.Max(),
	}
}

// Quantile returns the value in µs at percentile q (0..100).
func (r *Recorder) Quantile(q float64) int64 { return r.h.ValueAtQuantile(q) }
