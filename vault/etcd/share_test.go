package etcd_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/etcd"
	"github.com/tokenvault/tokenvault/vault/etcd/etcdtest"
)

// callLog records which replica presented which connection's refresh
// token (connections are told apart by their account).
type callLog struct {
	mu    sync.Mutex
	calls []call
	gate  func(replica int) // if set, called before each refresh reaches the provider
}

type call struct {
	replica int
	account string
	at      time.Time
}

func (l *callLog) wrap(i int, p vault.Provider) vault.Provider { return &loggedProvider{p, i, l} }

func (l *callLog) byAccount(since time.Time) map[string][]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string][]int{}
	for _, c := range l.calls {
		if !c.at.Before(since) {
			out[c.account] = append(out[c.account], c.replica)
		}
	}
	return out
}

type loggedProvider struct {
	vault.Provider
	replica int
	log     *callLog
}

func (p *loggedProvider) Refresh(ctx context.Context, g vault.Grant, cred string) (vault.Grant, error) {
	p.log.mu.Lock()
	p.log.calls = append(p.log.calls, call{p.replica, g.Account, time.Now()})
	gate := p.log.gate
	p.log.mu.Unlock()
	if gate != nil {
		gate(p.replica)
	}
	return p.Provider.Refresh(ctx, g, cred)
}

// scheduled is one replica's scheduler, dividing the work by membership.
type scheduled struct {
	m     *etcd.Members
	s     *vault.Scheduler
	stop  context.CancelFunc
	done  chan struct{}
	alive bool
}

// startSchedulers joins every replica as a member and runs a scheduler on
// each, sharing the work; it waits until every replica sees all members.
func startSchedulers(t *testing.T, rs []*replica) []*scheduled {
	t.Helper()
	var out []*scheduled
	for _, r := range rs {
		m, err := r.st.Join(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		sc := &scheduled{m: m, s: vault.NewScheduler(r.v, vault.SchedulerConfig{Share: m}), stop: cancel, done: make(chan struct{}), alive: true}
		go func() { defer close(sc.done); sc.s.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-sc.done; m.Leave() })
		out = append(out, sc)
	}
	for i, sc := range out {
		waitFor(t, fmt.Sprintf("replica %d to see %d members", i, len(out)), func() bool { return len(sc.m.Live()) == len(out) })
	}
	return out
}

// With three replicas sharing the work, each connection's scheduled
// refresh is made by exactly one replica, the one membership assigns it
// (one provider refresh per expiry, no replica attempting another's); the
// work is spread over all three. When a replica dies (its client goes
// without a word; its lease runs out) the others see it leave within the
// lease TTL and refresh its connections from then on.
func TestReplicas_SchedulerDivided(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for about 25 seconds")
	}
	c := etcdtest.Start(t, 1)
	clk := &testClock{real: true}
	const life, ttl = 6 * time.Second, 3 * time.Second
	p := &rotatingProvider{lifetime: life, now: time.Now, live: map[string]bool{}}
	calls := &callLog{}
	rs := startReplicas(t, c, 3, p, clk, etcd.Options{LockTTL: ttl}, vault.Config{
		FencedCallTimeout: 300 * time.Millisecond,
		RefreshPolicies:   map[string]vault.RefreshPolicy{"fake": {MinInterval: 100 * time.Millisecond, MinValid: time.Second}},
	}, calls.wrap)
	scs := startSchedulers(t, rs)
	ids := make([]string, len(scs))
	for i, sc := range scs {
		ids[i] = sc.m.ID()
	}

	const n = 24
	account := map[string]string{} // account -> connection id
	for i := range n {
		conn := connectOn(t, rs[i%3], rs, fmt.Sprint("user", i))
		account[conn.Grant.Account] = conn.ID
	}
	start := time.Now()
	time.Sleep(10 * time.Second)

	// Phase 1: every connection refreshed by its owner alone.
	perReplica := make([]int, 3)
	for acct, id := range account {
		who := calls.byAccount(start)[acct]
		if len(who) < 1 {
			t.Errorf("connection %s: no scheduled refresh in 10s of %v tokens", id, life)
			continue
		}
		want := slices.Index(ids, etcd.Owner(ids, id))
		for _, r := range who {
			if r != want {
				t.Errorf("connection %s refreshed by replica %d; want only its owner, replica %d (all: %v)", id, r, want, who)
				break
			}
		}
		perReplica[want] += len(who)
	}
	var refreshes, skipped uint64
	for _, sc := range scs {
		st := sc.s.Stats()
		refreshes += st.Refreshes
		skipped += st.Skipped
	}
	total, reuses := p.counts()
	if reuses != 0 || uint64(total) != refreshes || skipped != 0 {
		t.Errorf("provider refreshes %d (reuses %d), scheduled refreshes %d, skipped %d; want equal counts, no reuse, none skipped (no replica attempting another's work)",
			total, reuses, refreshes, skipped)
	}
	t.Logf("refreshes per replica over %d connections in 10s: %v", n, perReplica)

	// Phase 2: replica 2 dies.
	dead := scs[2]
	dead.stop()
	<-dead.done
	killed := time.Now()
	rs[2].st.Close() // no goodbye: its lease runs out on its own
	for i := range 2 {
		waitFor(t, "the others to see the dead replica leave", func() bool { return !slices.Contains(scs[i].m.Live(), ids[2]) })
	}
	moved := time.Since(killed)
	t.Logf("a dead replica's share moved after %v (lease TTL %v)", moved.Round(time.Millisecond), ttl)
	if moved > 3*ttl {
		t.Errorf("the dead replica's share moved after %v; want about the lease TTL, %v", moved, ttl)
	}
	time.Sleep(8 * time.Second)
	live := ids[:2]
	byAcct := calls.byAccount(killed)
	orphans := 0
	for acct, id := range account {
		if etcd.Owner(ids, id) != ids[2] {
			continue
		}
		orphans++
		who := byAcct[acct]
		want := slices.Index(ids, etcd.Owner(live, id))
		if len(who) == 0 {
			t.Errorf("connection %s of the dead replica: not refreshed in the 8s after its share moved", id)
		}
		for _, r := range who {
			if r != want {
				t.Errorf("connection %s of the dead replica refreshed by replica %d; want its new owner, replica %d", id, r, want)
			}
		}
	}
	if _, reuses := p.counts(); reuses != 0 {
		t.Errorf("reuses = %d; want 0", reuses)
	}
	t.Logf("the dead replica's %d connections were taken over", orphans)
}

// A scheduled refresh on the connection's owner and an on-demand refresh
// on another replica at the same moment: the second waits on the first's
// fence and serves its result. One provider refresh.
func TestReplicas_ScheduledAndOnDemand_OneRefresh(t *testing.T) {
	c := etcdtest.Start(t, 1)
	clk := &testClock{real: true}
	p := &rotatingProvider{lifetime: 3 * time.Second, now: time.Now, live: map[string]bool{}}
	calls := &callLog{}
	entered := make(chan int, 4)
	release := make(chan struct{})
	var once sync.Once
	calls.gate = func(replica int) {
		first := false
		once.Do(func() { first = true })
		if first {
			entered <- replica
			select {
			case <-release:
			case <-time.After(10 * time.Second):
			}
		}
	}
	rs := startReplicas(t, c, 3, p, clk, etcd.Options{LockTTL: 6 * time.Second}, vault.Config{
		FencedCallTimeout: 2 * time.Second,
		RefreshPolicies:   map[string]vault.RefreshPolicy{"fake": {MinInterval: 100 * time.Millisecond, MinValid: 500 * time.Millisecond}},
	}, calls.wrap)
	scs := startSchedulers(t, rs)
	ids := make([]string, len(scs))
	for i, sc := range scs {
		ids[i] = sc.m.ID()
	}
	conn := connectOn(t, rs[0], rs, "alice")
	owner := slices.Index(ids, etcd.Owner(ids, conn.ID))

	var who int
	select {
	case who = <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no scheduled refresh within 10s of a 3s token")
	}
	if who != owner {
		t.Fatalf("the scheduled refresh ran on replica %d; want the owner, replica %d", who, owner)
	}
	// The owner is at the provider. Another replica's caller needs more
	// than the token has left.
	other := (owner + 1) % 3
	type result struct {
		tok string
		err error
	}
	res := make(chan result, 1)
	go func() {
		tok, _, err := rs[other].v.AccessToken(context.Background(), vault.TokenRequest{ID: conn.ID, MinValid: 2 * time.Second})
		res <- result{tok.AccessToken, err}
	}()
	// Wait until the caller queues on the fence (its own key under the
	// connection's lock), then let the provider answer.
	cli := c.Client(t)
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		r, err := cli.Get(context.Background(), "replicas/lock/conn/"+conn.ID+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err == nil && r.Count >= 2 {
			break
		}
	}
	close(release)
	r := <-res
	waitFor(t, "the scheduled refresh to end", func() bool {
		st := scs[owner].s.Stats()
		return st.Refreshes+st.Reauth+st.Failed+st.Skipped > 0
	})
	if r.err != nil || r.tok != "at-2" {
		t.Errorf("on-demand AccessToken on replica %d = %q, %v; want the scheduled refresh's at-2", other, r.tok, r.err)
	}
	if n, reuses := p.counts(); n != 1 || reuses != 0 {
		t.Errorf("provider refreshes = %d, reuses %d; want 1, 0", n, reuses)
	}
}
