package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

type tcpProber struct {
	dialer  *net.Dialer
	send    []byte
	receive [][]byte
}

func newTCPProber(t *corev3.HealthCheck_TcpHealthCheck, dialer *net.Dialer) (*tcpProber, error) {
	p := &tcpProber{dialer: dialer}
	if s := t.GetSend(); s != nil {
		b, err := payload(s)
		if err != nil {
			return nil, fmt.Errorf("tcp_health_check.send: %w", err)
		}
		p.send = b
	}
	for i, r := range t.GetReceive() {
		b, err := payload(r)
		if err != nil {
			return nil, fmt.Errorf("tcp_health_check.receive[%d]: %w", i, err)
		}
		p.receive = append(p.receive, b)
	}
	return p, nil
}

// probe connects, writes send and waits for every receive chunk in order.
// Like Envoy it cannot tell wrong data from not-enough data, so a mismatch
// fails only by timeout or by the peer closing.
func (p *tcpProber) probe(ctx context.Context, t Target) Result {
	conn, err := p.dialer.DialContext(ctx, "tcp", t.Addr)
	if err != nil {
		return Result{Kind: FailNetwork, Err: err}
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if len(p.send) > 0 {
		if _, err := conn.Write(p.send); err != nil {
			return Result{Kind: FailNetwork, Err: err}
		}
	}
	if len(p.receive) == 0 {
		return Result{}
	}
	var buf []byte
	chunk := make([]byte, 4096)
	for {
		n, err := conn.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if containsInOrder(buf, p.receive) {
			return Result{}
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// The conn deadline is the probe deadline; it can fire a
				// moment before the context notices.
				return Result{Kind: FailTimeout, Err: err}
			}
			if errors.Is(err, io.EOF) {
				err = errors.New("connection closed before the expected payload")
			}
			return Result{Kind: FailNetwork, Err: err}
		}
		if len(buf) > 1<<20 {
			return Result{Kind: FailNetwork, Err: errors.New("1 MiB read without the expected payload")}
		}
	}
}

func (p *tcpProber) forget(Target) {}

func (p *tcpProber) close() {}
