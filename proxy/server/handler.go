package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sidemesh/sidemesh/proxy/cluster"
	"github.com/sidemesh/sidemesh/proxy/route"
)

// maxRetryBody is the largest request body buffered so it can be re-sent on
// a retry; bigger bodies are streamed and not retried.
const maxRetryBody = 64 << 10

type httpHandler struct {
	p *Proxy
	l *liveListener
}

// hop-by-hop headers (RFC 9110 §7.6.1) are never forwarded.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// reqInfo is what the access log and stats need about one request.
type reqInfo struct {
	start    time.Time
	code     int
	flags    string
	cluster  string
	upstream string
	route    *route.Route
	vhost    *route.VirtualHost
	upTime   time.Duration
	sent     int64
}

func (h *httpHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := h.l.state.Load()
	hcm := st.cfg.hcm
	if hcm == nil {
		// Several filter chains: select by the connection's addresses in
		// the config this request runs on.
		local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		k := connKey{}
		if local != nil {
			k = keyOf(local, addrString(r.RemoteAddr))
		}
		c := st.cfg.pick(k)
		if c == nil || c.hcm == nil {
			// The connection matches no chain of the current config:
			// Envoy closes such connections.
			panic(http.ErrAbortHandler)
		}
		hcm = c.hcm
	}
	ri := reqInfo{start: time.Now()}
	h.serve(w, r, st, hcm, &ri)
	hcm.stats.Rq.Inc(ri.code)
	hcm.stats.RqTime.Observe(float64(time.Since(ri.start).Microseconds()) / 1000)
	if h.p.opt.AccessLog != nil {
		h.p.accessLog(r, &ri, hcm.statPrefix)
	}
}

func (h *httpHandler) serve(w http.ResponseWriter, r *http.Request, st *lstate, hcm *hcmConfig, ri *reqInfo) {
	table := hcm.inline
	if table == nil {
		table = st.snap.Routes[hcm.rdsName]
	}
	if table == nil {
		ri.flags = "NR"
		h.localReply(w, r, ri, http.StatusNotFound, "")
		return
	}
	vh, rt := table.Match(r)
	if rt == nil {
		ri.flags = "NR"
		h.localReply(w, r, ri, http.StatusNotFound, "")
		return
	}
	ri.route, ri.vhost = rt, vh
	switch rt.Action {
	case route.ActionRedirect:
		h.redirect(w, r, ri, rt)
		return
	case route.ActionDirect:
		h.applyResponseHeaders(w.Header(), table, vh, rt, nil)
		ri.code = rt.DirectStatus
		if rt.DirectBody != "" {
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Content-Length", strconv.Itoa(len(rt.DirectBody)))
		}
		w.WriteHeader(rt.DirectStatus)
		io.WriteString(w, rt.DirectBody)
		h.routeStats(ri)
		return
	}
	wc := rt.PickCluster(r)
	if wc == nil {
		ri.flags = "NC"
		h.localReply(w, r, ri, http.StatusServiceUnavailable, "")
		h.routeStats(ri)
		return
	}
	ri.cluster = wc.Name
	cl := st.snap.Clusters[wc.Name]
	if cl == nil {
		ri.flags = "NC"
		h.localReply(w, r, ri, http.StatusServiceUnavailable, "")
		h.routeStats(ri)
		return
	}
	if hcm.chain != nil {
		sw := &statusWriter{ResponseWriter: w}
		info := &RouteInfo{VirtualHost: vh.Proto, Route: rt.Proto, Cluster: wc.Name,
			next: func(w http.ResponseWriter, r *http.Request) { h.forward(w, r, st, hcm, ri, table, vh, rt, wc, cl) }}
		hcm.chain.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), routeKey{}, info)))
		if ri.code == 0 {
			ri.code = sw.code // a filter answered
		}
		h.routeStats(ri)
		return
	}
	h.forward(w, r, st, hcm, ri, table, vh, rt, wc, cl)
	h.routeStats(ri)
}

func (h *httpHandler) routeStats(ri *reqInfo) {
	if ri.route != nil && ri.route.Stats != nil {
		ri.route.Stats.Inc(ri.code)
	}
}

// forward proxies the request to cl with retries and timeouts.
func (h *httpHandler) forward(w http.ResponseWriter, r *http.Request, st *lstate, hcm *hcmConfig, ri *reqInfo, table *route.Table, vh *route.VirtualHost, rt *route.Route, wc *route.WeightedCluster, cl *cluster.Cluster) {
	upgrade := ""
	if r.ProtoMajor == 1 && r.Header.Get("Upgrade") != "" && headerHasToken(r.Header, "Connection", "upgrade") {
		upgrade = strings.ToLower(r.Header.Get("Upgrade"))
		// The HCM must list the upgrade type; a route may turn it on or off.
		hcmVal, listed := hcm.upgrades[upgrade]
		allowed := listed && hcmVal
		if v, ok := rt.Upgrades[upgrade]; ok && listed {
			allowed = v
		}
		if !allowed {
			ri.flags = "UPE"
			h.localReply(w, r, ri, http.StatusForbidden, "upgrade not allowed")
			return
		}
	}
	// Outgoing headers.
	// The request's own header map becomes the upstream's unless it carries
	// hop-by-hop headers: net/http still reads those (e.g. Connection) after
	// the handler, so then a copy is edited instead.
	out := r.Header
	if hasHopHeader(r.Header) {
		out = make(http.Header, len(r.Header)+4)
		for k, v := range r.Header {
			out[k] = v
		}
	}
	te := r.Header.Get("Te")
	for _, k := range hopHeaders {
		delete(out, k)
	}
	if c := r.Header["Connection"]; len(c) > 0 {
		for _, v := range c {
			for _, f := range strings.Split(v, ",") {
				if f = textproto(f); f != "" {
					delete(out, f)
				}
			}
		}
	}
	if strings.Contains(te, "trailers") {
		out["Te"] = []string{"trailers"} // gRPC needs it end to end
	}
	if upgrade != "" {
		out["Connection"] = []string{"Upgrade"}
		out["Upgrade"] = r.Header["Upgrade"]
	}
	if hcm.genReqID && len(out["X-Request-Id"]) == 0 {
		out["X-Request-Id"] = []string{newRequestID()}
	}
	if hcm.useRemote && !hcm.skipXFF {
		if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
			if prior := out["X-Forwarded-For"]; len(prior) > 0 {
				out["X-Forwarded-For"] = []string{strings.Join(prior, ", ") + ", " + ip}
			} else {
				out["X-Forwarded-For"] = []string{ip}
			}
		}
	}
	if len(out["X-Forwarded-Proto"]) == 0 {
		out["X-Forwarded-Proto"] = []string{"http"}
	}
	if !table.Headers.Empty() {
		table.Headers.ApplyRequest(out)
	}
	if !vh.Headers.Empty() {
		vh.Headers.ApplyRequest(out)
	}
	if !rt.Headers.Empty() {
		rt.Headers.ApplyRequest(out)
	}
	if !wc.Headers.Empty() {
		wc.Headers.ApplyRequest(out)
	}
	host := r.Host
	if rt.HostRewrite != "" {
		host = rt.HostRewrite
	}
	path := r.URL.Path
	rawPath := r.URL.RawPath
	if rt.PrefixRewrite != "" || rt.RegexRewrite != nil {
		path = rt.RewritePath(r.URL.Path)
		rawPath = ""
		if r.URL.Path != path {
			out["X-Envoy-Original-Path"] = []string{r.URL.Path}
		}
	}
	hash, hasHash := requestHash(r, rt)

	// Timeouts: the route timeout covers all tries.
	ctx := r.Context()
	timeout := rt.Timeout
	if v := r.Header.Get("X-Envoy-Upstream-Rq-Timeout-Ms"); v != "" {
		if ms, err := strconv.Atoi(v); err == nil && ms >= 0 {
			timeout = time.Duration(ms) * time.Millisecond
		}
	}
	if upgrade != "" {
		timeout = 0 // a WebSocket lives as long as it lives
	}
	var cancel context.CancelFunc
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	rp := rt.Retry
	perTry := time.Duration(0)
	if rp != nil {
		perTry = rp.PerTryTimeout
	}
	exp := timeout
	if perTry > 0 && (exp == 0 || perTry < exp) {
		exp = perTry
	}
	if exp > 0 {
		out["X-Envoy-Expected-Rq-Timeout-Ms"] = []string{strconv.FormatInt(exp.Milliseconds(), 10)}
	}

	// Bodies are buffered only when a retry may need them again.
	var body []byte
	canRetry := rp != nil && rp.NumRetries > 0 && upgrade == ""
	if canRetry && r.Body != nil && r.Body != http.NoBody {
		if r.ContentLength >= 0 && r.ContentLength <= maxRetryBody {
			b, err := io.ReadAll(io.LimitReader(r.Body, maxRetryBody+1))
			if err != nil {
				ri.flags = "DPE"
				h.localReply(w, r, ri, http.StatusBadRequest, "failed to read request body")
				return
			}
			body = b
		} else {
			canRetry = false
		}
	}
	if !cl.Acquire() {
		ri.flags = "UO"
		w.Header().Set("X-Envoy-Overloaded", "true")
		h.localReply(w, r, ri, http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: overflow")
		return
	}
	defer cl.Release()
	cl.Stats.RqActive.Inc()
	defer cl.Stats.RqActive.Dec()

	var prev *cluster.Host
	retries := 0
	for attempt := 0; ; attempt++ {
		hst := cl.Pick(hash, hasHash, prev)
		if hst == nil {
			cl.Stats.NoHealthy.Inc()
			ri.flags = "UH"
			h.localReply(w, r, ri, http.StatusServiceUnavailable, "no healthy upstream")
			return
		}
		ri.upstream = hst.Addr
		u := &url.URL{Scheme: "http", Host: hst.Addr, Path: path, RawPath: rawPath, RawQuery: r.URL.RawQuery}
		tctx, tcancel := ctx, context.CancelFunc(nil)
		if perTry > 0 {
			tctx, tcancel = context.WithTimeout(ctx, perTry)
		}
		oreq := &http.Request{Method: r.Method, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: out, Host: host, ContentLength: r.ContentLength}
		if rt.AutoHost {
			oreq.Host = hst.Addr
		}
		switch {
		case body != nil:
			oreq.Body = io.NopCloser(bytes.NewReader(body))
			oreq.ContentLength = int64(len(body))
			oreq.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		case r.Body != nil && r.Body != http.NoBody && attempt == 0:
			oreq.Body = r.Body
		default:
			oreq.ContentLength = 0
		}
		if r.ContentLength == -1 && oreq.Body != nil && body == nil {
			oreq.ContentLength = -1
		}
		oreq = oreq.WithContext(tctx)
		if len(rt.Mirrors) > 0 && attempt == 0 {
			h.mirror(st.snap, rt, oreq, body)
		}
		pendingHeld := false
		if cl.TracksPending() {
			if !cl.AcquirePending() {
				if tcancel != nil {
					tcancel()
				}
				ri.flags = "UO"
				w.Header().Set("X-Envoy-Overloaded", "true")
				h.localReply(w, r, ri, http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: overflow")
				return
			}
			pendingHeld = true
		}
		cl.Begin(hst)
		t0 := time.Now()
		res, err := cl.RoundTrip(oreq, upgrade != "")
		if pendingHeld {
			cl.ReleasePending()
		}
		ri.upTime = time.Since(t0)
		code := 0
		grpcStatus := ""
		if err == nil {
			code = res.StatusCode
			if g := res.Header["Grpc-Status"]; len(g) > 0 {
				grpcStatus = g[0]
			}
		}
		cl.End(hst, code)
		perTryFired := err != nil && tctx.Err() == context.DeadlineExceeded && ctx.Err() == nil
		if perTryFired {
			cl.Stats.PerTryTimeout.Inc()
		}
		// Decide on a retry.
		retry := false
		if canRetry && retries < rp.NumRetries && ctx.Err() == nil {
			if err != nil {
				var ce *cluster.ConnectError
				retry = rp.RetryError(errors.As(err, &ce), perTryFired)
			} else {
				retry = rp.RetryStatus(code, grpcStatus)
			}
		}
		if retry && !cl.AcquireRetry() {
			retry = false
		}
		if !retry {
			if err != nil {
				if tcancel != nil {
					tcancel()
				}
				h.upstreamError(w, r, ri, cl, err, ctx, perTryFired)
				return
			}
			if retries > 0 {
				cl.Stats.RetryOK.Inc()
			}
			cl.Stats.Rq.Inc(code)
			cl.Stats.RqTime.Observe(float64(ri.upTime.Microseconds()) / 1000)
			h.writeResponse(w, r, ri, res, table, vh, rt, wc, upgrade)
			if tcancel != nil {
				tcancel()
			}
			return
		}
		// Retrying: throw this response away.
		if err == nil {
			cl.Stats.Rq.Inc(code)
			io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
			res.Body.Close()
		}
		if tcancel != nil {
			tcancel()
		}
		cl.ReleaseRetry()
		cl.Stats.Retry.Inc()
		retries++
		// Prefer another host for the retry (Envoy's previous_hosts
		// predicate); with a single host the same one is used again.
		prev = hst
		select {
		case <-time.After(rp.Backoff(retries)):
		case <-ctx.Done():
			h.upstreamError(w, r, ri, cl, ctx.Err(), ctx, false)
			return
		}
	}
}

// upstreamError answers like Envoy when no upstream response arrived.
func (h *httpHandler) upstreamError(w http.ResponseWriter, r *http.Request, ri *reqInfo, cl *cluster.Cluster, err error, ctx context.Context, perTry bool) {
	var ce *cluster.ConnectError
	switch {
	case ctx.Err() == context.DeadlineExceeded || perTry:
		if ctx.Err() == context.DeadlineExceeded {
			cl.Stats.Timeout.Inc()
		}
		ri.flags = "UT"
		cl.Stats.Rq.Inc(http.StatusGatewayTimeout)
		h.localReply(w, r, ri, http.StatusGatewayTimeout, "upstream request timeout")
	case r.Context().Err() != nil:
		ri.flags = "DC"
		ri.code = 499 // client went away; nothing to write
	case errors.As(err, &ce):
		ri.flags = "UF"
		cl.Stats.Rq.Inc(http.StatusServiceUnavailable)
		h.localReply(w, r, ri, http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection failure")
	default:
		ri.flags = "UR"
		cl.Stats.Rq.Inc(http.StatusServiceUnavailable)
		h.localReply(w, r, ri, http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection termination")
	}
}

func (h *httpHandler) applyResponseHeaders(hd http.Header, table *route.Table, vh *route.VirtualHost, rt *route.Route, wc *route.WeightedCluster) {
	if wc != nil && !wc.Headers.Empty() {
		wc.Headers.ApplyResponse(hd)
	}
	if !rt.Headers.Empty() {
		rt.Headers.ApplyResponse(hd)
	}
	if !vh.Headers.Empty() {
		vh.Headers.ApplyResponse(hd)
	}
	if !table.Headers.Empty() {
		table.Headers.ApplyResponse(hd)
	}
}

func (h *httpHandler) writeResponse(w http.ResponseWriter, r *http.Request, ri *reqInfo, res *http.Response, table *route.Table, vh *route.VirtualHost, rt *route.Route, wc *route.WeightedCluster, upgrade string) {
	defer res.Body.Close()
	wh := w.Header()
	for k, v := range res.Header {
		wh[k] = v
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		for _, k := range hopHeaders {
			delete(wh, k)
		}
	}
	wh["X-Envoy-Upstream-Service-Time"] = []string{strconv.FormatInt(ri.upTime.Milliseconds(), 10)}
	h.applyResponseHeaders(wh, table, vh, rt, wc)
	ri.code = res.StatusCode
	if res.StatusCode == http.StatusSwitchingProtocols {
		h.upgradeConn(w, ri, res)
		return
	}
	if len(res.Trailer) > 0 {
		// Announce trailers so HTTP/1.1 clients get a chunked body with them.
		keys := make([]string, 0, len(res.Trailer))
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		wh["Trailer"] = []string{strings.Join(keys, ", ")}
	}
	w.WriteHeader(res.StatusCode)
	stream := res.ContentLength == -1 || strings.HasPrefix(res.Header.Get("Content-Type"), "application/grpc") || strings.HasPrefix(res.Header.Get("Content-Type"), "text/event-stream")
	bp := bufPool.Get().(*[]byte)
	n, _ := copyBody(w, res.Body, *bp, stream)
	bufPool.Put(bp)
	ri.sent = n
	for k, v := range res.Trailer {
		wh[http.TrailerPrefix+k] = v
	}
}

func copyBody(w http.ResponseWriter, src io.Reader, buf []byte, flush bool) (int64, error) {
	var rc *http.ResponseController
	if flush {
		rc = http.NewResponseController(w)
	}
	var n int64
	for {
		k, err := src.Read(buf)
		if k > 0 {
			m, werr := w.Write(buf[:k])
			n += int64(m)
			if werr != nil {
				return n, werr
			}
			if rc != nil {
				rc.Flush()
			}
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// upgradeConn splices a WebSocket (or other Upgrade) connection.
func (h *httpHandler) upgradeConn(w http.ResponseWriter, ri *reqInfo, res *http.Response) {
	up, ok := res.Body.(io.ReadWriteCloser)
	if !ok {
		ri.code = http.StatusBadGateway
		http.Error(w, "upstream upgrade failed", http.StatusBadGateway)
		return
	}
	defer up.Close()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	res.Body = nil
	if err := res.Write(brw); err != nil {
		return
	}
	if err := brw.Flush(); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, brw); done <- struct{}{} }()
	go func() { io.Copy(conn, up); done <- struct{}{} }()
	<-done
}

func (h *httpHandler) redirect(w http.ResponseWriter, r *http.Request, ri *reqInfo, rt *route.Route) {
	rd := rt.Redirect
	u := *r.URL
	u.Scheme = "http"
	if rd.Scheme != "" {
		u.Scheme = rd.Scheme
	}
	u.Host = r.Host
	if rd.Host != "" {
		u.Host = rd.Host
	}
	if rd.Port != 0 {
		hn := u.Host
		if hh, _, err := net.SplitHostPort(hn); err == nil {
			hn = hh
		}
		u.Host = net.JoinHostPort(hn, strconv.Itoa(int(rd.Port)))
	}
	if rd.Path != "" {
		u.Path, u.RawPath = rd.Path, ""
	} else if rd.PrefixRewrite != "" {
		u.Path, u.RawPath = rt.ReplacePrefix(r.URL.Path, rd.PrefixRewrite), ""
	}
	if rd.StripQuery {
		u.RawQuery = ""
	}
	ri.code = rd.Code
	w.Header().Set("Location", u.String())
	w.WriteHeader(rd.Code)
}

// localReply answers without an upstream, as gRPC when the client speaks gRPC.
func (h *httpHandler) localReply(w http.ResponseWriter, r *http.Request, ri *reqInfo, code int, msg string) {
	ri.code = code
	hd := w.Header()
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		hd.Set("Content-Type", "application/grpc")
		hd.Set("Grpc-Status", strconv.Itoa(grpcStatusFor(code)))
		if msg != "" {
			hd.Set("Grpc-Message", url.PathEscape(msg))
		}
		w.WriteHeader(http.StatusOK)
		return
	}
	if msg != "" {
		hd.Set("Content-Type", "text/plain")
		hd.Set("Content-Length", strconv.Itoa(len(msg)))
	}
	w.WriteHeader(code)
	if msg != "" {
		io.WriteString(w, msg)
	}
}

// grpcStatusFor maps an HTTP status to a gRPC code as Envoy does.
func grpcStatusFor(code int) int {
	switch code {
	case 400:
		return 13
	case 401:
		return 16
	case 403:
		return 7
	case 404:
		return 12
	case 429, 502, 503, 504:
		return 14
	}
	return 2
}

func requestHash(r *http.Request, rt *route.Route) (uint64, bool) {
	if len(rt.HashPolicies) == 0 {
		return 0, false
	}
	var acc uint64
	found := false
	for _, hp := range rt.HashPolicies {
		var v string
		switch {
		case hp.Header != "":
			v = r.Header.Get(hp.Header)
		case hp.SourceIP:
			v, _, _ = net.SplitHostPort(r.RemoteAddr)
		case hp.Query != "":
			v = r.URL.Query().Get(hp.Query)
		case hp.Cookie != "":
			if c, err := r.Cookie(hp.Cookie); err == nil {
				v = c.Value
			}
		}
		if v == "" {
			continue
		}
		acc = acc*31 + cluster.Hash(v)
		found = true
		if hp.Terminal {
			break
		}
	}
	return acc, found
}

// mirror sends a copy of the request to each mirror cluster, fire and forget.
func (h *httpHandler) mirror(snap *Snapshot, rt *route.Route, oreq *http.Request, body []byte) {
	for _, m := range rt.Mirrors {
		if m.Fraction < 1 && rand.Float64() >= m.Fraction {
			continue
		}
		cl := snap.Clusters[m.Cluster]
		if cl == nil {
			continue
		}
		hst := cl.Pick(0, false, nil)
		if hst == nil {
			continue
		}
		u := *oreq.URL
		u.Host = hst.Addr
		mr := &http.Request{Method: oreq.Method, URL: &u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: oreq.Header.Clone(), Host: oreq.Host + "-shadow"}
		if body != nil {
			mr.Body = io.NopCloser(bytes.NewReader(body))
			mr.ContentLength = int64(len(body))
		}
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cl.Begin(hst)
			res, err := cl.RoundTrip(mr.WithContext(ctx), false)
			code := 0
			if err == nil {
				code = res.StatusCode
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
			cl.End(hst, code)
		}()
	}
}

func hasHopHeader(h http.Header) bool {
	for _, k := range hopHeaders {
		if _, ok := h[k]; ok {
			return true
		}
	}
	return false
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h[name] {
		for _, f := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), token) {
				return true
			}
		}
	}
	return false
}

func textproto(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	return http.CanonicalHeaderKey(s)
}

const hexdigits = "0123456789abcdef"

// newRequestID makes a random UUIDv4 without allocating more than the string.
func newRequestID() string {
	var b [36]byte
	a, c := rand.Uint64(), rand.Uint64()
	var raw [16]byte
	for i := 0; i < 8; i++ {
		raw[i] = byte(a >> (8 * i))
		raw[8+i] = byte(c >> (8 * i))
	}
	raw[6] = raw[6]&0x0f | 0x40
	raw[8] = raw[8]&0x3f | 0x80
	j := 0
	for i, x := range raw {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			b[j] = '-'
			j++
		}
		b[j], b[j+1] = hexdigits[x>>4], hexdigits[x&15]
		j += 2
	}
	return string(b[:])
}

// accessLog writes one JSON line (Envoy's default fields, JSON form).
func (p *Proxy) accessLog(r *http.Request, ri *reqInfo, prefix string) {
	routeName := ""
	if ri.route != nil {
		routeName = ri.route.Name
	}
	line := fmt.Sprintf(`{"start_time":%q,"method":%q,"path":%q,"protocol":%q,"response_code":%d,"response_flags":%q,"bytes_received":%d,"bytes_sent":%d,"duration_ms":%d,"upstream_service_time_ms":%d,"x_forwarded_for":%q,"user_agent":%q,"request_id":%q,"authority":%q,"upstream_host":%q,"upstream_cluster":%q,"route_name":%q,"listener":%q}`+"\n",
		ri.start.UTC().Format(time.RFC3339Nano), r.Method, r.URL.RequestURI(), r.Proto, ri.code, ri.flags, max(r.ContentLength, 0), ri.sent,
		time.Since(ri.start).Milliseconds(), ri.upTime.Milliseconds(), r.Header.Get("X-Forwarded-For"), r.UserAgent(),
		r.Header.Get("X-Request-Id"), r.Host, ri.upstream, ri.cluster, routeName, prefix)
	p.accessMu.Lock()
	io.WriteString(p.opt.AccessLog, line)
	p.accessMu.Unlock()
}

// addrString is a net.Addr for an address already formatted as host:port.
type addrString string

func (a addrString) Network() string { return "tcp" }
func (a addrString) String() string  { return string(a) }
