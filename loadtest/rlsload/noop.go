package rlsload

import (
	"context"

	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
)

// Noop answers every ShouldRateLimit with OK at once: the floor any gRPC
// rate limit service starts from, for CPU-per-request ratios.
type Noop struct {
	rlspb.UnimplementedRateLimitServiceServer
}

var okResp = &rlspb.RateLimitResponse{OverallCode: rlspb.RateLimitResponse_OK}

// ShouldRateLimit implements the service.
func (Noop) ShouldRateLimit(context.Context, *rlspb.RateLimitRequest) (*rlspb.RateLimitResponse, error) {
	return okResp, nil
}

// NewNoopServer returns a bare grpc-go server with only the no-op service.
func NewNoopServer() *grpc.Server {
	s := grpc.NewServer()
	rlspb.RegisterRateLimitServiceServer(s, Noop{})
	return s
}
