package bench

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/loadtest/report"
)

func (b *Bench) writeMarkdown(w io.Writer, now time.Time) error {
	fmt.Fprintf(w, "# sidemesh load-test report — %s\n\n", now.Format("2006-01-02 15:04 UTC"))
	rev, _ := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	fmt.Fprintf(w, "Machine: %d CPUs, %s/%s, %s; commit %s. Everything on 127.0.0.1; the load generator shares the cores with the targets, so compare CPU per request more than req/s.\n\n",
		runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version(), strings.TrimSpace(string(rev)))
	fmt.Fprintf(w, "Load average (1/5/15 min) at the start: %s; at the end: %s. Other tenants share this machine: read the numbers with that in mind.\n\n", b.loadStart, loadAvg())
	fmt.Fprintln(w, "| scenario | req/s | p50 µs | p99 µs | p99.9 µs | target CPU µs/req | target cores | target peak RSS MiB | checks |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, e := range b.entries {
		switch {
		case e.Skipped != "":
			fmt.Fprintf(w, "| %s | skipped | | | | | | | %s |\n", e.Name, e.Skipped)
		case e.Result == nil:
			fmt.Fprintf(w, "| %s | error | | | | | | | %s |\n", e.Name, cellText(fmt.Sprint(e.Err)))
		default:
			r := e.Result
			cpu, cores, rss := "—", "—", "—"
			if c := r.Cost; c != nil {
				if c.CPUMicrosPerRequest > 0 {
					cpu = fmt.Sprintf("%.1f", c.CPUMicrosPerRequest)
				}
				cores, rss = fmt.Sprintf("%.2f", c.CPUCores), fmt.Sprintf("%.1f", c.PeakRSSMiB)
			}
			rps := "—"
			if r.Throughput > 0 {
				rps = fmt.Sprintf("%.0f", r.Throughput)
			}
			lat := func(v int64) string {
				if r.Latency.Count == 0 {
					return "—"
				}
				return fmt.Sprint(v)
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", e.Name, rps, lat(r.Latency.P50), lat(r.Latency.P99), lat(r.Latency.P999), cpu, cores, rss, checks(r))
		}
	}
	for _, e := range b.entries {
		fmt.Fprintf(w, "\n## %s — %s\n\n", e.Name, e.Title)
		if e.Skipped != "" {
			fmt.Fprintf(w, "Skipped: %s\n", e.Skipped)
			continue
		}
		if e.Command != "" {
			fmt.Fprintf(w, "```\n%s\n```\n\n", e.Command)
		}
		if e.Err != nil {
			fmt.Fprintf(w, "Error: %s\n\n", cellText(e.Err.Error()))
		}
		r := e.Result
		if r == nil {
			continue
		}
		fmt.Fprintln(w, "```")
		r.WriteTable(w)
		fmt.Fprintln(w, "```")
		svg := e.Name + ".svg"
		if err := b.chart(filepath.Join(b.dataDir, svg), e); err != nil {
			return err
		}
		fmt.Fprintf(w, "\n![%s](%s/%s) — JSON: [%s.json](%s/%s.json)\n", e.Name, b.stamp, svg, e.Name, b.stamp, e.Name)
	}
	return nil
}

func (b *Bench) chart(path string, e *Entry) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	werr := WriteSVG(f, e.Name+" — "+e.Title, Panels(e.Result)...)
	if err := f.Close(); werr == nil {
		werr = err
	}
	return werr
}

func checks(r *report.Result) string {
	var s []string
	for _, c := range r.Checks {
		v := "pass"
		if !c.OK {
			v = "**FAIL**"
		}
		s = append(s, c.Name+" "+v)
	}
	return strings.Join(s, ", ")
}

func cellText(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "|", "\\|"), "\n", " ")
}

// loadAvg is /proc/loadavg's first three fields ("?" where unavailable).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
