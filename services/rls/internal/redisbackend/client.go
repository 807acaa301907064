package redisbackend

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
)

// ClientConfig selects and configures the Redis deployment.
type ClientConfig struct {
	Type       string // single, sentinel or cluster
	URL        string // redis://[user:pass@]host:port/db or rediss:// (TLS)
	Addrs      []string
	MasterName string // sentinel
	Username   string
	Password   string
	// SentinelUsername/Password authenticate to the sentinels themselves.
	SentinelUsername string
	SentinelPassword string
	TLS              bool
	TLSCA            string
	TLSCert          string
	TLSKey           string
	TLSServerName    string
	TLSSkipVerify    bool
	PoolSize         int
	Timeout          time.Duration
}

// NewClient builds the client; cluster reports whether keys must be split
// by hash slot.
func NewClient(c ClientConfig) (client redis.UniversalClient, cluster bool, err error) {
	var tlsCfg *tls.Config
	if c.TLS || c.TLSCA != "" || c.TLSCert != "" || c.TLSSkipVerify {
		if tlsCfg, err = c.tlsConfig(); err != nil {
			return nil, false, err
		}
	}
	dialTimeout := max(c.Timeout, time.Second)
	switch c.Type {
	case "", "single":
		if c.URL == "" {
			return nil, false, errors.New("redis-url: required for redis-type single")
		}
		o, err := redis.ParseURL(c.URL)
		if err != nil {
			return nil, false, fmt.Errorf("redis-url %q: %w", redact(c.URL), err)
		}
		if c.Username != "" {
			o.Username = c.Username
		}
		if c.Password != "" {
			o.Password = c.Password
		}
		if tlsCfg != nil {
			o.TLSConfig = tlsCfg
		}
		o.PoolSize, o.MaxRetries = c.PoolSize, -1
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = dialTimeout, c.Timeout, c.Timeout
		o.ContextTimeoutEnabled = true
		o.DisableIdentity = true
		return redis.NewClient(o), false, nil
	case "sentinel":
		if len(c.Addrs) == 0 || c.MasterName == "" {
			return nil, false, errors.New("redis-type sentinel needs redis-addrs (the sentinels) and redis-sentinel-master")
		}
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: c.MasterName, SentinelAddrs: c.Addrs,
			SentinelUsername: c.SentinelUsername, SentinelPassword: c.SentinelPassword,
			Username: c.Username, Password: c.Password, TLSConfig: tlsCfg,
			PoolSize: c.PoolSize, MaxRetries: -1, DialTimeout: dialTimeout,
			ReadTimeout: c.Timeout, WriteTimeout: c.Timeout, ContextTimeoutEnabled: true, DisableIdentity: true,
		}), false, nil
	case "cluster":
		addrs := c.Addrs
		if len(addrs) == 0 && c.URL != "" {
			u, err := url.Parse(c.URL)
			if err != nil || u.Host == "" {
				return nil, false, fmt.Errorf("redis-url %q: not a valid URL", redact(c.URL))
			}
			addrs = []string{u.Host}
		}
		if len(addrs) == 0 {
			return nil, false, errors.New("redis-type cluster needs redis-addrs (seed nodes)")
		}
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: addrs, Username: c.Username, Password: c.Password, TLSConfig: tlsCfg,
			PoolSize: c.PoolSize, MaxRetries: -1, DialTimeout: dialTimeout,
			ReadTimeout: c.Timeout, WriteTimeout: c.Timeout, ContextTimeoutEnabled: true, DisableIdentity: true,
		}), true, nil
	}
	return nil, false, fmt.Errorf("redis-type %q: must be single, sentinel or cluster", c.Type)
}

func (c ClientConfig) tlsConfig() (*tls.Config, error) {
	t := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.TLSServerName, InsecureSkipVerify: c.TLSSkipVerify} //nolint:gosec // opt-in flag
	if c.TLSCA != "" {
		pem, err := os.ReadFile(c.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("redis-tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("redis-tls-ca %s: no PEM certificates found", c.TLSCA)
		}
		t.RootCAs = pool
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return nil, errors.New("redis-tls-cert and redis-tls-key must be given together")
	}
	if c.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("redis-tls-cert/key: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}

// redact hides a password in a URL for error messages.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
