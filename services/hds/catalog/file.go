package catalog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"gopkg.in/yaml.v3"
)

// fileDoc is the static clusters file (for tests and xDS-less setups).
type fileDoc struct {
	Clusters []fileCluster `yaml:"clusters"`
}

type fileCluster struct {
	Name        string         `yaml:"name"`
	HealthCheck fileCheck      `yaml:"health_check"`
	Endpoints   []fileEndpoint `yaml:"endpoints"`
}

type fileCheck struct {
	Protocol           string        `yaml:"protocol"` // http (default), tcp, grpc
	Path               string        `yaml:"path"`
	Host               string        `yaml:"host"`
	ServiceName        string        `yaml:"service_name"`
	Interval           time.Duration `yaml:"interval"`
	Timeout            time.Duration `yaml:"timeout"`
	InitialJitter      time.Duration `yaml:"initial_jitter"`
	UnhealthyThreshold uint32        `yaml:"unhealthy_threshold"`
	HealthyThreshold   uint32        `yaml:"healthy_threshold"`
	ExpectedStatuses   [][2]int64    `yaml:"expected_statuses"`
}

type fileEndpoint struct {
	Address string `yaml:"address"`
	Port    uint32 `yaml:"port"`
	Region  string `yaml:"region"`
	Zone    string `yaml:"zone"`
}

// ParseFile parses a clusters file. Errors name the cluster and field.
func ParseFile(data []byte) (*Snapshot, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		// Usually a write caught half-way (truncated, not yet written):
		// dropping every cluster on that would be wrong.
		return nil, errors.New("file is empty (write `clusters: []` for no clusters)")
	}
	var doc fileDoc
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	snap := &Snapshot{}
	seen := map[string]bool{}
	for i, fc := range doc.Clusters {
		where := fmt.Sprintf("clusters[%d]", i)
		if fc.Name == "" {
			return nil, fmt.Errorf("%s.name: must not be empty", where)
		}
		where = fmt.Sprintf("clusters[%d] (%s)", i, fc.Name)
		if seen[fc.Name] {
			return nil, fmt.Errorf("%s.name: duplicate cluster name", where)
		}
		seen[fc.Name] = true
		hc, err := fc.HealthCheck.build()
		if err != nil {
			return nil, fmt.Errorf("%s.health_check: %w", where, err)
		}
		nhc, p, err := NormalizeHealthCheck(hc)
		if err != nil {
			return nil, fmt.Errorf("%s.%w", where, err)
		}
		c := Cluster{Name: fc.Name, HealthCheck: nhc, Protocol: p}
		dup := map[EndpointKey]bool{}
		for j, fe := range fc.Endpoints {
			ip, err := ParseIP(fe.Address)
			if err != nil {
				return nil, fmt.Errorf("%s.endpoints[%d].address: %w", where, j, err)
			}
			if fe.Port == 0 || fe.Port > 65535 {
				return nil, fmt.Errorf("%s.endpoints[%d].port: %d is not in 1..65535", where, j, fe.Port)
			}
			k := EndpointKey{Cluster: fc.Name, Address: ip, Port: fe.Port}
			if dup[k] {
				return nil, fmt.Errorf("%s.endpoints[%d]: duplicate endpoint %s", where, j, k)
			}
			dup[k] = true
			var loc *corev3.Locality
			if fe.Zone != "" || fe.Region != "" {
				loc = &corev3.Locality{Region: fe.Region, Zone: fe.Zone}
			}
			c.Endpoints = append(c.Endpoints, Endpoint{Key: k, Locality: loc})
		}
		snap.Clusters = append(snap.Clusters, c)
	}
	snap.Sort()
	return snap, nil
}

func (f fileCheck) build() (*corev3.HealthCheck, error) {
	iv, to := f.Interval, f.Timeout
	if iv == 0 {
		iv = time.Second
	}
	if to == 0 {
		to = time.Second
	}
	if iv < 0 || to < 0 || f.InitialJitter < 0 {
		return nil, errors.New("interval, timeout and initial_jitter must not be negative")
	}
	ut, ht := f.UnhealthyThreshold, f.HealthyThreshold
	if ut == 0 {
		ut = 2
	}
	if ht == 0 {
		ht = 1
	}
	hc := &corev3.HealthCheck{
		Interval:           durationpb.New(iv),
		Timeout:            durationpb.New(to),
		UnhealthyThreshold: wrapperspb.UInt32(ut),
		HealthyThreshold:   wrapperspb.UInt32(ht),
	}
	if f.InitialJitter > 0 {
		hc.InitialJitter = durationpb.New(f.InitialJitter)
	}
	switch strings.ToLower(f.Protocol) {
	case "", "http":
		path := f.Path
		if path == "" {
			path = "/healthz"
		}
		h := &corev3.HealthCheck_HttpHealthCheck{Path: path, Host: f.Host}
		for _, r := range f.ExpectedStatuses {
			h.ExpectedStatuses = append(h.ExpectedStatuses, &typev3.Int64Range{Start: r[0], End: r[1]})
		}
		hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: h}
	case "tcp":
		hc.HealthChecker = &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &corev3.HealthCheck_TcpHealthCheck{}}
	case "grpc":
		hc.HealthChecker = &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{ServiceName: f.ServiceName, Authority: f.Host}}
	default:
		return nil, fmt.Errorf("protocol %q: want http, tcp or grpc", f.Protocol)
	}
	return hc, nil
}

// File is a Source reading a clusters file, re-read when it changes. A bad
// edit keeps the last good snapshot and logs why.
type File struct {
	Path  string
	Poll  time.Duration // how often to look for changes; default 1 s
	Log   *slog.Logger
	first *Snapshot
}

// LoadFile reads and parses path once; use it to fail fast at start.
func LoadFile(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("clusters file: %w", err)
	}
	snap, err := ParseFile(data)
	if err != nil {
		return nil, fmt.Errorf("clusters file %s: %w", path, err)
	}
	snap.Version = "file-1"
	return &File{Path: path, first: snap}, nil
}

// Run implements Source.
func (f *File) Run(ctx context.Context, update func(*Snapshot)) error {
	log := f.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	poll := f.Poll
	if poll <= 0 {
		poll = time.Second
	}
	last, _ := os.ReadFile(f.Path)
	version := 1
	if f.first != nil {
		update(f.first)
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		data, err := os.ReadFile(f.Path)
		if err != nil || bytes.Equal(data, last) {
			continue
		}
		last = data
		snap, err := ParseFile(data)
		if err != nil {
			log.Error("clusters file reload failed, keeping the last good one", "file", f.Path, "err", err)
			continue
		}
		version++
		snap.Version = fmt.Sprintf("file-%d", version)
		log.Info("clusters file reloaded", "file", f.Path, "clusters", len(snap.Clusters))
		update(snap)
	}
}
