// Package pct evaluates Envoy's FractionalPercent (numerator over HUNDRED,
// TEN_THOUSAND or MILLION) for the mesh filters.
package pct

import (
	"math/rand/v2"

	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

// Denominator of p as a number.
func Denominator(p *typev3.FractionalPercent) uint64 {
	switch p.GetDenominator() {
	case typev3.FractionalPercent_TEN_THOUSAND:
		return 10_000
	case typev3.FractionalPercent_MILLION:
		return 1_000_000
	}
	return 100
}

// Sample reports whether a random draw falls within p (nil: never).
func Sample(p *typev3.FractionalPercent) bool {
	if p == nil {
		return false
	}
	d := Denominator(p)
	return rand.Uint64N(d) < min(uint64(p.GetNumerator()), d)
}
