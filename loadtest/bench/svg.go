package bench

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"

	"github.com/sidemesh/sidemesh/loadtest/report"
)

// Bar is one labelled value of a bar chart.
type Bar struct {
	Label string
	Value float64
}

const (
	panelW, panelH = 420, 260
	margin         = 50
)

// Panel is one chart: bars, or a line when Line is set.
type Panel struct {
	Title string
	Bars  []Bar
	Line  []float64
}

// WriteSVG draws up to two panels side by side.
func WriteSVG(w io.Writer, title string, panels ...Panel) error {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", 2*panelW+20, panelH+40)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="10" y="18" font-size="14" font-weight="bold">%s</text>`+"\n", html.EscapeString(title))
	for i, p := range panels[:min(2, len(panels))] {
		x := i * (panelW + 20)
		if p.Line != nil {
			line(&b, x, 30, p.Title, p.Line)
		} else {
			bars(&b, x, 30, p.Title, p.Bars)
		}
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// Panels picks what to chart for a result: latency percentiles and the
// throughput timeline for request scenarios, bytes for xds, times and
// probe counts for hds.
func Panels(r *report.Result) []Panel {
	var ps []Panel
	if l := r.Latency; l.Count > 0 {
		ps = append(ps, Panel{Title: "latency (ms)", Bars: []Bar{{"p50", float64(l.P50) / 1000}, {"p90", float64(l.P90) / 1000},
			{"p99", float64(l.P99) / 1000}, {"p99.9", float64(l.P999) / 1000}, {"max", float64(l.Max) / 1000}}})
	}
	v := r.Values
	switch r.Scenario {
	case "xds":
		ps = append(ps, Panel{Title: "bytes received per client", Bars: []Bar{{"initial sync", v["initial_bytes_per_client"]}, {"per change", v["bytes_per_change_per_client"]}}})
	case "hds":
		ps = append(ps, Panel{Title: "seconds", Bars: []Bar{{"full coverage", v["time_to_full_coverage_s"]}, {"verdicts right", v["time_to_correct_verdicts_s"]}, {"after kill", v["converge_after_kill_s"]}}},
			Panel{Title: "health checks per interval", Bars: []Bar{{"measured", v["probes_per_interval"]}, {"k·M", v["probes_per_interval_ideal_kM"]}, {"N·M", v["probes_per_interval_naive_NM"]}}})
	default:
		if len(r.Timeline) > 1 {
			var pts []float64
			for _, s := range r.Timeline {
				pts = append(pts, float64(s.Requests))
			}
			ps = append(ps, Panel{Title: "throughput (requests per second of the run)", Line: pts})
		}
	}
	return ps
}

func axis(b *strings.Builder, x0, y0 int, title string, max float64) (plotX, plotY, plotW, plotH int) {
	plotX, plotY, plotW, plotH = x0+margin, y0+20, panelW-margin-10, panelH-60
	fmt.Fprintf(b, `<text x="%d" y="%d" font-weight="bold">%s</text>`+"\n", x0+margin, y0+12, html.EscapeString(title))
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", plotX, plotY, plotX, plotY+plotH)
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", plotX, plotY+plotH, plotX+plotW, plotY+plotH)
	for i := 0; i <= 4; i++ {
		y := plotY + plotH - i*plotH/4
		fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="end">%s</text><line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#ddd"/>`+"\n",
			plotX-4, y+4, short(max*float64(i)/4), plotX+1, y, plotX+plotW, y)
	}
	return
}

func bars(b *strings.Builder, x0, y0 int, title string, vals []Bar) {
	top := 0.0
	for _, v := range vals {
		top = math.Max(top, v.Value)
	}
	if top <= 0 {
		top = 1
	}
	top *= 1.12 // headroom for the value labels above the bars
	px, py, pw, ph := axis(b, x0, y0, title, top)
	if len(vals) == 0 {
		return
	}
	slot := pw / len(vals)
	for i, v := range vals {
		h := int(v.Value / top * float64(ph))
		x := px + i*slot + slot/6
		fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d" fill="#4e79a7"/>`+"\n", x, py+ph-h, slot*2/3, h)
		fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", x+slot/3, py+ph-h-3, short(v.Value))
		fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", x+slot/3, py+ph+14, html.EscapeString(v.Label))
	}
}

func line(b *strings.Builder, x0, y0 int, title string, pts []float64) {
	top := 0.0
	for _, v := range pts {
		top = math.Max(top, v)
	}
	if top <= 0 {
		top = 1
	}
	px, py, pw, ph := axis(b, x0, y0, title, top)
	var path strings.Builder
	for i, v := range pts {
		x := px + i*pw/max(1, len(pts)-1)
		y := py + ph - int(v/top*float64(ph))
		fmt.Fprintf(&path, "%d,%d ", x, y)
	}
	fmt.Fprintf(b, `<polyline fill="none" stroke="#e15759" stroke-width="2" points="%s"/>`+"\n", strings.TrimSpace(path.String()))
	fmt.Fprintf(b, `<text x="%d" y="%d">0 s</text><text x="%d" y="%d" text-anchor="end">%d s</text>`+"\n", px, py+ph+14, px+pw, py+ph+14, len(pts)-1)
}

func short(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.0fk", v/1e3)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}
