// Package report holds the result of one scenario run and renders it as a
// table, JSON, or a side-by-side comparison of two runs.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sidemesh/sidemesh/loadtest/hist"
	"github.com/sidemesh/sidemesh/loadtest/runner"
)

// Result is one scenario run, as printed and as written with --json.
type Result struct {
	Scenario       string            `json:"scenario"`
	Target         string            `json:"target"`
	Mode           string            `json:"mode"` // "closed" or "open N/s"
	Started        time.Time         `json:"started"`
	Params         map[string]string `json:"params,omitempty"`
	ElapsedSeconds float64           `json:"elapsed_seconds"`
	Requests       uint64            `json:"requests"`
	Errors         uint64            `json:"errors"`
	Throughput     float64           `json:"throughput_rps"`
	Late           uint64            `json:"late_starts,omitempty"`
	Latency        hist.Summary      `json:"latency"`
	SendLag        *hist.Summary     `json:"send_lag,omitempty"`
	Outcomes       map[string]uint64 `json:"outcomes,omitempty"`
	ErrorSamples   []string          `json:"error_samples,omitempty"`
	Timeline       []runner.Second   `json:"timeline,omitempty"`
	Cost           *TargetCost       `json:"target_cost,omitempty"`
	Generator      *GeneratorCost    `json:"generator_cost,omitempty"`
	// Values are scenario-specific numbers (round trips per request, bytes
	// per push, coverage ...), named with their unit.
	Values map[string]float64 `json:"values,omitempty"`
	Checks []Check            `json:"checks,omitempty"`
}

// TargetCost is what the measured process spent over the run.
type TargetCost struct {
	Source              string  `json:"source"`
	CPUSeconds          float64 `json:"cpu_seconds"`
	CPUMicrosPerRequest float64 `json:"cpu_us_per_request"`
	CPUCores            float64 `json:"cpu_cores"`
	PeakRSSMiB          float64 `json:"peak_rss_mib"`
}

// GeneratorCost is what the load generator itself spent over the run.
type GeneratorCost struct {
	CPUSeconds          float64 `json:"cpu_seconds"`
	CPUMicrosPerRequest float64 `json:"cpu_us_per_request"`
	CPUCores            float64 `json:"cpu_cores"`
	GOMAXPROCS          int     `json:"gomaxprocs"`
}

// Check is a pass/fail verdict on the run (e.g. no over-admission).
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// FromRun fills the generic fields from a runner result.
func FromRun(scenario, target string, rate float64, res *runner.Result) *Result {
	mode := "closed"
	if rate > 0 {
		mode = fmt.Sprintf("open %g/s", rate)
	}
	var lag *hist.Summary
	if res.SendLag != nil && res.SendLag.Count() > 0 {
		s := res.SendLag.Summary()
		lag = &s
	}
	return &Result{
		SendLag:  lag,
		Scenario: scenario, Target: target, Mode: mode,
		Started:        time.Now().Add(-res.Elapsed).UTC(),
		ElapsedSeconds: res.Elapsed.Seconds(),
		Requests:       res.Requests, Errors: res.Errors, Throughput: res.Throughput(), Late: res.Late,
		Latency: res.Latency.Summary(), Outcomes: res.Outcomes, ErrorSamples: res.ErrorSamples, Timeline: res.Timeline,
		Values: map[string]float64{},
	}
}

// Failed reports whether any check failed.
func (r *Result) Failed() bool {
	for _, c := range r.Checks {
		if !c.OK {
			return true
		}
	}
	return false
}

// AddCheck records a verdict.
func (r *Result) AddCheck(name string, ok bool, format string, args ...any) {
	r.Checks = append(r.Checks, Check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
}

// WriteJSON writes the result as indented JSON.
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// ReadJSON loads a result written by WriteJSON.
func ReadJSON(path string) (*Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Result
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: not a loadtest result: %w", path, err)
	}
	if r.Scenario == "" {
		return nil, fmt.Errorf("%s: not a loadtest result: no scenario field", path)
	}
	return &r, nil
}

// WriteTable prints the human-readable summary.
func (r *Result) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "scenario\t%s\n", r.Scenario)
	fmt.Fprintf(tw, "target\t%s\n", r.Target)
	fmt.Fprintf(tw, "mode\t%s\n", r.Mode)
	for _, k := range slices.Sorted(maps.Keys(r.Params)) {
		fmt.Fprintf(tw, "  %s\t%s\n", k, r.Params[k])
	}
	fmt.Fprintf(tw, "elapsed\t%.2f s\n", r.ElapsedSeconds)
	if r.Requests > 0 {
		fmt.Fprintf(tw, "requests\t%d (errors %d)\n", r.Requests, r.Errors)
		if r.Throughput > 0 {
			fmt.Fprintf(tw, "throughput\t%.0f req/s\n", r.Throughput)
		}
		if r.Late > 0 {
			fmt.Fprintf(tw, "late starts\t%d (open loop could not keep its schedule)\n", r.Late)
		}
		if l := r.Latency; l.Count > 0 {
			fmt.Fprintf(tw, "latency µs\tp50 %d  p90 %d  p99 %d  p99.9 %d  max %d  mean %.0f\n", l.P50, l.P90, l.P99, l.P999, l.Max, l.Mean)
		}
		if l := r.SendLag; l != nil && l.Count > 0 {
			fmt.Fprintf(tw, "send lag µs\tp50 %d  p90 %d  p99 %d  p99.9 %d  max %d  mean %.0f  (part of latency)\n", l.P50, l.P90, l.P99, l.P999, l.Max, l.Mean)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(r.Outcomes)) {
		fmt.Fprintf(tw, "  %s\t%d\n", k, r.Outcomes[k])
	}
	for _, e := range r.ErrorSamples {
		fmt.Fprintf(tw, "  error\t%s\n", e)
	}
	if c := r.Cost; c != nil {
		fmt.Fprintf(tw, "target cost\t%.3f CPU s (%.2f cores), %.1f µs/request, peak RSS %.1f MiB  [%s]\n", c.CPUSeconds, c.CPUCores, c.CPUMicrosPerRequest, c.PeakRSSMiB, c.Source)
	}
	if g := r.Generator; g != nil {
		fmt.Fprintf(tw, "generator cost\t%.3f CPU s (%.2f cores), %.1f µs/request  [loadtest, GOMAXPROCS %d]\n", g.CPUSeconds, g.CPUCores, g.CPUMicrosPerRequest, g.GOMAXPROCS)
	}
	for _, k := range slices.Sorted(maps.Keys(r.Values)) {
		fmt.Fprintf(tw, "%s\t%s\n", k, trimFloat(r.Values[k]))
	}
	for _, c := range r.Checks {
		v := "PASS"
		if !c.OK {
			v = "FAIL"
		}
		fmt.Fprintf(tw, "check %s\t%s  %s\n", c.Name, v, c.Detail)
	}
	tw.Flush()
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.4f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	if s == "" || s == "-" {
		return "0"
	}
	return s
}
