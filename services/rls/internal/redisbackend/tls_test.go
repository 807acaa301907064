package redisbackend

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/redistest"
	"github.com/sidemesh/sidemesh/services/rls/internal/limiter"
	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

// writeCert writes a self-signed CA-and-server certificate for 127.0.0.1.
func writeCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sidemesh-test-redis"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}

// TestTLSAndACL runs the backend over TLS with an ACL user against a real
// redis-server (skipped if this redis-server was built without TLS).
func TestTLSAndACL(t *testing.T) {
	bin, err := redistest.Binary()
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	cert, key := writeCert(t, dir)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "--port", "0", "--tls-port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", cert, "--tls-auth-clients", "no",
		"--user", "default", "off", "--user", "rls", "on", ">s3cret", "~*", "+@all",
		"--save", "", "--appendonly", "no", "--dir", dir, "--logfile", filepath.Join(dir, "redis.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Skipf("redis-server: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	connect := func(user, pass string) (*Redis, error) {
		client, cluster, err := NewClient(ClientConfig{URL: "rediss://127.0.0.1:" + strconv.Itoa(port) + "/0", Username: user, Password: pass,
			TLSCA: cert, PoolSize: 2, Timeout: 2 * time.Second})
		if err != nil {
			return nil, err
		}
		r, err := New(Options{Client: client, Cluster: cluster, Timeout: 2 * time.Second})
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { r.Close(); client.Close() })
		return r, nil
	}
	r, err := connect("rls", "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := r.Ping(context.Background())
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			if strings.Contains(string(log), "TLS") && strings.Contains(string(log), "not") {
				t.Skipf("redis-server without TLS support: %s", log)
			}
			t.Fatalf("TLS ping: %v\n%s", err, log)
		}
		time.Sleep(25 * time.Millisecond)
	}
	it := []limiter.Item{{Key: limiter.Key("tls:", rules.FixedWindow, time.Hour, "d", "k", "v"), Unit: time.Hour, Limit: 2, Hits: 1, Enforce: limiter.Enforced}}
	res := make([]limiter.Result, 1)
	for i, want := range []uint32{1, 0} {
		if err := r.Check(context.Background(), time.Now(), it, res); err != nil || res[0].Remaining != want {
			t.Fatalf("check %d over TLS: %v %+v", i, err, res[0])
		}
	}
	bad, err := connect("rls", "wrong")
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Ping(context.Background()); err == nil {
		t.Fatal("wrong password accepted")
	}
	if _, _, err := NewClient(ClientConfig{URL: "rediss://127.0.0.1:1/0", TLSCA: filepath.Join(dir, "missing.pem")}); err == nil || !strings.Contains(err.Error(), "redis-tls-ca") {
		t.Fatalf("missing CA file: %v", err)
	}
}
