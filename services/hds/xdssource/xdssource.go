// Package xdssource learns the clusters HDS must check from an xDS server:
// it is an ADS client (state of the world, CDS then EDS for the clusters it
// needs) whose node carries metadata role=hds, so the controlplane sends it
// the Cluster.health_checks it withholds from proxies. Clusters with
// health_checks set are the ones to check.
package xdssource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sidemesh/sidemesh/services/hds/catalog"
)

// Type URLs.
const (
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// Source is a catalog.Source backed by ADS.
type Source struct {
	Addr       string // host:port of the xDS server
	NodeID     string
	Cluster    string // xDS node cluster; default "sidemesh-hds"
	Zone       string
	Log        *slog.Logger
	MaxBackoff time.Duration // default 5 s
	DialOpts   []grpc.DialOption
}

// Run implements catalog.Source: it reconnects with jittered backoff and
// keeps the last good catalog while disconnected.
func (s *Source) Run(ctx context.Context, update func(*catalog.Snapshot)) error {
	log := s.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	maxB := s.MaxBackoff
	if maxB <= 0 {
		maxB = 5 * time.Second
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, s.DialOpts...)
	conn, err := grpc.NewClient(s.Addr, opts...)
	if err != nil {
		return fmt.Errorf("xds %s: %w", s.Addr, err)
	}
	defer conn.Close()
	client := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	st := newStream(s, log, update)
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		err := st.run(ctx, client)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		wait := time.Duration(rand.Int64N(int64(backoff))) + backoff/2
		log.Warn("xds stream ended; reconnecting", "addr", s.Addr, "err", err, "in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		backoff = min(backoff*2, maxB)
	}
}

// stream holds what survives reconnects: the last good resources.
type stream struct {
	src      *Source
	log      *slog.Logger
	update   func(*catalog.Snapshot)
	clusters map[string]*clusterv3.Cluster // with health checks
	allEDS   []string                      // EDS names of every cluster
	cdsVer   string
	cla      map[string]*endpointv3.ClusterLoadAssignment
	edsVer   string
}

func newStream(s *Source, log *slog.Logger, update func(*catalog.Snapshot)) *stream {
	return &stream{src: s, log: log, update: update, clusters: map[string]*clusterv3.Cluster{}, cla: map[string]*endpointv3.ClusterLoadAssignment{}}
}

func (st *stream) node() *corev3.Node {
	cl := st.src.Cluster
	if cl == "" {
		cl = "sidemesh-hds"
	}
	n := &corev3.Node{
		Id: st.src.NodeID, Cluster: cl,
		Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{"role": structpb.NewStringValue("hds")}},
	}
	if st.src.Zone != "" {
		n.Locality = &corev3.Locality{Zone: st.src.Zone}
	}
	return n
}

// edsNames are the EDS service names to subscribe to: those of every EDS
// cluster, as Envoy would request them (go-control-plane's ADS cache only
// answers requests that name all of a node's assignments), though only the
// health-checked clusters' endpoints are used.
func (st *stream) edsNames() []string { return st.allEDS }

func isEDS(c *clusterv3.Cluster) bool {
	return c.GetType() == clusterv3.Cluster_EDS || c.GetEdsClusterConfig() != nil
}

func (st *stream) missingEDS() bool {
	for _, c := range st.clusters {
		if !isEDS(c) {
			continue
		}
		n := edsName(c)
		if _, ok := st.cla[n]; !ok {
			return true
		}
	}
	return false
}

func edsName(c *clusterv3.Cluster) string {
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		return n
	}
	return c.GetName()
}

func (st *stream) run(ctx context.Context, client discoveryv3.AggregatedDiscoveryServiceClient) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ads, err := client.StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	// Resume with what we hold, so the server need not resend unchanged
	// state (and so the node is on the first request of each type).
	if err := ads.Send(&discoveryv3.DiscoveryRequest{Node: st.node(), TypeUrl: ClusterType, VersionInfo: st.cdsVer}); err != nil {
		return err
	}
	var eds []string
	edsNonce := ""
	sendEDS := func(names []string, ver, nonce string, nack error) error {
		req := &discoveryv3.DiscoveryRequest{Node: st.node(), TypeUrl: EndpointType, ResourceNames: names, VersionInfo: ver, ResponseNonce: nonce}
		if nack != nil {
			req.ErrorDetail = &status.Status{Code: 3, Message: nack.Error()}
		}
		return ads.Send(req)
	}
	if names := st.edsNames(); len(names) > 0 {
		eds = names
		if err := sendEDS(eds, st.edsVer, "", nil); err != nil {
			return err
		}
	}
	for {
		resp, err := ads.Recv()
		if err != nil {
			return err
		}
		switch resp.GetTypeUrl() {
		case ClusterType:
			nack := st.applyCDS(resp)
			req := &discoveryv3.DiscoveryRequest{Node: st.node(), TypeUrl: ClusterType, VersionInfo: st.cdsVer, ResponseNonce: resp.GetNonce()}
			if nack != nil {
				st.log.Error("xds: rejected clusters (NACK), keeping the last good set", "version", resp.GetVersionInfo(), "err", nack)
				req.ErrorDetail = &status.Status{Code: 3, Message: nack.Error()}
			}
			if err := ads.Send(req); err != nil {
				return err
			}
			if names := st.edsNames(); !slices.Equal(names, eds) {
				eds = names
				if err := sendEDS(eds, st.edsVer, edsNonce, nil); err != nil {
					return err
				}
			}
			if st.missingEDS() {
				// Wait for the endpoints rather than publish clusters that
				// look empty for a moment.
				continue
			}
		case EndpointType:
			edsNonce = resp.GetNonce()
			nack := st.applyEDS(resp)
			if nack != nil {
				st.log.Error("xds: rejected endpoints (NACK), keeping the last good set", "version", resp.GetVersionInfo(), "err", nack)
			}
			if err := sendEDS(eds, st.edsVer, edsNonce, nack); err != nil {
				return err
			}
		default:
			st.log.Warn("xds: unexpected resource type", "type", resp.GetTypeUrl())
			continue
		}
		st.publish()
	}
}

func (st *stream) applyCDS(resp *discoveryv3.DiscoveryResponse) error {
	next := map[string]*clusterv3.Cluster{}
	var all []string
	var errs []error
	for _, a := range resp.GetResources() {
		c := &clusterv3.Cluster{}
		if err := a.UnmarshalTo(c); err != nil {
			errs = append(errs, fmt.Errorf("cluster resource: %w", err))
			continue
		}
		if err := c.ValidateAll(); err != nil {
			errs = append(errs, fmt.Errorf("cluster %s: %w", c.GetName(), err))
			continue
		}
		if isEDS(c) {
			all = append(all, edsName(c))
		}
		if len(c.GetHealthChecks()) == 0 {
			continue
		}
		if _, _, err := catalog.NormalizeHealthCheck(c.GetHealthChecks()[0]); err != nil {
			errs = append(errs, fmt.Errorf("cluster %s: %w", c.GetName(), err))
			continue
		}
		next[c.GetName()] = c
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	slices.Sort(all)
	st.clusters, st.allEDS = next, slices.Compact(all)
	for name := range st.cla {
		if _, ok := slices.BinarySearch(st.allEDS, name); !ok {
			delete(st.cla, name) // no cluster refers to it any more
		}
	}
	st.cdsVer = resp.GetVersionInfo()
	return nil
}

func (st *stream) applyEDS(resp *discoveryv3.DiscoveryResponse) error {
	next := map[string]*endpointv3.ClusterLoadAssignment{}
	var errs []error
	for _, a := range resp.GetResources() {
		cla := &endpointv3.ClusterLoadAssignment{}
		if err := a.UnmarshalTo(cla); err != nil {
			errs = append(errs, fmt.Errorf("endpoint resource: %w", err))
			continue
		}
		if err := cla.ValidateAll(); err != nil {
			errs = append(errs, fmt.Errorf("endpoints %s: %w", cla.GetClusterName(), err))
			continue
		}
		next[cla.GetClusterName()] = cla
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	// SotW EDS is not a wildcard type: a response may carry only the
	// assignments that changed (the xDS spec allows it for EDS and RDS), so
	// merge into what we hold. Assignments no longer subscribed are pruned
	// by applyCDS.
	for name, cla := range next {
		st.cla[name] = cla
	}
	st.edsVer = resp.GetVersionInfo()
	return nil
}

func (st *stream) publish() {
	snap := &catalog.Snapshot{Version: "cds:" + st.cdsVer + "/eds:" + st.edsVer}
	for name, c := range st.clusters {
		hc, p, err := catalog.NormalizeHealthCheck(c.GetHealthChecks()[0])
		if err != nil {
			continue // validated on receipt
		}
		if len(c.GetHealthChecks()) > 1 {
			st.log.Warn("xds: cluster has several health checks; HDS uses the first", "cluster", name)
		}
		cla := c.GetLoadAssignment()
		if isEDS(c) {
			cla = st.cla[edsName(c)]
		}
		eps, skipped := catalog.FromLoadAssignment(name, cla)
		for _, e := range skipped {
			st.log.Warn("xds: endpoint not checkable", "err", e)
		}
		snap.Clusters = append(snap.Clusters, catalog.Cluster{
			Name: name, HealthCheck: hc, Protocol: p, Endpoints: eps, TransportSocketMatches: c.GetTransportSocketMatches(),
		})
	}
	snap.Sort()
	n := 0
	for _, c := range snap.Clusters {
		n += len(c.Endpoints)
	}
	st.log.Debug("xds: catalog updated", "version", snap.Version, "clusters", len(snap.Clusters), "endpoints", n, "names", strings.Join(st.edsNames(), ","))
	st.update(snap)
}
