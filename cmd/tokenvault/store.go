package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/etcd"
)

// StoreConfig chooses where records are kept. Without a store block, or
// with kind bolt, they are in one bbolt file in the data dir (one replica).
// With kind etcd, every replica pointing at the same cluster and prefix
// shares one set of connections.
type StoreConfig struct {
	// Kind: bolt (default) or etcd.
	Kind string `yaml:"kind"`
	// Endpoints are the etcd cluster's client URLs.
	Endpoints []string `yaml:"endpoints"`
	// Prefix is put before every key (default "tokenvault/"); applications
	// sharing a cluster each use their own.
	Prefix string `yaml:"prefix"`
	// TLS to reach etcd: the CA that signed its certificates, and a client
	// certificate if etcd asks for one.
	TLS *StoreTLSConfig `yaml:"tls"`
	// Username for etcd's authentication; the password is read from
	// PasswordFile or the environment variable PasswordEnv.
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
	PasswordEnv  string `yaml:"password_env"`
	// DialTimeout bounds the first contact at start (default 5s);
	// RequestTimeout each request (default 5s).
	DialTimeout    time.Duration `yaml:"dial_timeout"`
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// MaxRequestBytes is the cluster's --max-request-bytes (default
	// 1.5 MiB, etcd's default): larger writes are refused before sending.
	MaxRequestBytes int `yaml:"max_request_bytes"`
	// LockTTL is how long a replica's hold on a connection's refresh, its
	// membership (its share of the scheduled work) and its hold on a
	// webhook endpoint outlive the replica if it dies or loses the cluster
	// (default 30s, whole seconds, at least 6s). A provider refresh call
	// and a webhook delivery attempt under it are bounded by a third of
	// it; readiness fails after two thirds of it without an answer.
	LockTTL time.Duration `yaml:"lock_ttl"`
}

// StoreTLSConfig names the files of a TLS client.
type StoreTLSConfig struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name checked in etcd's certificate
	// (default: the endpoint's host).
	ServerName string `yaml:"server_name"`
}

// defaultStorePrefix is the etcd key prefix when none is configured.
const defaultStorePrefix = "tokenvault/"

// defaultLockTTL: with it a provider call under a lock is bounded by 10s
// (fencedCallTimeout).
const defaultLockTTL = 30 * time.Second

// openStore opens the configured store: the bbolt file in dataDir, or the
// etcd cluster. An unreachable cluster is an error naming its endpoints.
func openStore(ctx context.Context, sc *StoreConfig, dataDir string, env func(string) string) (vault.Store, error) {
	kind := "bolt"
	if sc != nil {
		kind = cmp.Or(sc.Kind, kind)
	}
	switch kind {
	case "bolt":
		if sc != nil && (len(sc.Endpoints) > 0 || sc.TLS != nil || sc.Username != "") {
			return nil, errors.New("store: endpoints, tls and username are for kind etcd")
		}
		if dataDir == "" {
			return nil, errors.New("data_dir is not set")
		}
		return bolt.Open(filepath.Join(dataDir, "tokenvault.db"), bolt.Options{})
	case "etcd":
		opts, err := etcdOptions(sc, env)
		if err != nil {
			return nil, err
		}
		return etcd.Open(ctx, opts)
	}
	return nil, fmt.Errorf("store: unknown kind %q (want bolt or etcd)", kind)
}

// etcdOptions checks an etcd store block and reads its secrets. Errors
// name files and variables, never a password.
func etcdOptions(sc *StoreConfig, env func(string) string) (etcd.Options, error) {
	if len(sc.Endpoints) == 0 {
		return etcd.Options{}, errors.New("store: kind etcd needs endpoints")
	}
	for _, ep := range sc.Endpoints {
		if !strings.HasPrefix(ep, "http://") && !strings.HasPrefix(ep, "https://") {
			return etcd.Options{}, fmt.Errorf("store: endpoint %q: want http:// or https://", ep)
		}
		if strings.HasPrefix(ep, "https://") && sc.TLS == nil {
			return etcd.Options{}, fmt.Errorf("store: endpoint %q is https: set store.tls.ca_file", ep)
		}
	}
	if sc.LockTTL != 0 && sc.LockTTL < 6*time.Second {
		return etcd.Options{}, fmt.Errorf("store: lock_ttl %v: want at least 6s", sc.LockTTL)
	}
	if sc.DialTimeout < 0 || sc.RequestTimeout < 0 || sc.MaxRequestBytes < 0 {
		return etcd.Options{}, errors.New("store: timeouts and max_request_bytes must not be negative")
	}
	opts := etcd.Options{
		Endpoints:       sc.Endpoints,
		Prefix:          cmp.Or(sc.Prefix, defaultStorePrefix),
		DialTimeout:     sc.DialTimeout,
		RequestTimeout:  sc.RequestTimeout,
		MaxRequestBytes: sc.MaxRequestBytes,
		LockTTL:         cmp.Or(sc.LockTTL, defaultLockTTL),
	}
	if t := sc.TLS; t != nil {
		if (t.CertFile == "") != (t.KeyFile == "") {
			return etcd.Options{}, errors.New("store: tls: set both cert_file and key_file, or neither")
		}
		info := transport.TLSInfo{TrustedCAFile: t.CAFile, CertFile: t.CertFile, KeyFile: t.KeyFile, ServerName: t.ServerName}
		tc, err := info.ClientConfig()
		if err != nil {
			return etcd.Options{}, fmt.Errorf("store: tls: %w", err)
		}
		opts.TLS = tc
	}
	if sc.Username != "" {
		if (sc.PasswordFile == "") == (sc.PasswordEnv == "") {
			return etcd.Options{}, errors.New("store: username given: set exactly one of password_file and password_env")
		}
		pw, err := readSecret(sc.PasswordFile, sc.PasswordEnv, env)
		if err != nil {
			return etcd.Options{}, fmt.Errorf("store: password: %w", err)
		}
		opts.Username, opts.Password = sc.Username, pw
	} else if sc.PasswordFile != "" || sc.PasswordEnv != "" {
		return etcd.Options{}, errors.New("store: a password is set without a username")
	}
	return opts, nil
}

// fencedCallTimeout bounds a provider refresh call made under a replica's
// lock on etcd: a third of the lock's TTL. The lease is renewed every
// third of its TTL, so it has at least two thirds left when the call
// starts: the call, a second's margin and the TTL's rounding to seconds fit
// for any TTL of 6s or more. 0 (the vault's default) for bbolt, where
// nothing is fenced.
func fencedCallTimeout(st vault.Store) time.Duration {
	if es, ok := st.(*etcd.Store); ok {
		return es.LockTTL() / 3
	}
	return 0
}
