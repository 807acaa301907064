package main

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"

	"github.com/sidemesh/sidemesh/internal/testbin"
)

// TestStaticWindowsNoBDPPings speaks raw HTTP/2 to the real binary: the
// server advertises the static stream window, and unary calls draw no
// BDP-estimation PINGs (grpc-go sends one for the first DATA frame of a
// connection and again after every ACK when windows are dynamic).
func TestStaticWindowsNoBDPPings(t *testing.T) {
	bin := testbin.Build(t, "./services/rls/cmd/rls")
	dir := t.TempDir()
	writeRules(t, dir, "e2e.yaml", e2eRules)
	p := startRLS(t, bin, "--rules", dir, "--backend", "memory")

	nc, err := net.DialTimeout("tcp", p.grpc, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// Every read below is bounded: a missing frame fails, never hangs.
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := nc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(nc, nc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}

	body, err := proto.Marshal(request("e2e", "fixed", "flow"))
	if err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 5+len(body))
	binary.BigEndian.PutUint32(msg[1:], uint32(len(body)))
	copy(msg[5:], body)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	headers := [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", p.grpc},
		{":path", "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"},
		{"content-type", "application/grpc"}, {"te", "trailers"}}

	var window uint32
	gotSettings, pings := false, 0
	const calls = 20
	for i := range calls {
		id := uint32(2*i + 1)
		hb.Reset()
		for _, f := range headers {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		if err := fr.WriteData(id, true, msg); err != nil {
			t.Fatal(err)
		}
		// Read until this call's trailers (HEADERS with END_STREAM).
		for done := false; !done; {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("call %d: reading frames: %v", i, err)
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if f.IsAck() {
					continue
				}
				gotSettings = true
				window, _ = f.Value(http2.SettingInitialWindowSize)
				if err := fr.WriteSettingsAck(); err != nil {
					t.Fatal(err)
				}
			case *http2.PingFrame:
				if !f.IsAck() {
					pings++
					if err := fr.WritePing(true, f.Data); err != nil {
						t.Fatal(err)
					}
				}
			case *http2.MetaHeadersFrame:
				if f.StreamID == id && f.StreamEnded() {
					if s := f.PseudoValue("status"); s != "" && s != "200" {
						t.Fatalf("call %d: :status %s", i, s)
					}
					for _, hf := range f.RegularFields() {
						if hf.Name == "grpc-status" && hf.Value != "0" {
							t.Fatalf("call %d: grpc-status %s", i, hf.Value)
						}
					}
					done = true
				}
			case *http2.GoAwayFrame:
				t.Fatalf("call %d: GOAWAY %v", i, f.ErrCode)
			}
		}
	}
	if !gotSettings || window != staticStreamWindow {
		t.Errorf("server SETTINGS_INITIAL_WINDOW_SIZE = %d (settings seen: %v), want %d", window, gotSettings, staticStreamWindow)
	}
	if pings != 0 {
		t.Errorf("%d PINGs from the server over %d unary calls, want none (BDP estimation should be off)", pings, calls)
	}
}
