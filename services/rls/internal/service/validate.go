package service

import (
	"fmt"
	"math"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Limits bound what one request may carry.
type Limits struct {
	MaxDescriptors int
	MaxEntries     int
	MaxKeyLen      int
	MaxValueLen    int
}

// DefaultLimits are generous for Envoy's real descriptors and stop abuse.
var DefaultLimits = Limits{MaxDescriptors: 64, MaxEntries: 32, MaxKeyLen: 256, MaxValueLen: 1024}

// Validate checks a request; the error is an InvalidArgument status whose
// message names the field and the reason.
func (l Limits) Validate(req *rlsv3.RateLimitRequest) error {
	bad := func(format string, args ...any) error {
		return status.Errorf(codes.InvalidArgument, format, args...)
	}
	if req.GetDomain() == "" {
		return bad("domain: must not be empty")
	}
	if len(req.GetDomain()) > l.MaxKeyLen {
		return bad("domain: longer than %d bytes", l.MaxKeyLen)
	}
	ds := req.GetDescriptors()
	if len(ds) == 0 {
		return bad("descriptors: must not be empty")
	}
	if len(ds) > l.MaxDescriptors {
		return bad("descriptors: %d descriptors, at most %d allowed", len(ds), l.MaxDescriptors)
	}
	for i, d := range ds {
		es := d.GetEntries()
		if len(es) == 0 {
			return bad("descriptors[%d].entries: must not be empty", i)
		}
		if len(es) > l.MaxEntries {
			return bad("descriptors[%d].entries: %d entries, at most %d allowed", i, len(es), l.MaxEntries)
		}
		for j, e := range es {
			if e.GetKey() == "" {
				return bad("descriptors[%d].entries[%d].key: must not be empty", i, j)
			}
			if len(e.GetKey()) > l.MaxKeyLen {
				return bad("descriptors[%d].entries[%d].key: longer than %d bytes", i, j, l.MaxKeyLen)
			}
			if len(e.GetValue()) > l.MaxValueLen {
				return bad("descriptors[%d].entries[%d].value: longer than %d bytes", i, j, l.MaxValueLen)
			}
		}
		if h := d.GetHitsAddend(); h != nil && h.GetValue() > math.MaxUint32 {
			return bad("descriptors[%d].hits_addend: %d is larger than %d", i, h.GetValue(), uint32(math.MaxUint32))
		}
		if d.GetIsNegativeHits() {
			return bad("descriptors[%d].is_negative_hits: not supported", i)
		}
		if o := d.GetLimit(); o != nil {
			if u := rlsv3.RateLimitResponse_RateLimit_Unit(o.GetUnit()); unitName(u) == "" {
				return bad("descriptors[%d].limit.unit: unknown unit %d", i, o.GetUnit())
			}
		}
	}
	return nil
}

func unitName(u rlsv3.RateLimitResponse_RateLimit_Unit) string {
	if u == rlsv3.RateLimitResponse_RateLimit_UNKNOWN {
		return ""
	}
	if _, ok := rlsv3.RateLimitResponse_RateLimit_Unit_name[int32(u)]; !ok {
		return ""
	}
	return fmt.Sprint(u)
}
