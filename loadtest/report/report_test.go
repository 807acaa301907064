package report

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestJSONRoundTripAndCompare(t *testing.T) {
	a := &Result{Scenario: "rls", Throughput: 1000, Values: map[string]float64{"x": 2}, Cost: &TargetCost{CPUMicrosPerRequest: 26}}
	b := &Result{Scenario: "rls", Throughput: 500, Values: map[string]float64{"x": 3, "only_b": 1}, Cost: &TargetCost{CPUMicrosPerRequest: 39}}
	dir := t.TempDir()
	for name, r := range map[string]*Result{"a.json": a, "b.json": b} {
		var buf bytes.Buffer
		if err := r.WriteJSON(&buf); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o644)
	}
	ra, err := ReadJSON(filepath.Join(dir, "a.json"))
	if err != nil {
		t.Fatal(err)
	}
	rb, _ := ReadJSON(filepath.Join(dir, "b.json"))
	var out bytes.Buffer
	Compare(&out, "A", ra, "B", rb)
	s := out.String()
	for _, want := range []string{"0.50×", "1.50×", "only_b"} {
		if !strings.Contains(s, want) {
			t.Errorf("compare output lacks %q:\n%s", want, s)
		}
	}
	if !strings.Contains(lineOf(s, "target_cpu_us_per_request"), "1.50×") {
		t.Errorf("cpu ratio wrong:\n%s", s)
	}
	os.WriteFile(filepath.Join(dir, "bad.json"), []byte(`{"x":1}`), 0o644)
	if _, err := ReadJSON(filepath.Join(dir, "bad.json")); err == nil {
		t.Error("a JSON file without a scenario was accepted")
	}
}

func lineOf(s, key string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, key) {
			return l
		}
	}
	return ""
}

func TestTableAndChecks(t *testing.T) {
	r := &Result{Scenario: "http", Requests: 10, Throughput: 5, Outcomes: map[string]uint64{"200": 9, "503": 1}, Values: map[string]float64{}}
	r.AddCheck("errors", true, "ok")
	if r.Failed() {
		t.Fatal("failed with a passing check")
	}
	r.AddCheck("over", false, "bad %d", 3)
	if !r.Failed() {
		t.Fatal("not failed with a failing check")
	}
	var buf bytes.Buffer
	r.WriteTable(&buf)
	for _, want := range []string{"503", "FAIL  bad 3", "PASS"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, buf.String())
		}
	}
}
