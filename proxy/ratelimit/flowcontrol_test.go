package ratelimit

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"sync/atomic"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"
)

// TestRLSClientNoBDPPings serves the proxy's RLS client from a raw HTTP/2
// server on loopback (a grpc-go server cannot report the PINGs it
// receives): the client advertises the static stream window and sends no
// BDP-estimation PINGs. grpc-go's dynamic windows send one for the first
// DATA frame it receives and again after every ACK.
func TestRLSClientNoBDPPings(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var pings atomic.Int32
	window := make(chan uint32, 1)
	go serveRawRLS(t, ln, &pings, window)

	conn, client, err := Dial([]string{ln.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const calls = 10
	for i := range calls {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		resp, err := client.ShouldRateLimit(ctx, &rlsv3.RateLimitRequest{Domain: "d"})
		cancel()
		if err != nil || resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
			t.Fatalf("call %d: %v, %v", i, resp, err)
		}
	}
	select {
	case w := <-window:
		if w != rlsStreamWindow {
			t.Errorf("client SETTINGS_INITIAL_WINDOW_SIZE = %d, want %d", w, rlsStreamWindow)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no SETTINGS from the client")
	}
	// The server reads each call's frames before answering it, so every
	// PING sent before the last call has been counted.
	if n := pings.Load(); n != 0 {
		t.Errorf("%d PINGs from the RLS client over %d calls, want none (BDP estimation should be off)", n, calls)
	}
}

// serveRawRLS answers every unary call on one connection with an OK
// RateLimitResponse, counting the client's PINGs.
func serveRawRLS(t *testing.T, ln net.Listener, pings *atomic.Int32, window chan<- uint32) {
	nc, err := ln.Accept()
	if err != nil {
		return
	}
	defer nc.Close()
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := nc.Read(preface); err != nil || string(preface) != http2.ClientPreface {
		t.Errorf("client preface: %q, %v", preface, err)
		return
	}
	fr := http2.NewFramer(nc, nc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if fr.WriteSettings() != nil {
		return
	}
	body, _ := proto.Marshal(&rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK})
	msg := make([]byte, 5+len(body))
	binary.BigEndian.PutUint32(msg[1:], uint32(len(body)))
	copy(msg[5:], body)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	block := func(fields ...string) []byte {
		hb.Reset()
		for i := 0; i < len(fields); i += 2 {
			enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return append([]byte(nil), hb.Bytes()...)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return // the client closed the connection
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				w, _ := f.Value(http2.SettingInitialWindowSize)
				select {
				case window <- w:
				default:
				}
				fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				pings.Add(1)
				fr.WritePing(true, f.Data)
			}
		case *http2.DataFrame:
			if f.StreamEnded() {
				id := f.StreamID
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true,
					BlockFragment: block(":status", "200", "content-type", "application/grpc")})
				fr.WriteData(id, false, msg)
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, EndStream: true,
					BlockFragment: block("grpc-status", "0")})
			}
		}
	}
}
