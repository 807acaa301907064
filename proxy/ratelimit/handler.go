package ratelimit

import (
	"net/http"
	"strconv"
	"strings"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
)

// Handler wraps next: each request is checked with the route that
// routeOf returns; a denied request is answered here, an allowed one goes
// on with the RLS request headers and gets the response headers.
func (f *Filter) Handler(next http.Handler, routeOf func(*http.Request) RouteInfo) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := f.Check(r.Context(), r, routeOf(r))
		if d.Deny {
			WriteDenied(w, d)
			return
		}
		for k, vs := range d.RequestHeaders {
			r.Header[k] = append(r.Header[k], vs...)
		}
		for k, vs := range d.ResponseHeaders {
			w.Header()[k] = append(w.Header()[k], vs...)
		}
		next.ServeHTTP(w, r)
	})
}

// WriteDenied writes the local reply for a denied request: the HTTP status,
// or for gRPC a trailers-only response with grpc-status.
func WriteDenied(w http.ResponseWriter, d Decision) {
	h := w.Header()
	for k, vs := range d.ResponseHeaders {
		h[k] = append(h[k], vs...)
	}
	if d.GRPCStatus != 0 {
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", strconv.Itoa(int(d.GRPCStatus)))
		msg := "Too Many Requests"
		if d.Outcome == Error {
			msg = "Rate limit service error"
		}
		h.Set("Grpc-Message", msg)
		w.WriteHeader(http.StatusOK)
		return
	}
	h.Set("Content-Type", "text/plain")
	w.WriteHeader(d.Status)
	if d.Outcome == OverLimit {
		_, _ = w.Write([]byte("Too Many Requests\n"))
	}
}

// Dial opens the one gRPC connection a proxy shares for an RLS cluster:
// round robin over addrs (host:port), one HTTP/2 connection each, all
// requests multiplexed. Factory does the same and follows EDS changes.
func Dial(addrs []string, opts ...grpc.DialOption) (*grpc.ClientConn, rlsv3.RateLimitServiceClient, error) {
	var clean []string
	for _, a := range addrs {
		if a = strings.TrimSpace(a); a != "" {
			clean = append(clean, a)
		}
	}
	_, conn, err := dialRLS("rls", clean, opts...)
	if err != nil {
		return nil, nil, err
	}
	return conn, rlsv3.NewRateLimitServiceClient(conn), nil
}
