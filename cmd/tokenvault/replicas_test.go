package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/vault/etcd/etcdtest"
)

// replicaSet is several real sidecar processes sharing one etcd cluster,
// against one strict fake authorization server.
type replicaSet struct {
	t    *testing.T
	ctx  context.Context
	bin  string
	dir  string
	etcd *etcdtest.Cluster
	fake *providertest.Server
	mk   string
	http []string // each replica's fixed HTTP address
	// ingress is every replica's public URL, as an application's ingress
	// would be; it forwards to replica route.
	ingress *httptest.Server
	route   atomic.Int32
	procs   []*replicaProc
	logs    []*syncBuffer
}

type replicaProc struct {
	cmd  *exec.Cmd
	done chan error
	api  tvv1.TokenVaultServiceClient
	// health and metrics are the replica's listeners, host:port.
	health, metrics string
}

// newReplicaSet starts n sidecars (the binary bin) on cluster c, with the
// fake issuing access tokens valid for ttl, and lockTTL as the store's
// lock TTL; endpoints, if given, replace the cluster's for replica i (a
// proxy in front of it).
func newReplicaSet(t *testing.T, bin string, c *etcdtest.Cluster, n int, ttl, lockTTL time.Duration, endpoints func(i int) []string) *replicaSet {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	rs := &replicaSet{t: t, ctx: ctx, bin: bin, dir: t.TempDir(), etcd: c}
	key := make([]byte, 32)
	rand.Read(key)
	rs.mk = base64.StdEncoding.EncodeToString(key)
	for range n {
		rs.http = append(rs.http, freeAddr(t))
		rs.logs = append(rs.logs, &syncBuffer{})
	}
	rs.ingress = httptest.NewServer(&httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.Out.URL.Scheme, r.Out.URL.Host = "http", rs.http[rs.route.Load()]
		r.Out.Host = r.In.Host
	}})
	t.Cleanup(rs.ingress.Close)
	rs.fake = providertest.Start(providertest.Options{RedirectURIs: []string{rs.ingress.URL + "/oauth/callback/acme"}, AccessTokenTTL: ttl})
	t.Cleanup(rs.fake.Close)
	t.Cleanup(func() {
		if t.Failed() {
			for i, l := range rs.logs {
				t.Logf("replica %d logs (tail):\n%s", i, tail(l.String(), 60))
			}
		}
	})
	for i := range n {
		eps := c.Endpoints()
		if endpoints != nil {
			eps = endpoints(i)
		}
		cfg := fmt.Sprintf(`data_dir: %q
public_url: %q
store:
  kind: etcd
  endpoints: [%s]
  prefix: "replicas/"
  lock_ttl: %s
  request_timeout: 2s
providers:
  acme:
    kind: oauth2
    client_id: %q
    client_secret_env: ACME_CLIENT_SECRET
    auth_url: %q
    token_url: %q
    revoke_url: %q
    auth_style: header
    pkce: true
    scopes: [read]
auth:
  api_keys:
    - {name: replicas-test, key_env: CRASH_API_KEY, role: operator}
`, filepath.Join(rs.dir, fmt.Sprint("data", i)), rs.ingress.URL, strings.Join(eps, ", "), lockTTL, providertest.DefaultClientID,
			rs.fake.URL(providertest.Authorize), rs.fake.URL(providertest.Token), rs.fake.URL(providertest.Revoke))
		if err := os.WriteFile(filepath.Join(rs.dir, fmt.Sprint("config", i, ".yaml")), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		rs.procs = append(rs.procs, nil)
	}
	for i := range n {
		rs.start(i, "")
	}
	return rs
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	return strings.Join(l[max(0, len(l)-lines):], "\n")
}

// start (re)starts replica i, armed with failpoint if not empty, and waits
// until it serves.
func (rs *replicaSet) start(i int, failpoint string) {
	t := rs.t
	t.Helper()
	readyFile := filepath.Join(rs.dir, fmt.Sprint("ready", i, ".json"))
	os.Remove(readyFile)
	cmd := exec.Command(rs.bin, "serve", "--config", filepath.Join(rs.dir, fmt.Sprint("config", i, ".yaml")),
		"--grpc-addr", "127.0.0.1:0", "--public-addr", rs.http[i], "--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
		"--ready-file", readyFile, "--log-level", "info")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TOKENVAULT_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "TOKENVAULT_MASTER_KEY="+rs.mk, "ACME_CLIENT_SECRET="+providertest.DefaultClientSecret,
		"CRASH_API_KEY="+crashAPIKey, "GOMAXPROCS=2")
	if failpoint != "" {
		cmd.Env = append(cmd.Env, failpointEnv+"="+failpoint)
	}
	fmt.Fprintf(rs.logs[i], "--- start (failpoint %q)\n", failpoint)
	cmd.Stderr, cmd.Stdout = rs.logs[i], rs.logs[i]
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &replicaProc{cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		err := <-p.done
		p.done <- err
	})
	var r ready
	for deadline := time.Now().Add(30 * time.Second); ; {
		if b, err := os.ReadFile(readyFile); err == nil && json.Unmarshal(b, &r) == nil && r.GRPCAddr != "" {
			break
		}
		select {
		case err := <-p.done:
			p.done <- err // for the cleanup
			t.Fatalf("replica %d exited before ready: %v\n%s", i, err, tail(rs.logs[i].String(), 40))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica %d not ready after 30s\n%s", i, tail(rs.logs[i].String(), 40))
		}
	}
	conn, err := grpc.NewClient(r.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(testBearer(crashAPIKey)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	p.api = tvv1.NewTokenVaultServiceClient(conn)
	p.health, p.metrics = r.HealthAddr, r.MetricsAddr
	rs.procs[i] = p
}

// stop stops replica i with SIGTERM and waits for it.
func (rs *replicaSet) stop(i int) {
	p := rs.procs[i]
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			rs.t.Errorf("replica %d exited with %v after SIGTERM", i, err)
		}
	case <-time.After(30 * time.Second):
		rs.t.Fatalf("replica %d still running 30s after SIGTERM", i)
	}
}

// connect runs a connect flow for owner: StartConnect on replica from, the
// browser's callback on replica cb (the flow's state is in the shared
// store). It returns the connection id, waiting until replica from sees
// it too.
func (rs *replicaSet) connect(owner string, from, cb int) string {
	t := rs.t
	t.Helper()
	start, err := rs.procs[from].api.StartConnect(rs.ctx, &tvv1.StartConnectRequest{Owner: owner, Provider: "acme"})
	if err != nil {
		t.Fatalf("StartConnect = %v", err)
	}
	// The ingress sends the browser's callback to replica cb.
	rs.route.Store(int32(cb))
	resp, err := newBrowser(t).Get(start.AuthorizationUrl)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("connect flow ended at %s with %d; want 200 from replica %d's callback", resp.Request.URL, resp.StatusCode, cb)
	}
	var id string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		list, err := rs.procs[cb].api.ListConnections(rs.ctx, &tvv1.ListConnectionsRequest{Owner: owner})
		if err == nil && len(list.Connections) == 1 {
			id = list.Connections[0].ConnectionId
			break
		}
	}
	if id == "" {
		t.Fatalf("replica %d does not list %s's connection", cb, owner)
	}
	rs.waitVisible(id)
	return id
}

// waitVisible waits until every running replica serves connection id.
func (rs *replicaSet) waitVisible(id string) {
	rs.t.Helper()
	for i, p := range rs.procs {
		ok := false
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if _, err := p.api.GetConnection(rs.ctx, &tvv1.GetConnectionRequest{ConnectionId: id}); err == nil {
				ok = true
				break
			}
		}
		if !ok {
			rs.t.Fatalf("replica %d does not see connection %s after 10s", i, id)
		}
	}
}

// served is one token a replica handed out.
type served struct {
	replica int
	conn    string
	token   string
	expiry  time.Time
	at      time.Time
}

// readers runs workers on every replica calling GetAccessToken for random
// connections with minValid until ctx ends, and checks each token served:
// live at the provider when served, and not expiring within minValid. A
// call that fails is a test failure unless tolerate(replica) says the
// replica may fail now (it is cut off, etcd is electing).
func (rs *replicaSet) readers(ctx context.Context, ids []string, perReplica int, minValid time.Duration, tolerate func(replica int) bool) []served {
	var (
		mu   sync.Mutex
		out  []served
		wg   sync.WaitGroup
		errs atomic.Int64
	)
	// errorf reports the first few failures; a broken run would flood.
	errorf := func(format string, args ...any) {
		if errs.Add(1) <= 10 {
			rs.t.Errorf(format, args...)
		}
	}
	for i := range rs.procs {
		for range perReplica {
			wg.Go(func() {
				for ctx.Err() == nil {
					id := ids[mrand.IntN(len(ids))]
					cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
					asked := time.Now()
					res, err := rs.procs[i].api.GetAccessToken(cctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, MinValidFor: durationpb.New(minValid)})
					cancel()
					now := time.Now()
					if err != nil {
						if ctx.Err() == nil && (tolerate == nil || !tolerate(i)) {
							errorf("replica %d: GetAccessToken(%s) = %v", i, id, err)
						}
						time.Sleep(20 * time.Millisecond)
						continue
					}
					// Dead at the provider before the expiry the sidecar
					// gave is a failure (revoked: a refresh token presented
					// twice, say). The sidecar dates a token from before its
					// request, so the provider's expiry is never earlier;
					// past it, the token expired on its own while this
					// reader was descheduled after the answer (a loaded
					// machine, the race detector), which says nothing of
					// the sidecar: the check above is what it promised.
					if !rs.fake.IsActive(res.AccessToken) && time.Now().Before(res.ExpireTime.AsTime()) {
						errorf("replica %d served a token the provider does not hold active", i)
					}
					// Valid for minValid from when it was asked for (the
					// sidecar's clock is this machine's).
					if exp := res.ExpireTime.AsTime(); exp.Before(asked.Add(minValid)) {
						errorf("replica %d served a token valid until %v, less than %v from %v", i, exp, minValid, asked)
					}
					mu.Lock()
					out = append(out, served{i, id, res.AccessToken, res.ExpireTime.AsTime(), now})
					mu.Unlock()
					time.Sleep(time.Duration(mrand.IntN(20)) * time.Millisecond)
				}
			})
		}
	}
	wg.Wait()
	return out
}

// checkOneRefreshPerExpiry checks, from the fake's grants and what was
// served, that every connection was refreshed once per expiry: every access
// token the provider issued was served (a second refresh at one expiry
// would issue a token nobody got), and no refresh token was presented
// twice. It returns the smallest number of refreshes of a connection.
func (rs *replicaSet) checkOneRefreshPerExpiry(ids []string, got []served) int {
	t := rs.t
	t.Helper()
	if st := rs.fake.Stats(); st.ReuseDetections != 0 {
		t.Errorf("the provider saw %d rotated refresh tokens presented again; want 0", st.ReuseDetections)
	}
	tokens := map[string]map[string]bool{}
	for _, s := range got {
		if tokens[s.conn] == nil {
			tokens[s.conn] = map[string]bool{}
		}
		tokens[s.conn][s.token] = true
	}
	servedTotal, issuedTotal := 0, 0
	for _, set := range tokens {
		servedTotal += len(set)
	}
	minRefreshes := math.MaxInt
	for _, g := range rs.fake.Grants() {
		if g.Revoked {
			t.Errorf("grant %s was revoked", g.ID)
		}
		issuedTotal += g.AccessTokens
		minRefreshes = min(minRefreshes, g.AccessTokens-1)
	}
	// The first token of each connection was issued at connect time; it
	// may have been served or not.
	if servedTotal < issuedTotal-len(ids) {
		t.Errorf("the provider issued %d access tokens to %d connections, the replicas served %d distinct ones: some refreshes were not needed", issuedTotal, len(ids), servedTotal)
	}
	return minRefreshes
}

// TestReplicas_SharedEtcd runs three sidecar processes on one etcd
// cluster, twenty connections with two-second tokens, and readers on every
// replica, for at least twenty expiries of each connection. No refresh
// token is ever presented twice, every token served is live, and each
// expiry costs one provider refresh. One connection is started on one
// replica and completed on another.
func TestReplicas_SharedEtcd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs three sidecars")
	}
	const (
		conns    = 20
		ttl      = 2 * time.Second
		minValid = 500 * time.Millisecond
		expiries = 20
	)
	bin := sharedSidecar(t)
	c := etcdtest.Start(t, 1)
	rs := newReplicaSet(t, bin, c, 3, ttl, 6*time.Second, nil)
	var ids []string
	for i := range conns {
		ids = append(ids, rs.connect(fmt.Sprint("user", i), i%3, (i+1)%3))
	}
	start := time.Now()
	ctx, cancel := context.WithCancel(rs.ctx)
	done := make(chan []served)
	go func() { done <- rs.readers(ctx, ids, 3, minValid, nil) }()
	// Each expiry is about ttl-minValid after the last refresh.
	for time.Since(start) < time.Duration(expiries+2)*(ttl-minValid) {
		time.Sleep(100 * time.Millisecond)
	}
	// Until every connection has been refreshed expiries times (bounded).
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		n := math.MaxInt
		for _, g := range rs.fake.Grants() {
			n = min(n, g.AccessTokens-1)
		}
		if n >= expiries {
			break
		}
	}
	cancel()
	got := <-done
	n := rs.checkOneRefreshPerExpiry(ids, got)
	if n < expiries {
		t.Errorf("the least refreshed connection was refreshed %d times; want at least %d", n, expiries)
	}
	perReplica := make([]int, 3)
	for _, s := range got {
		perReplica[s.replica]++
	}
	st := rs.fake.Stats()
	t.Logf("%d tokens served (per replica %v) in %v; %d provider refreshes for %d connections (least refreshed: %d); reuse detections %d",
		len(got), perReplica, time.Since(start).Round(time.Millisecond), st.Refreshes, conns, n, st.ReuseDetections)
}
