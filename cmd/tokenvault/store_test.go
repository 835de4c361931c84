package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/etcd/etcdtest"
)

// writeEtcdConfig writes a config file whose store block names the
// cluster's endpoints under prefix, and returns its path.
func writeEtcdConfig(t *testing.T, endpoints []string, prefix string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	cfg := fmt.Sprintf("store:\n  kind: etcd\n  endpoints: [%s]\n  prefix: %q\n  dial_timeout: 2s\n", strings.Join(endpoints, ", "), prefix)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// etcdValues returns every key and value under prefix.
func etcdValues(t *testing.T, c *etcdtest.Cluster, prefix string) map[string][]byte {
	t.Helper()
	resp, err := c.Client(t).Get(t.Context(), prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]byte{}
	for _, kv := range resp.Kvs {
		m[string(kv.Key)] = kv.Value
	}
	return m
}

// TestServe_EtcdStore runs the sidecar on an etcd store: a connection made
// through it lives in etcd (sealed: no token in clear there, no bbolt file
// written) and is still there, its token served, after a restart.
func TestServe_EtcdStore(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := writeEtcdConfig(t, c.Endpoints(), "apps/one/")
	dataDir := filepath.Join(t.TempDir(), "data") // dev mode's keys only
	r, _ := startDev(t, "--config", cfg, "--data-dir", dataDir)
	id := connectDev(t, r)
	tok, err := dialTest(t, r.GRPCAddr).GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id})
	if err != nil {
		t.Fatal(err)
	}
	r.Stop()

	if _, err := os.Stat(filepath.Join(dataDir, "tokenvault.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a bbolt file was written beside the etcd store: %v", err)
	}
	kvs := etcdValues(t, c, "apps/one/")
	if _, ok := kvs["apps/one/conn/"+id]; !ok {
		t.Fatalf("etcd holds no apps/one/conn/%s; keys: %d", id, len(kvs))
	}
	for k, v := range kvs {
		if bytes.Contains(v, []byte(tok.AccessToken)) {
			t.Errorf("etcd key %s holds the access token in clear", k)
		}
	}

	r, _ = startDev(t, "--config", cfg, "--data-dir", dataDir)
	again, err := dialTest(t, r.GRPCAddr).GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id})
	if err != nil || again.AccessToken != tok.AccessToken {
		t.Fatalf("GetAccessToken after restart = %v; want the same token served", err)
	}
}

// An unreachable cluster stops the sidecar at start with an error naming
// the endpoints, before it listens or writes its ready file.
func TestServe_EtcdUnreachable(t *testing.T) {
	dead := "http://" + freeAddr(t) // nothing listens there
	cfg := writeEtcdConfig(t, []string{dead}, "apps/x/")
	dir := t.TempDir()
	readyFile := filepath.Join(dir, "ready.json")
	grpcAddr := freeAddr(t)
	var out, errb syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- Main(context.Background(), []string{"serve", "--dev", "--config", cfg, "--data-dir", filepath.Join(dir, "data"),
			"--grpc-addr", grpcAddr, "--public-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--ready-file", readyFile}, func(string) string { return "" }, &out, &errb)
	}()
	select {
	case code := <-done:
		if code != 1 {
			t.Errorf("serve with etcd unreachable exited %d; want 1", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve with etcd unreachable still running after 30s")
	}
	if !strings.Contains(errb.String(), dead) || !strings.Contains(errb.String(), "unreachable") {
		t.Errorf("serve's error = %q; want it to name %s as unreachable", errb.String(), dead)
	}
	if _, err := os.Stat(readyFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ready file written by a sidecar that could not reach its store")
	}
}

func TestEtcdOptions_Refuses(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("s3cret-password\n"), 0o600)
	env := func(k string) string {
		if k == "ETCD_PW" {
			return "env-password"
		}
		return ""
	}
	ok := []string{"http://127.0.0.1:2379"}
	for _, tt := range []struct {
		name string
		sc   StoreConfig
		want string
	}{
		{"no endpoints", StoreConfig{Kind: "etcd"}, "needs endpoints"},
		{"bad scheme", StoreConfig{Kind: "etcd", Endpoints: []string{"127.0.0.1:2379"}}, "want http:// or https://"},
		{"https without tls", StoreConfig{Kind: "etcd", Endpoints: []string{"https://etcd:2379"}}, "set store.tls.ca_file"},
		{"cert without key", StoreConfig{Kind: "etcd", Endpoints: ok, TLS: &StoreTLSConfig{CertFile: "c.pem"}}, "both cert_file and key_file"},
		{"missing CA file", StoreConfig{Kind: "etcd", Endpoints: ok, TLS: &StoreTLSConfig{CAFile: filepath.Join(dir, "nope.pem")}}, "store: tls"},
		{"username, no password", StoreConfig{Kind: "etcd", Endpoints: ok, Username: "tv"}, "exactly one of password_file and password_env"},
		{"username, two passwords", StoreConfig{Kind: "etcd", Endpoints: ok, Username: "tv", PasswordFile: pw, PasswordEnv: "ETCD_PW"}, "exactly one"},
		{"password, no username", StoreConfig{Kind: "etcd", Endpoints: ok, PasswordFile: pw}, "without a username"},
		{"empty password env", StoreConfig{Kind: "etcd", Endpoints: ok, Username: "tv", PasswordEnv: "UNSET"}, "UNSET is empty"},
		{"negative timeout", StoreConfig{Kind: "etcd", Endpoints: ok, RequestTimeout: -time.Second}, "must not be negative"},
	} {
		_, err := etcdOptions(&tt.sc, env)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: etcdOptions = %v; want an error containing %q", tt.name, err, tt.want)
		}
		if err != nil && (strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "env-password")) {
			t.Errorf("%s: error %q shows the password", tt.name, err)
		}
	}
	for _, tt := range []struct {
		sc   StoreConfig
		want string
	}{
		{StoreConfig{Kind: "etcd", Endpoints: ok, Username: "tv", PasswordFile: pw}, "s3cret-password"},
		{StoreConfig{Kind: "etcd", Endpoints: ok, Username: "tv", PasswordEnv: "ETCD_PW"}, "env-password"},
	} {
		opts, err := etcdOptions(&tt.sc, env)
		if err != nil || opts.Password != tt.want || opts.Prefix != defaultStorePrefix {
			t.Errorf("etcdOptions(%+v) = password %q, prefix %q, %v; want %q, %q", tt.sc, opts.Password, opts.Prefix, err, tt.want, defaultStorePrefix)
		}
	}
	if _, err := openStore(t.Context(), &StoreConfig{Kind: "zookeeper"}, dir, env); err == nil {
		t.Error("openStore(kind zookeeper) = nil; want an error")
	}
	if _, err := openStore(t.Context(), &StoreConfig{Endpoints: ok}, dir, env); err == nil {
		t.Error("openStore(bolt with endpoints) = nil; want an error")
	}
}

// TestStoreMigrate moves a sidecar's bbolt store to etcd with the CLI, and
// the sidecar started on etcd serves the same connection with the same
// master key. Run again it writes nothing; a target holding other records
// is refused without --force and made an exact copy with it.
func TestStoreMigrate(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dataDir := filepath.Join(t.TempDir(), "data")
	r, _ := startDev(t, "--data-dir", dataDir)
	id := connectDev(t, r)
	tok, err := dialTest(t, r.GRPCAddr).GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id})
	if err != nil {
		t.Fatal(err)
	}
	// The running sidecar holds the file: migrate says to stop it.
	file := filepath.Join(dataDir, "tokenvault.db")
	cfg := writeEtcdConfig(t, c.Endpoints(), "apps/moved/")
	if code, _, errs := runMain(t, "store", "migrate", "--from", file, "--to", cfg); code != 1 || !strings.Contains(errs, "stop the sidecar") {
		t.Errorf("migrate from a file in use = %d, %q; want 1 and a hint to stop the sidecar", code, errs)
	}
	r.Stop()

	code, out, errs := runMain(t, "store", "migrate", "--from", file, "--to", cfg)
	if code != 0 || !strings.Contains(out, "copied") || !strings.Contains(out, "(1 connections)") || !strings.Contains(out, "verified") {
		t.Fatalf("migrate = %d, %q, %q; want copied with 1 connection, verified", code, out, errs)
	}
	n := len(etcdValues(t, c, "apps/moved/"))
	code, out, _ = runMain(t, "store", "migrate", "--from", file, "--to", cfg)
	if code != 0 || !strings.Contains(out, "already migrated") || len(etcdValues(t, c, "apps/moved/")) != n {
		t.Errorf("second migrate = %d, %q; want already migrated, nothing written", code, out)
	}

	// On etcd now, with the same data dir's master key: the same grant.
	r, _ = startDev(t, "--config", cfg, "--data-dir", dataDir)
	got, err := dialTest(t, r.GRPCAddr).GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, MinValidFor: durationpb.New(time.Second)})
	if err != nil || got.AccessToken != tok.AccessToken {
		t.Fatalf("GetAccessToken on etcd after migrate = %v; want the migrated token", err)
	}
	r.Stop()

	// A target that differs: one stray record, one changed.
	cli := c.Client(t)
	cli.Put(ctx, "apps/moved/conn/stray", "x")
	cli.Put(ctx, "apps/moved/conn/"+id, "tampered")
	code, _, errs = runMain(t, "store", "migrate", "--from", file, "--to", cfg)
	// (Besides these, the sidecar's run on etcd wrote audit records the
	// source does not have.)
	if code != 1 || !strings.Contains(errs, "--force") || !strings.Contains(errs, "0 of the source's") || !strings.Contains(errs, "1 different") {
		t.Errorf("migrate onto a differing target = %d, %q; want refused without --force, naming the differences", code, errs)
	}
	if v := etcdValues(t, c, "apps/moved/")["apps/moved/conn/"+id]; string(v) != "tampered" {
		t.Errorf("a refused migrate wrote the target")
	}
	code, out, errs = runMain(t, "store", "migrate", "--from", file, "--to", cfg, "--force")
	if code != 0 || !strings.Contains(out, "copied") || strings.Contains(out, " 0 stale") {
		t.Fatalf("migrate --force = %d, %q, %q; want copied with the stray removed", code, out, errs)
	}
	if _, ok := etcdValues(t, c, "apps/moved/")["apps/moved/conn/stray"]; ok {
		t.Error("migrate --force left the stray record")
	}
	r, _ = startDev(t, "--config", cfg, "--data-dir", dataDir)
	if _, err := dialTest(t, r.GRPCAddr).GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, MinValidFor: durationpb.New(time.Second)}); err != nil {
		t.Fatalf("GetAccessToken after migrate --force = %v", err)
	}
}

// migrateStore refuses to overwrite a key that appears in the target
// while it copies (a sidecar already writing there).
func TestMigrateStore_ConcurrentWriter(t *testing.T) {
	ctx := t.Context()
	src, err := bolt.Open(filepath.Join(t.TempDir(), "src.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for i := range 200 {
		src.Apply(ctx, vault.Op{Key: fmt.Sprintf("conn/%03d", i), Value: []byte("sealed"), IfRev: vault.AnyRev})
	}
	dst := &racingStore{Store: mustBolt(t), key: "conn/150"}
	_, err = migrateStore(ctx, src, dst, false)
	if err == nil || !strings.Contains(err.Error(), "appeared there during the migration") {
		t.Fatalf("migrateStore with a writer on the target = %v; want a conflict", err)
	}
	v, _, _ := dst.Get(ctx, "conn/150")
	if string(v) != "the writer's" {
		t.Errorf("the writer's record was overwritten: %q", v)
	}
}

func mustBolt(t *testing.T) vault.Store {
	st, err := bolt.Open(filepath.Join(t.TempDir(), "dst.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// racingStore writes key itself just before the first Apply that holds it.
type racingStore struct {
	vault.Store
	key  string
	done bool
}

func (r *racingStore) Apply(ctx context.Context, ops ...vault.Op) ([]uint64, error) {
	for _, op := range ops {
		if op.Key == r.key && !r.done {
			r.done = true
			r.Store.Apply(ctx, vault.Op{Key: r.key, Value: []byte("the writer's"), IfRev: vault.AnyRev})
		}
	}
	return r.Store.Apply(ctx, ops...)
}

// runMain runs the CLI in-process and returns its exit code and outputs.
func runMain(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), args, func(string) string { return "" }, &out, &errb)
	return code, out.String(), errb.String()
}

// TestOpenStore_BoltDurable: the sidecar's bbolt store fsyncs every commit
// (an acknowledged refresh survives a power loss); nothing in the wiring
// turns NoSync on.
func TestOpenStore_BoltDurable(t *testing.T) {
	st, err := openStore(context.Background(), nil, t.TempDir(), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	d, ok := st.(interface{ Durable() bool })
	if !ok || !d.Durable() {
		t.Errorf("openStore(bolt) = %T, durable %v; want a bbolt store that fsyncs", st, ok && d.Durable())
	}
}
