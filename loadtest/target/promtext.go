package target

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// Samples maps a metric name to the sum of its values over every label set
// (enough for process_* gauges and counters such as round trips).
type Samples map[string]float64

// ParseText reads the Prometheus text exposition format. Comments, blank
// lines, timestamps and labels are handled; a malformed sample line is an
// error naming its line number.
func ParseText(r io.Reader) (Samples, error) {
	out := Samples{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" || s[0] == '#' {
			continue
		}
		name, rest, err := splitName(s)
		if err != nil {
			return nil, fmt.Errorf("metrics line %d: %w", line, err)
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 || len(fields) > 2 {
			return nil, fmt.Errorf("metrics line %d: want 'name[{labels}] value [timestamp]', got %q", line, s)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %d: bad value %q", line, fields[0])
		}
		if math.IsNaN(v) {
			continue
		}
		out[name] += v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading metrics: %w", err)
	}
	return out, nil
}

// splitName returns the metric name and what follows its label set.
func splitName(s string) (string, string, error) {
	i := strings.IndexAny(s, "{ \t")
	if i <= 0 {
		return "", "", fmt.Errorf("no value in %q", s)
	}
	name := s[:i]
	if s[i] != '{' {
		return name, s[i:], nil
	}
	// Skip the label set, honouring quoted values that may contain '}'.
	inQuote, esc := false, false
	for j := i + 1; j < len(s); j++ {
		c := s[j]
		switch {
		case esc:
			esc = false
		case c == '\\' && inQuote:
			esc = true
		case c == '"':
			inQuote = !inQuote
		case c == '}' && !inQuote:
			return name, s[j+1:], nil
		}
	}
	return "", "", fmt.Errorf("unterminated label set in %q", s)
}
