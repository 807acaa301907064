package healthcheck

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

type grpcProber struct {
	dialer             *net.Dialer
	service, authority string
	md                 []string

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn // by addr + authority
}

func newGRPCProber(g *corev3.HealthCheck_GrpcHealthCheck, dialer *net.Dialer) *grpcProber {
	p := &grpcProber{dialer: dialer, service: g.GetServiceName(), authority: g.GetAuthority(), conns: map[string]*grpc.ClientConn{}}
	for _, h := range g.GetInitialMetadata() {
		v := h.GetHeader().GetValue()
		if v == "" {
			v = string(h.GetHeader().GetRawValue())
		}
		p.md = append(p.md, h.GetHeader().GetKey(), v)
	}
	return p
}

func (p *grpcProber) key(t Target) (key, authority string) {
	auth := t.Hostname
	if auth == "" {
		auth = p.authority
	}
	if auth == "" {
		auth = t.Cluster
	}
	return t.Addr + "|" + auth, auth
}

func (p *grpcProber) conn(t Target) (*grpc.ClientConn, error) {
	key, auth := p.key(t)
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[key]; ok {
		return c, nil
	}
	// A short reconnect backoff: a recovered upstream should pass its next
	// probe, not wait out gRPC's default 1 s..120 s schedule.
	c, err := grpc.NewClient("passthrough:///"+t.Addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority(auth),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return p.dialer.DialContext(ctx, "tcp", addr)
		}),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}, MinConnectTimeout: time.Second}))
	if err != nil {
		return nil, err
	}
	p.conns[key] = c
	return c, nil
}

func (p *grpcProber) probe(ctx context.Context, t Target) Result {
	c, err := p.conn(t)
	if err != nil {
		return Result{Kind: FailNetwork, Err: err}
	}
	if len(p.md) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, p.md...)
	}
	// Not WaitForReady: a refused connection is a network failure
	// (UNHEALTHY), not a timeout, as in Envoy.
	resp, err := healthpb.NewHealthClient(c).Check(ctx, &healthpb.HealthCheckRequest{Service: p.service})
	if err != nil {
		switch status.Code(err) {
		case codes.Unavailable, codes.Canceled, codes.DeadlineExceeded:
			return Result{Kind: FailNetwork, Err: err}
		}
		return Result{Kind: FailActive, Err: err}
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return Result{Kind: FailActive, Err: fmt.Errorf("grpc health status %s", resp.GetStatus())}
	}
	return Result{}
}

// forget closes the target's connection; a session still probing the same
// address reopens it on its next probe.
func (p *grpcProber) forget(t Target) {
	key, _ := p.key(t)
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[key]; ok {
		_ = c.Close()
		delete(p.conns, key)
	}
}

func (p *grpcProber) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, c := range p.conns {
		_ = c.Close()
		delete(p.conns, k)
	}
}
