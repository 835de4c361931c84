package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/etcd/etcdtest"
)

// replicaBin builds the sidecar (with failpoints) once for the replica
// tests of one run; the binary is removed when the last of them ends.
var replicaBin struct {
	once sync.Once
	dir  string
	path string
	err  error
	mu   sync.Mutex
	refs int
}

func sharedSidecar(t *testing.T) string {
	t.Helper()
	replicaBin.once.Do(func() {
		replicaBin.dir, replicaBin.err = os.MkdirTemp("", "tokenvault-replicas-")
		if replicaBin.err != nil {
			return
		}
		replicaBin.path = filepath.Join(replicaBin.dir, "tokenvault")
		out, err := exec.Command("go", "build", "-tags", "failpoint", "-o", replicaBin.path, ".").CombinedOutput()
		if err != nil {
			replicaBin.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if replicaBin.err != nil {
		t.Fatal(replicaBin.err)
	}
	replicaBin.mu.Lock()
	replicaBin.refs++
	replicaBin.mu.Unlock()
	t.Cleanup(func() {
		replicaBin.mu.Lock()
		defer replicaBin.mu.Unlock()
		if replicaBin.refs--; replicaBin.refs == 0 {
			// A later test of the run builds it again.
			os.RemoveAll(replicaBin.dir)
			replicaBin.once = sync.Once{}
		}
	})
	return replicaBin.path
}

// waitStatus waits until replica i reports connection id in status want.
func (rs *replicaSet) waitStatus(i int, id string, want tvv1.ConnectionStatus, reason string) {
	rs.t.Helper()
	var got *tvv1.Connection
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		res, err := rs.procs[i].api.GetConnection(rs.ctx, &tvv1.GetConnectionRequest{ConnectionId: id})
		if err == nil {
			got = res.Connection
			if got.Status == want && got.StatusReason == reason {
				return
			}
		}
	}
	rs.t.Fatalf("replica %d: connection %s is %v; want %s/%q", i, id, got, want, reason)
}

// A replica killed (SIGKILL) after the provider answered and before its
// commit: its fence lapses with its lease, the next replica to need the
// connection retries the stored refresh token once, the strict provider
// refuses it (it was rotated) and revokes the grant, and the connection is
// needs_reauth/refresh_interrupted on every replica. Never a loop.
func TestReplicas_KilledMidRefresh(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three sidecars")
	}
	bin := sharedSidecar(t)
	c := etcdtest.Start(t, 1)
	rs := newReplicaSet(t, bin, c, 3, time.Hour, 6*time.Second, nil)
	id := rs.connect("alice", 0, 0)
	rs.stop(0)
	rs.start(0, vault.FailpointAfterProviderAnswer)
	rs.waitVisible(id)
	time.Sleep(2500 * time.Millisecond) // past a forced refresh's sharing window
	force := &tvv1.GetAccessTokenRequest{ConnectionId: id, ForceRefresh: true}
	if _, err := rs.procs[0].api.GetAccessToken(rs.ctx, force); err == nil {
		t.Fatal("GetAccessToken returned; want replica 0 killed at the failpoint")
	}
	start := time.Now()
	_, err := rs.procs[1].api.GetAccessToken(rs.ctx, force)
	if reasonOf(err) != "NEEDS_REAUTHORIZATION" {
		t.Fatalf("GetAccessToken on replica 1 = %v; want NEEDS_REAUTHORIZATION", err)
	}
	t.Logf("replica 1 resolved the dead replica's refresh after %v (lock TTL 6s)", time.Since(start).Round(time.Millisecond))
	rs.waitStatus(2, id, tvv1.ConnectionStatus_CONNECTION_STATUS_NEEDS_REAUTH, vault.ReasonRefreshInterrupted)
	for _, i := range []int{1, 2} {
		rs.procs[i].api.GetAccessToken(rs.ctx, force)
	}
	time.Sleep(time.Second)
	if st := rs.fake.Stats(); st.Token["refresh_token"] != 2 || st.ReuseDetections != 1 {
		t.Errorf("fake saw %d refresh requests, %d reuses; want 2 (the lost answer, the one retry), 1", st.Token["refresh_token"], st.ReuseDetections)
	}
}

// All replicas stop and start again: nothing is lost, and refreshing goes
// on with no refresh token presented twice.
func TestReplicas_RestartAll(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three sidecars")
	}
	bin := sharedSidecar(t)
	c := etcdtest.Start(t, 1)
	rs := newReplicaSet(t, bin, c, 3, 2*time.Second, 6*time.Second, nil)
	var ids []string
	for i := range 5 {
		ids = append(ids, rs.connect(fmt.Sprint("user", i), i%3, i%3))
	}
	for i := range 3 {
		rs.stop(i)
	}
	for i := range 3 {
		rs.start(i, "")
	}
	for i := range 3 {
		list, err := rs.procs[i].api.ListConnections(rs.ctx, &tvv1.ListConnectionsRequest{})
		if err != nil || len(list.Connections) != len(ids) {
			t.Fatalf("replica %d after the restart lists %d connections, %v; want %d", i, len(list.GetConnections()), err, len(ids))
		}
	}
	got := rs.readFor(5*time.Second, ids, nil)
	if n := rs.checkOneRefreshPerExpiry(ids, got); n < 2 {
		t.Errorf("least refreshed connection: %d refreshes in 5s of 2s tokens; want at least 2", n)
	}
}

// The etcd leader stops: the replicas keep serving valid tokens, refreshes
// resume after the election, and no refresh token is presented twice.
func TestReplicas_EtcdLeaderStops(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three sidecars on three etcd members")
	}
	bin := sharedSidecar(t)
	c := etcdtest.Start(t, 3)
	rs := newReplicaSet(t, bin, c, 3, 2*time.Second, 6*time.Second, nil)
	var ids []string
	for i := range 5 {
		ids = append(ids, rs.connect(fmt.Sprint("user", i), i%3, i%3))
	}
	ctx, cancel := context.WithCancel(rs.ctx)
	done := make(chan []served)
	// During the election a refresh may fail (UNAVAILABLE): tolerated, the
	// readers check what is served.
	go func() { done <- rs.readers(ctx, ids, 2, 500*time.Millisecond, func(int) bool { return true }) }()
	time.Sleep(2 * time.Second)
	before := minRefreshes(rs)
	leader := c.Leader(t)
	c.Stop(leader)
	t.Logf("stopped etcd member %d, the leader; new leader: member %d", leader, c.Leader(t))
	time.Sleep(6 * time.Second)
	cancel()
	got := <-done
	after := minRefreshes(rs)
	if after < before+2 {
		t.Errorf("least refreshed connection went from %d to %d refreshes in the 6s after the leader stopped; want refreshes to go on", before, after)
	}
	rs.checkOneRefreshPerExpiry(ids, got)
}

// One replica is cut off from etcd (its TCP proxy stops forwarding): it
// loses its lease and stops refreshing, the others carry on without it,
// no refresh token is presented twice; once the network is back it serves
// fresh tokens again.
func TestReplicas_CutOff(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three sidecars")
	}
	bin := sharedSidecar(t)
	c := etcdtest.Start(t, 1)
	proxy := startProxy(t, c.Endpoints()[0][len("http://"):])
	rs := newReplicaSet(t, bin, c, 3, 2*time.Second, 6*time.Second, func(i int) []string {
		if i == 0 {
			return []string{proxy.URL()}
		}
		return c.Endpoints()
	})
	var ids []string
	for i := range 5 {
		ids = append(ids, rs.connect(fmt.Sprint("user", i), 1, 1))
	}
	proxy.Cut()
	// Replica 0's callers may get errors (it cannot refresh); what it does
	// serve must be valid, and the others must serve without error.
	got := rs.readFor(10*time.Second, ids, func(i int) bool { return i == 0 })
	rs.checkOneRefreshPerExpiry(ids, got)
	proxy.Restore()
	for _, id := range ids {
		var err error
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			var res *tvv1.GetAccessTokenResponse
			res, err = rs.procs[0].api.GetAccessToken(rs.ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, MinValidFor: durationpb.New(500 * time.Millisecond)})
			if err == nil && rs.fake.IsActive(res.AccessToken) {
				break
			}
		}
		if err != nil {
			t.Errorf("replica 0 after the network is back: GetAccessToken(%s) = %v", id, err)
		}
	}
	if st := rs.fake.Stats(); st.ReuseDetections != 0 {
		t.Errorf("reuse detections = %d; want 0", st.ReuseDetections)
	}
}

func minRefreshes(rs *replicaSet) int {
	n := -1
	for _, g := range rs.fake.Grants() {
		if n < 0 || g.AccessTokens-1 < n {
			n = g.AccessTokens - 1
		}
	}
	return n
}

// readFor runs readers (two per replica, min_valid_for 500ms) for d. They
// stop by cancellation, not a deadline: a deadline would reach the
// sidecars with the calls and end them there a moment before here.
func (rs *replicaSet) readFor(d time.Duration, ids []string, tolerate func(int) bool) []served {
	ctx, cancel := context.WithCancel(rs.ctx)
	time.AfterFunc(d, cancel)
	return rs.readers(ctx, ids, 2, 500*time.Millisecond, tolerate)
}

// A replica cut off from etcd for longer than its lease can bridge turns
// unready: /readyz answers 503 and gRPC health reports the
// TokenVaultService NOT_SERVING, while liveness (/healthz, gRPC health "")
// stays OK; the other replicas stay ready. Once the network is back it is
// ready again.
func TestReplicas_CutOff_NotReady(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three sidecars")
	}
	bin := sharedSidecar(t)
	c := etcdtest.Start(t, 1)
	proxy := startProxy(t, c.Endpoints()[0][len("http://"):])
	rs := newReplicaSet(t, bin, c, 3, time.Hour, 6*time.Second, func(i int) []string {
		if i == 0 {
			return []string{proxy.URL()}
		}
		return c.Endpoints()
	})
	type probe struct {
		readyz, healthz int
		service, live   healthpb.HealthCheckResponse_ServingStatus
	}
	probeOf := func(i int) probe {
		var p probe
		for path, code := range map[string]*int{"/readyz": &p.readyz, "/healthz": &p.healthz} {
			resp, err := http.Get("http://" + rs.procs[i].health + path)
			if err == nil {
				*code = resp.StatusCode
				resp.Body.Close()
			}
		}
		conn, err := grpc.NewClient(rs.procs[i].health, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		hc := healthpb.NewHealthClient(conn)
		for svc, st := range map[string]*healthpb.HealthCheckResponse_ServingStatus{"": &p.live, tvv1.TokenVaultService_ServiceDesc.ServiceName: &p.service} {
			ctx, cancel := context.WithTimeout(rs.ctx, 2*time.Second)
			if res, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc}); err == nil {
				*st = res.Status
			}
			cancel()
		}
		return p
	}
	serving := probe{readyz: 200, healthz: 200, service: healthpb.HealthCheckResponse_SERVING, live: healthpb.HealthCheckResponse_SERVING}
	for i := range 3 {
		if p := probeOf(i); p != serving {
			t.Fatalf("replica %d before the cut: %+v; want %+v", i, p, serving)
		}
	}
	id := rs.connect("alice", 1, 1)
	proxy.Cut()
	cut := time.Now()
	unready := probe{readyz: 503, healthz: 200, service: healthpb.HealthCheckResponse_NOT_SERVING, live: healthpb.HealthCheckResponse_SERVING}
	var p probe
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if p = probeOf(0); p == unready {
			break
		}
	}
	if p != unready {
		t.Fatalf("replica 0 cut off from etcd for 30s: %+v; want %+v", p, unready)
	}
	t.Logf("replica 0 unready %v after the cut (lock TTL 6s: two thirds of it without an answer)", time.Since(cut).Round(100*time.Millisecond))
	// Its resident token is still served (valid for an hour).
	if _, err := rs.procs[0].api.GetAccessToken(rs.ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id}); err != nil {
		t.Errorf("replica 0 cut off: GetAccessToken of a valid resident token = %v", err)
	}
	for _, i := range []int{1, 2} {
		if p := probeOf(i); p != serving {
			t.Errorf("replica %d while replica 0 is cut off: %+v; want %+v", i, p, serving)
		}
	}
	proxy.Restore()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if p = probeOf(0); p == serving {
			break
		}
	}
	if p != serving {
		t.Errorf("replica 0 30s after the network is back: %+v; want %+v", p, serving)
	}
}

// refreshesOf reads replica i's tokenvault_refreshes_total{outcome="ok"}.
func (rs *replicaSet) refreshesOf(i int) int {
	resp, err := http.Get("http://" + rs.procs[i].metrics + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "tokenvault_refreshes_total{") && strings.Contains(l, `outcome="ok"`) {
			var v float64
			fmt.Sscanf(l[strings.LastIndexByte(l, ' ')+1:], "%g", &v)
			n += int(v)
		}
	}
	return n
}

// With no reader at all, the three sidecars' schedulers refresh every
// connection ahead of expiry, dividing the work (each refresh is made by
// one replica, counted in its metrics); one sidecar is killed (SIGKILL):
// its share moves to the others once its lease runs out, and every
// connection goes on being refreshed, no refresh token presented twice.
func TestReplicas_SchedulerShareMovesOnKill(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three sidecars for about a minute")
	}
	bin := sharedSidecar(t)
	c := etcdtest.Start(t, 1)
	// 12s tokens: the scheduler refreshes them about 10s after issue (its
	// floor between two refreshes of one token).
	rs := newReplicaSet(t, bin, c, 3, 12*time.Second, 6*time.Second, nil)
	var ids []string
	for i := range 9 {
		ids = append(ids, rs.connect(fmt.Sprint("user", i), i%3, i%3))
	}
	refreshed := func() map[string]int {
		out := map[string]int{}
		for _, g := range rs.fake.Grants() {
			out[g.ID] = g.AccessTokens - 1
		}
		return out
	}
	time.Sleep(14 * time.Second)
	before := refreshed()
	per := []int{rs.refreshesOf(0), rs.refreshesOf(1), rs.refreshesOf(2)}
	total := 0
	for _, n := range before {
		total += n
	}
	if per[0]+per[1]+per[2] != total {
		t.Errorf("refreshes counted by the replicas %v (sum %d); the provider made %d", per, per[0]+per[1]+per[2], total)
	}
	t.Logf("scheduled refreshes per replica before the kill: %v", per)
	rs.procs[2].cmd.Process.Kill()
	err := <-rs.procs[2].done
	rs.procs[2].done <- err
	killed := time.Now()
	// Every connection is refreshed again: the dead replica's share by
	// the others once its lease (6s) has run out.
	for _, g := range rs.fake.Grants() {
		for deadline := time.Now().Add(40 * time.Second); refreshed()[g.ID] <= before[g.ID] && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
		}
		if refreshed()[g.ID] <= before[g.ID] {
			t.Errorf("grant %s not refreshed in the 40s after replica 2 was killed", g.ID)
		}
	}
	t.Logf("every connection refreshed again %v after the kill", time.Since(killed).Round(100*time.Millisecond))
	if st := rs.fake.Stats(); st.ReuseDetections != 0 {
		t.Errorf("reuse detections = %d; want 0", st.ReuseDetections)
	}
}
