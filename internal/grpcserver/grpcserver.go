// Package grpcserver builds the gRPC server every sidemesh service uses: the
// standard grpc.health.v1 service and server reflection come with it.
package grpcserver

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
)

// Server is a gRPC server plus its health service.
type Server struct {
	*grpc.Server
	Health *health.Server
}

// New returns a server with health and reflection registered. The overall
// health starts SERVING; services set their own names' status.
func New(opts ...grpc.ServerOption) *Server {
	base := []grpc.ServerOption{
		// Clients (Envoy, proxies) keep long-lived streams; ping them so dead
		// peers are noticed, and accept their pings.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	}
	s := grpc.NewServer(append(base, opts...)...)
	h := health.NewServer()
	healthpb.RegisterHealthServer(s, h)
	reflection.Register(s)
	return &Server{Server: s, Health: h}
}

// Shutdown marks every service NOT_SERVING, then stops gracefully; when ctx
// ends first it closes the remaining connections.
func (s *Server) Shutdown(ctx context.Context) error {
	s.Health.Shutdown()
	done := make(chan struct{})
	go func() {
		s.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.Stop()
		<-done
		return ctx.Err()
	}
}
