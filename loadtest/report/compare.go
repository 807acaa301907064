package report

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"text/tabwriter"
)

// Flatten lists the comparable numbers of a result by name.
func Flatten(r *Result) map[string]float64 {
	m := map[string]float64{
		"throughput_rps":  r.Throughput,
		"requests":        float64(r.Requests),
		"errors":          float64(r.Errors),
		"latency_p50_us":  float64(r.Latency.P50),
		"latency_p90_us":  float64(r.Latency.P90),
		"latency_p99_us":  float64(r.Latency.P99),
		"latency_p999_us": float64(r.Latency.P999),
		"latency_max_us":  float64(r.Latency.Max),
	}
	if c := r.Cost; c != nil {
		m["target_cpu_us_per_request"] = c.CPUMicrosPerRequest
		m["target_cpu_cores"] = c.CPUCores
		m["target_peak_rss_mib"] = c.PeakRSSMiB
	}
	for k, v := range r.Outcomes {
		m["outcome_"+k] = float64(v)
	}
	for k, v := range r.Values {
		m[k] = v
	}
	return m
}

// Compare prints every number of a and b side by side with the ratio b/a.
func Compare(w io.Writer, aName string, a *Result, bName string, b *Result) {
	fa, fb := Flatten(a), Flatten(b)
	keys := map[string]bool{}
	for k := range fa {
		keys[k] = true
	}
	for k := range fb {
		keys[k] = true
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "metric\t%s\t%s\tB/A\t\n", aName, bName)
	fmt.Fprintf(tw, "scenario\t%s\t%s\t\t\n", a.Scenario, b.Scenario)
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		va, okA := fa[k]
		vb, okB := fb[k]
		ratio := "—"
		if okA && okB && va != 0 {
			ratio = fmt.Sprintf("%.2f×", vb/va)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", k, cell(va, okA), cell(vb, okB), ratio)
	}
	tw.Flush()
}

func cell(v float64, ok bool) string {
	if !ok {
		return "—"
	}
	return trimFloat(v)
}
