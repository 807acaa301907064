package healthcheck

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/sidemesh/sidemesh/proxy/internal/strmatch"
)

type statusRange struct{ start, end int } // [start, end)

type httpProber struct {
	method, path, host string
	body               []byte
	add                []*corev3.HeaderValueOption
	remove             []string
	expected           []statusRange
	retriable          []statusRange
	receive            [][]byte
	bufSize            int64
	serviceName        func(string) bool
	tr                 *http.Transport
	client             *http.Client
}

func newHTTPProber(hc *corev3.HealthCheck, dialer *net.Dialer) (*httpProber, error) {
	h := hc.GetHttpHealthCheck()
	p := &httpProber{path: h.GetPath(), host: h.GetHost(), add: h.GetRequestHeadersToAdd(), remove: h.GetRequestHeadersToRemove(), bufSize: 1024}
	switch m := h.GetMethod(); m {
	case corev3.RequestMethod_METHOD_UNSPECIFIED:
		p.method = http.MethodGet
	case corev3.RequestMethod_CONNECT:
		return nil, errors.New("http_health_check.method: CONNECT is not allowed")
	default:
		p.method = m.String()
	}
	var err error
	if p.expected, err = ranges(h.GetExpectedStatuses(), "expected_statuses"); err != nil {
		return nil, err
	}
	if len(p.expected) == 0 {
		p.expected = []statusRange{{200, 201}}
	}
	if p.retriable, err = ranges(h.GetRetriableStatuses(), "retriable_statuses"); err != nil {
		return nil, err
	}
	if v := h.GetResponseBufferSize(); v != nil {
		p.bufSize = int64(v.GetValue())
	}
	if s := h.GetSend(); s != nil {
		if p.body, err = payload(s); err != nil {
			return nil, fmt.Errorf("http_health_check.send: %w", err)
		}
		switch p.method {
		case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodOptions:
		default:
			return nil, fmt.Errorf("http_health_check.send: a body needs method POST, PUT, PATCH or OPTIONS, not %s", p.method)
		}
	}
	total := 0
	for i, r := range h.GetReceive() {
		b, err := payload(r)
		if err != nil {
			return nil, fmt.Errorf("http_health_check.receive[%d]: %w", i, err)
		}
		total += len(b)
		p.receive = append(p.receive, b)
	}
	if p.bufSize > 0 && int64(total) > p.bufSize {
		return nil, fmt.Errorf("http_health_check.receive: %d bytes exceed response_buffer_size %d", total, p.bufSize)
	}
	if m := h.GetServiceNameMatcher(); m != nil {
		if p.serviceName, err = strmatch.Compile(m); err != nil {
			return nil, fmt.Errorf("http_health_check.service_name_matcher: %w", err)
		}
	}
	var protos http.Protocols
	switch h.GetCodecClientType() {
	case typev3.CodecClientType_HTTP1:
		protos.SetHTTP1(true)
	case typev3.CodecClientType_HTTP2:
		protos.SetUnencryptedHTTP2(true) // h2c with prior knowledge
	default:
		return nil, fmt.Errorf("http_health_check.codec_client_type: %s is not supported", h.GetCodecClientType())
	}
	reuse := hc.GetReuseConnection() == nil || hc.GetReuseConnection().GetValue()
	p.tr = &http.Transport{
		DialContext:         dialer.DialContext,
		Protocols:           &protos,
		DisableKeepAlives:   !reuse,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     5 * time.Minute,
		DisableCompression:  true,
	}
	p.client = &http.Client{Transport: p.tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return p, nil
}

func ranges(rs []*typev3.Int64Range, field string) ([]statusRange, error) {
	out := make([]statusRange, 0, len(rs))
	for i, r := range rs {
		if r.GetStart() < 100 || r.GetEnd() > 600 || r.GetStart() >= r.GetEnd() {
			return nil, fmt.Errorf("http_health_check.%s[%d]: range [%d,%d) must lie within [100,600) with start < end", field, i, r.GetStart(), r.GetEnd())
		}
		out = append(out, statusRange{int(r.GetStart()), int(r.GetEnd())})
	}
	return out, nil
}

func inRanges(rs []statusRange, code int) bool {
	for _, r := range rs {
		if code >= r.start && code < r.end {
			return true
		}
	}
	return false
}

// payload decodes a HealthCheck.Payload: text is hex, binary is raw.
func payload(p *corev3.HealthCheck_Payload) ([]byte, error) {
	switch v := p.GetPayload().(type) {
	case *corev3.HealthCheck_Payload_Text:
		b, err := hex.DecodeString(v.Text)
		if err != nil {
			return nil, fmt.Errorf("text is not hex: %w", err)
		}
		return b, nil
	case *corev3.HealthCheck_Payload_Binary:
		return v.Binary, nil
	}
	return nil, errors.New("payload: text or binary required")
}

// containsInOrder is Envoy's "fuzzy" receive match: every chunk appears,
// in order, anywhere in buf.
func containsInOrder(buf []byte, chunks [][]byte) bool {
	for _, c := range chunks {
		i := bytes.Index(buf, c)
		if i < 0 {
			return false
		}
		buf = buf[i+len(c):]
	}
	return true
}

func (p *httpProber) probe(ctx context.Context, t Target) Result {
	var body io.Reader
	if p.body != nil {
		body = bytes.NewReader(p.body)
	}
	req, err := http.NewRequestWithContext(ctx, p.method, "http://"+t.Addr+p.path, body)
	if err != nil {
		return Result{Kind: FailNetwork, Err: err}
	}
	switch {
	case t.Hostname != "":
		req.Host = t.Hostname
	case p.host != "":
		req.Host = p.host
	default:
		req.Host = t.Cluster
	}
	req.Header.Set("User-Agent", "Envoy/HC")
	for _, o := range p.add {
		k, v := o.GetHeader().GetKey(), o.GetHeader().GetValue()
		if v == "" && len(o.GetHeader().GetRawValue()) > 0 {
			v = string(o.GetHeader().GetRawValue())
		}
		if o.GetAppendAction() == corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
			req.Header.Add(k, v)
		} else {
			req.Header.Set(k, v)
		}
	}
	for _, k := range p.remove {
		req.Header.Del(k)
		if http.CanonicalHeaderKey(k) == "User-Agent" {
			req.Header["User-Agent"] = nil // present but empty: net/http sends none
		}
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return Result{Kind: FailNetwork, Err: err}
	}
	defer resp.Body.Close()
	r := Result{HTTPStatus: resp.StatusCode, Degraded: resp.Header.Get("x-envoy-degraded") != ""}
	var buf []byte
	if len(p.receive) > 0 {
		buf, err = io.ReadAll(io.LimitReader(resp.Body, p.bufSize))
		if err != nil {
			return Result{Kind: FailNetwork, Err: fmt.Errorf("reading body: %w", err)}
		}
	}
	// Drain a little so the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case !inRanges(p.expected, resp.StatusCode):
		r.Kind, r.Retriable = FailActive, inRanges(p.retriable, resp.StatusCode)
		r.Err = fmt.Errorf("unexpected status %d", resp.StatusCode)
	case len(p.receive) > 0 && !containsInOrder(buf, p.receive):
		r.Kind, r.Err = FailActive, errors.New("response body does not contain the expected payload")
	case p.serviceName != nil && !p.serviceName(resp.Header.Get("x-envoy-upstream-healthchecked-cluster")):
		r.Kind, r.Err = FailActive, errors.New("x-envoy-upstream-healthchecked-cluster does not match service_name_matcher")
	}
	return r
}

func (p *httpProber) forget(Target) {} // idle connections time out

func (p *httpProber) close() { p.tr.CloseIdleConnections() }
