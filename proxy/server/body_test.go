package server_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	mt "github.com/sidemesh/sidemesh/proxy/internal/meshtest"
)

// hashServer answers with the SHA-256 of the request body, and streams a
// response body of the size asked in ?n= without Content-Length.
func hashServer(t *testing.T) uint32 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		w.Header().Set("X-Body-Sha", hex.EncodeToString(h.Sum(nil)))
		w.Header().Set("X-Body-Len", fmt.Sprint(n))
		w.Header().Set("X-Chunked", fmt.Sprint(len(r.TransferEncoding) > 0))
		if q := r.URL.Query().Get("n"); q != "" {
			var size int
			fmt.Sscan(q, &size)
			chunk := bytes.Repeat([]byte("x"), 1000)
			for size > 0 {
				k := min(size, len(chunk))
				w.Write(chunk[:k])
				w.(http.Flusher).Flush()
				size -= k
			}
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return uint32(ln.Addr().(*net.TCPAddr).Port)
}

func TestRequestAndResponseBodies(t *testing.T) {
	c := mt.StartCP(t)
	up := hashServer(t)
	port := mt.FreePort(t)
	retry := mt.RouteTo("/retry", "svc")
	retry.GetRoute().RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(1)}
	c.Push(t, basicMesh(port, mt.RouteConfig("r", retry, mt.RouteTo("/", "svc")), []*clusterv3.Cluster{mt.EDSCluster("svc")}, mt.CLA("svc", mt.EP{Port: up})))
	runProxy(t, c, false)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	mt.Eventually(t, "proxy serving", func() bool { code, _, _ := mt.Get(t, base, nil); return code == 200 })
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	sum := sha256.Sum256(big)
	want := hex.EncodeToString(sum[:])
	for _, tc := range []struct {
		name    string
		path    string
		body    io.Reader
		chunked bool
	}{
		{"content-length", "/up", bytes.NewReader(big), false},
		{"chunked", "/up", io.MultiReader(bytes.NewReader(big)), true}, // unknown length → chunked
		{"buffered for retry", "/retry", bytes.NewReader(big[:32<<10]), false},
		{"too big to buffer", "/retry", bytes.NewReader(big), false},
	} {
		req, _ := http.NewRequest("POST", base+tc.path, tc.body)
		if tc.chunked {
			req.ContentLength = -1
		}
		res, err := mt.Client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		exp := want
		if tc.name == "buffered for retry" {
			s := sha256.Sum256(big[:32<<10])
			exp = hex.EncodeToString(s[:])
		}
		if res.StatusCode != 200 || res.Header.Get("X-Body-Sha") != exp {
			t.Fatalf("%s: status %d, upstream saw %s bytes (sha %s)", tc.name, res.StatusCode, res.Header.Get("X-Body-Len"), res.Header.Get("X-Body-Sha"))
		}
		if tc.chunked && res.Header.Get("X-Chunked") != "true" {
			t.Fatalf("chunked request was not forwarded chunked")
		}
	}
	// A streamed response without Content-Length arrives whole.
	res, err := mt.Client.Get(base + "/down?n=300000")
	if err != nil {
		t.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if n != 300000 {
		t.Fatalf("streamed response: %d bytes, want 300000", n)
	}
	// HEAD has no body even though the upstream would send one.
	req, _ := http.NewRequest("HEAD", base+"/down?n=5000", nil)
	if res, err := mt.Client.Do(req); err != nil || res.StatusCode != 200 {
		t.Fatalf("HEAD: %v %v", res, err)
	} else {
		res.Body.Close()
	}
	if code, _, _ := mt.Get(t, base+"/after-head", nil); code != 200 {
		t.Fatalf("request after HEAD: %d", code)
	}
}
