package pct

import (
	"testing"

	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

func TestSample(t *testing.T) {
	if Sample(nil) || Sample(&typev3.FractionalPercent{Numerator: 0}) {
		t.Fatal("0% sampled")
	}
	for range 1000 {
		if !Sample(&typev3.FractionalPercent{Numerator: 100}) || !Sample(&typev3.FractionalPercent{Numerator: 2_000_000, Denominator: typev3.FractionalPercent_MILLION}) {
			t.Fatal("100% not sampled")
		}
	}
	n := 0
	const trials = 20000
	for range trials {
		if Sample(&typev3.FractionalPercent{Numerator: 2500, Denominator: typev3.FractionalPercent_TEN_THOUSAND}) {
			n++
		}
	}
	// 25% ± 6 sigma (sigma ≈ 0.3% at 20k trials).
	if n < trials*23/100 || n > trials*27/100 {
		t.Fatalf("25%% sampled %d of %d", n, trials)
	}
}
