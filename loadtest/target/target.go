// Package target measures the process under load: CPU seconds used over the
// run and peak resident memory, read from /proc/PID or from the process's own
// Prometheus /metrics, plus arbitrary counters from /metrics.
package target

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTicks is USER_HZ; 100 on every Linux architecture Go supports.
const clockTicks = 100

// Reading is one observation of the target.
type Reading struct {
	CPUSeconds float64
	RSSBytes   float64
	Metrics    Samples // nil when reading /proc
}

// Source reads the target's current state.
type Source interface {
	Read(ctx context.Context) (Reading, error)
	String() string
}

// Proc reads /proc/PID/stat and /proc/PID/status.
type Proc struct{ PID int }

func (p Proc) String() string { return fmt.Sprintf("pid %d", p.PID) }

// Read implements Source.
func (p Proc) Read(context.Context) (Reading, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID))
	if err != nil {
		return Reading{}, fmt.Errorf("target pid %d: %w", p.PID, err)
	}
	cpu, err := parseStat(string(b))
	if err != nil {
		return Reading{}, fmt.Errorf("target pid %d: %w", p.PID, err)
	}
	rss, err := readRSS(fmt.Sprintf("/proc/%d/status", p.PID))
	if err != nil {
		return Reading{}, fmt.Errorf("target pid %d: %w", p.PID, err)
	}
	return Reading{CPUSeconds: cpu, RSSBytes: rss}, nil
}

// parseStat returns utime+stime in seconds. The command name (field 2) may
// contain spaces and parentheses, so fields are counted after the last ')'.
func parseStat(s string) (float64, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc stat")
	}
	f := strings.Fields(s[i+1:])
	// After ')': state(3) ppid(4) ... utime(14) stime(15) → indexes 11, 12.
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed /proc stat: %d fields", len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed /proc stat utime/stime %q %q", f[11], f[12])
	}
	return float64(ut+st) / clockTicks, nil
}

func readRSS(path string) (float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				return 0, fmt.Errorf("bad VmRSS %q", rest)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in %s", path)
}

// Metrics scrapes a Prometheus endpoint.
type Metrics struct {
	URL    string
	Client *http.Client
}

func (m Metrics) String() string { return m.URL }

// Read implements Source.
func (m Metrics) Read(ctx context.Context) (Reading, error) {
	s, err := Scrape(ctx, m.Client, m.URL)
	if err != nil {
		return Reading{}, err
	}
	return Reading{CPUSeconds: s["process_cpu_seconds_total"], RSSBytes: s["process_resident_memory_bytes"], Metrics: s}, nil
}

// Scrape fetches and parses url.
func Scrape(ctx context.Context, c *http.Client, url string) (Samples, error) {
	if c == nil {
		c = &http.Client{Timeout: 5 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("target metrics %s: %w", url, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("target metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("target metrics %s: HTTP %d", url, resp.StatusCode)
	}
	s, err := ParseText(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("target metrics %s: %w", url, err)
	}
	return s, nil
}

// Stats is the target's cost over a run.
type Stats struct {
	Source       string  `json:"source"`
	CPUSeconds   float64 `json:"cpu_seconds"`
	PeakRSSBytes float64 `json:"peak_rss_bytes"`
	// Deltas of every counter seen in /metrics over the run (metrics source only).
	Deltas Samples `json:"-"`
}

// Watch samples a source during a run: Start takes the first reading and
// polls for peak RSS; Stop takes the last reading and returns the deltas.
type Watch struct {
	src    Source
	first  Reading
	peak   float64
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// Start begins watching; the first reading must succeed so a wrong PID or URL
// fails the run before it starts.
func Start(ctx context.Context, src Source, every time.Duration) (*Watch, error) {
	r, err := src.Read(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &Watch{src: src, first: r, peak: r.RSSBytes, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if r, err := src.Read(ctx); err == nil {
					w.note(r)
				}
			}
		}
	}()
	return w, nil
}

func (w *Watch) note(r Reading) {
	w.mu.Lock()
	if r.RSSBytes > w.peak {
		w.peak = r.RSSBytes
	}
	w.mu.Unlock()
}

// Stop ends the watch and returns the target's cost since Start.
func (w *Watch) Stop(ctx context.Context) (Stats, error) {
	w.cancel()
	<-w.done
	last, err := w.src.Read(ctx)
	if err != nil {
		return Stats{}, err
	}
	w.note(last)
	st := Stats{Source: w.src.String(), CPUSeconds: last.CPUSeconds - w.first.CPUSeconds, PeakRSSBytes: w.peak}
	if last.Metrics != nil {
		st.Deltas = Samples{}
		for k, v := range last.Metrics {
			st.Deltas[k] = v - w.first.Metrics[k]
		}
	}
	return st, nil
}
