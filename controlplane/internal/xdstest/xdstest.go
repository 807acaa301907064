// Package xdstest has the pieces of the control plane's end-to-end tests: real
// gRPC backends and real gRPC-Go xDS clients.
package xdstest

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	xdsgrpc "google.golang.org/grpc/xds" // registers the xds resolver, balancers and filters
)

// Backend starts a gRPC health server; callers tell backends apart by the
// peer address of the RPC.
func Backend(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	healthpb.RegisterHealthServer(g, health.NewServer())
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	return ln.Addr().String()
}

// Client is a real gRPC-Go xDS client of xds:///target, bootstrapped
// in-process against the control plane at cpAddr as node nodeID.
func Client(t testing.TB, cpAddr, nodeID, target string) *grpc.ClientConn {
	t.Helper()
	bootstrap := fmt.Sprintf(`{"xds_servers":[{"server_uri":%q,"channel_creds":[{"type":"insecure"}]}],
		"node":{"id":%q,"locality":{"zone":"zone-a"}}}`, cpAddr, nodeID)
	rb, err := xdsgrpc.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///"+target, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// Call makes one RPC (metadata as key, value pairs) and returns the backend
// that served it.
func Call(ctx context.Context, cc *grpc.ClientConn, md ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if len(md) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, md...)
	}
	var p peer.Peer
	_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p), grpc.WaitForReady(true))
	if err != nil {
		return "", err
	}
	return p.Addr.String(), nil
}

// Eventually polls f every 20 ms until it holds, failing after 30 s.
func Eventually(t testing.TB, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// HostPort splits an address the tests made themselves.
func HostPort(addr string) (string, uint32) {
	h, p, _ := net.SplitHostPort(addr)
	var n uint32
	fmt.Sscan(p, &n)
	return h, n
}
