package service

import (
	"context"
	"sync"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"

	"github.com/sidemesh/sidemesh/services/rls/internal/limiter"
)

// ShouldRateLimitBatch answers reqs[i] into resps[i], errs[i] exactly as
// ShouldRateLimit would, with one backend hand-off for all of them when the
// backend takes batches (Redis): no goroutine and no wake-up per request.
func (s *Service) ShouldRateLimitBatch(ctx context.Context, reqs []*rlsv3.RateLimitRequest, resps []*rlsv3.RateLimitResponse, errs []error) {
	ps := make([]pending, len(reqs))
	var idx []int
	for i, req := range reqs {
		if s.prepare(&ps[i], req) {
			idx = append(idx, i)
		}
	}
	backendErrs := make([]error, len(reqs))
	if len(idx) > 0 {
		if bb, ok := s.o.Backend.(limiter.BatchBackend); ok {
			brs := make([]limiter.Request, len(idx))
			for k, i := range idx {
				brs[k] = limiter.Request{Now: ps[i].now, Items: ps[i].items, Results: ps[i].results}
			}
			bb.CheckBatch(ctx, brs)
			for k, i := range idx {
				backendErrs[i] = brs[k].Err
			}
		} else {
			// A backend without batches may block per call (it must not
			// serialize the batch behind one slow request).
			var wg sync.WaitGroup
			for _, i := range idx {
				wg.Go(func() {
					backendErrs[i] = s.o.Backend.Check(ctx, ps[i].now, ps[i].items, ps[i].results)
				})
			}
			wg.Wait()
		}
	}
	for i := range ps {
		resps[i], errs[i] = s.finish(&ps[i], backendErrs[i])
	}
}
