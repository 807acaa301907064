package server_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/anypb"

	mt "github.com/sidemesh/sidemesh/proxy/internal/meshtest"
)

// echoUpgradeServer answers an HTTP/1.1 Upgrade with 101 and then echoes bytes.
func echoUpgradeServer(t *testing.T) uint32 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			w.WriteHeader(400)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		io.Copy(c, brw)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return uint32(ln.Addr().(*net.TCPAddr).Port)
}

func TestWebSocketUpgrade(t *testing.T) {
	c := mt.StartCP(t)
	up := echoUpgradeServer(t)
	port := mt.FreePort(t)
	c.Push(t, basicMesh(port, mt.RouteConfig("r", mt.RouteTo("/", "ws")), []*clusterv3.Cluster{mt.EDSCluster("ws")}, mt.CLA("ws", mt.EP{Port: up})))
	runProxy(t, c, false)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	mt.Eventually(t, "listener up", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	var conn net.Conn
	var br *bufio.Reader
	mt.Eventually(t, "101 Switching Protocols", func() bool {
		var err error
		conn, err = net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		br = bufio.NewReader(conn)
		res, err := http.ReadResponse(br, nil)
		if err != nil || res.StatusCode != 101 {
			conn.Close()
			return false
		}
		return true
	})
	defer conn.Close()
	for _, msg := range []string{"hello", "world"} {
		fmt.Fprint(conn, msg)
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(br, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo through upgraded connection: %q %v", buf, err)
		}
	}
}

func TestTCPProxy(t *testing.T) {
	c := mt.StartCP(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer conn.Close(); io.Copy(conn, conn) }()
		}
	}()
	port := mt.FreePort(t)
	tp, _ := anypb.New(&tcpv3.TcpProxy{StatPrefix: "tcp", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "echo"}})
	l := &listenerv3.Listener{Name: "tcp",
		Address:      &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tp}}}}}}
	c.Push(t, mt.Mesh{Listeners: []types.Resource{l}, Clusters: []types.Resource{mt.EDSCluster("echo")},
		Endpoints: []types.Resource{mt.CLA("echo", mt.EP{Port: uint32(ln.Addr().(*net.TCPAddr).Port)})}})
	runProxy(t, c, false)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	mt.Eventually(t, "echo through tcp_proxy", func() bool {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprint(conn, "ping")
		buf := make([]byte, 4)
		_, err = io.ReadFull(conn, buf)
		return err == nil && string(buf) == "ping"
	})
}

func TestGRPCOverH2C(t *testing.T) {
	c := mt.StartCP(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(ln)
	defer gs.Stop()
	port := mt.FreePort(t)
	cl := mt.EDSCluster("grpc")
	cl.Http2ProtocolOptions = &corev3.Http2ProtocolOptions{}
	c.Push(t, basicMesh(port, mt.RouteConfig("r", mt.RouteTo("/", "grpc")), []*clusterv3.Cluster{cl}, mt.CLA("grpc", mt.EP{Port: uint32(ln.Addr().(*net.TCPAddr).Port)})))
	runProxy(t, c, false)
	conn, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", port), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	mt.Eventually(t, "unary gRPC through the proxy", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "svc"})
		return err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING
	})
	// Unknown service: the gRPC status travels back in trailers.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"}); err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Fatalf("want NotFound from upstream trailers, got %v", err)
	}
	// Server streaming: the first message must arrive while the stream stays open.
	w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("streamed watch: %v %v", r, err)
	}
	hs.SetServingStatus("svc", healthpb.HealthCheckResponse_NOT_SERVING)
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("second streamed message: %v %v", r, err)
	}
}
