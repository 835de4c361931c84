package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/etcd"
	"github.com/tokenvault/tokenvault/vault/etcd/etcdtest"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// rotatingProvider issues a new refresh token with every refresh and, like
// a strict authorization server, treats a rotated one presented again as
// theft: the grant is dead.
type rotatingProvider struct {
	lifetime time.Duration
	now      func() time.Time

	mu        sync.Mutex
	n         int
	live      map[string]bool // refresh tokens the provider accepts
	refreshes int
	reuses    int
	answered  func() // if set, called after the provider answers
}

func (p *rotatingProvider) PKCE() bool { return true }
func (p *rotatingProvider) AuthURL(r vault.AuthRequest) (string, error) {
	return "https://auth.example/authorize?state=" + url.QueryEscape(r.State), nil
}
func (p *rotatingProvider) Revoke(context.Context, vault.Grant) error { return nil }

func (p *rotatingProvider) issue() vault.Token {
	p.n++
	rt := fmt.Sprintf("rt-%d", p.n)
	p.live[rt] = true
	return vault.Token{AccessToken: fmt.Sprintf("at-%d", p.n), RefreshToken: rt, TokenType: "Bearer", Expiry: p.now().Add(p.lifetime)}
}

func (p *rotatingProvider) Exchange(context.Context, vault.ExchangeRequest) (vault.Grant, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return vault.Grant{Tokens: []vault.Token{p.issue()}, Scopes: []string{"read"}, Account: fmt.Sprintf("acct-%d", p.n)}, nil
}

func (p *rotatingProvider) Refresh(ctx context.Context, g vault.Grant, cred string) (vault.Grant, error) {
	p.mu.Lock()
	p.refreshes++
	rt := g.Token(cred).RefreshToken
	if !p.live[rt] {
		p.reuses++
		p.mu.Unlock()
		return vault.Grant{}, &vault.ProviderError{Kind: vault.ErrReauthRequired, Code: "invalid_grant"}
	}
	delete(p.live, rt)
	g.Tokens = []vault.Token{p.issue()}
	answered := p.answered
	p.mu.Unlock()
	if answered != nil {
		answered()
	}
	return g, nil
}

func (p *rotatingProvider) counts() (refreshes, reuses int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refreshes, p.reuses
}

// replica is one vault on the shared store, following it.
type replica struct {
	v        *vault.Vault
	st       *etcd.Store
	outcomes chan string
}

// testClock is a clock several replicas share, moved by the test.
type testClock struct {
	mu   sync.Mutex
	t    time.Time
	real bool // the real clock: Add is not used
}

func (c *testClock) Now() time.Time {
	if c.real {
		return time.Now()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func startReplicas(t *testing.T, c *etcdtest.Cluster, n int, p *rotatingProvider, clk *testClock, opts etcd.Options, cfg vault.Config, wrap ...func(i int, p vault.Provider) vault.Provider) []*replica {
	t.Helper()
	mk, err := seal.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	return startReplicasKeyed(t, c, mk, n, p, clk, opts, cfg, wrap...)
}

// startReplicasKeyed is startReplicas with the master key mk.
func startReplicasKeyed(t *testing.T, c *etcdtest.Cluster, mk seal.MasterKey, n int, p *rotatingProvider, clk *testClock, opts etcd.Options, cfg vault.Config, wrap ...func(i int, p vault.Provider) vault.Provider) []*replica {
	t.Helper()
	var rs []*replica
	for i := range n {
		o := opts
		o.Endpoints, o.Prefix = c.Endpoints(), "replicas/"
		st := openStore(t, o)
		kr, err := vault.OpenKeyring(t.Context(), st, mk)
		if err != nil {
			t.Fatal(err)
		}
		r := &replica{st: st, outcomes: make(chan string, 100)}
		vc := cfg
		var vp vault.Provider = p
		for _, w := range wrap {
			vp = w(i, vp)
		}
		vc.Store, vc.Keyring, vc.Providers, vc.Now = st, kr, map[string]vault.Provider{"fake": vp}, clk.Now
		vc.OnRefresh = func(_, outcome string, _ time.Duration) {
			select {
			case r.outcomes <- outcome:
			default:
			}
		}
		if r.v, err = vault.Open(t.Context(), vc); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); r.v.Follow(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		rs = append(rs, r)
	}
	return rs
}

// connectOn runs a connect flow on r and waits until every replica has
// the connection.
func connectOn(t testing.TB, r *replica, all []*replica, owner string) *vault.Connection {
	t.Helper()
	u, _, err := r.v.StartConnect(t.Context(), vault.ConnectRequest{Binding: "b", Owner: owner, Provider: "fake"})
	if err != nil {
		t.Fatal(err)
	}
	pu, _ := url.Parse(u)
	res, err := r.v.CompleteConnect(t.Context(), vault.CallbackRequest{Binding: "b", Provider: "fake", State: pu.Query().Get("state"), Code: "code"})
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range all {
		waitFor(t, fmt.Sprintf("replica %d to see %s", i, res.Connection.ID), func() bool {
			_, err := o.v.Get(t.Context(), res.Connection.ID)
			return err == nil && o.v.Len() > 0
		})
	}
	return res.Connection
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("waited 10s for %s", what)
}

// 200 callers spread over three replicas at expiry cause exactly one
// provider refresh, and all of them get its token: the replicas that did
// not hold the connection's fence waited for it and served the holder's
// result.
func TestReplicas_ConcurrentAtExpiry_OneRefresh(t *testing.T) {
	c := etcdtest.Start(t, 1)
	clk := &testClock{t: time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)}
	p := &rotatingProvider{lifetime: time.Hour, now: clk.Now, live: map[string]bool{}}
	rs := startReplicas(t, c, 3, p, clk, etcd.Options{}, vault.Config{})
	conn := connectOn(t, rs[0], rs, "alice")
	clk.Add(time.Hour - time.Minute) // inside the default 5-minute min_valid

	const callers = 200
	var wg sync.WaitGroup
	toks := make([]string, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Go(func() {
			tok, _, err := rs[i%3].v.AccessToken(context.Background(), vault.TokenRequest{ID: conn.ID})
			toks[i], errs[i] = tok.AccessToken, err
		})
	}
	wg.Wait()
	if n, reuses := p.counts(); n != 1 || reuses != 0 {
		t.Errorf("provider refreshes = %d, reuses %d; want 1, 0", n, reuses)
	}
	for i := range callers {
		if errs[i] != nil || toks[i] != "at-2" {
			t.Fatalf("caller %d on replica %d: AccessToken = %q, %v; want at-2, nil", i, i%3, toks[i], errs[i])
		}
	}
}

// A replica that loses the connection's fence after the provider answered
// writes nothing and says so; the next holder runs the interrupted-refresh
// recovery once: the rotated token is refused, the connection needs
// re-authorization with reason refresh_interrupted, and nothing loops.
func TestReplicas_FencedOutAfterAnswer(t *testing.T) {
	c := etcdtest.Start(t, 1)
	clk := &testClock{t: time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)}
	p := &rotatingProvider{lifetime: time.Hour, now: clk.Now, live: map[string]bool{}}
	rs := startReplicas(t, c, 2, p, clk, etcd.Options{}, vault.Config{})
	conn := connectOn(t, rs[0], rs, "alice")
	clk.Add(3 * time.Second) // past a forced refresh's debounce
	cli := c.Client(t)
	p.answered = func() {
		// The fence is lost while the provider answers (as when the lease
		// runs out in a pause): the owner key goes.
		if _, err := cli.Delete(context.Background(), "replicas/lock/conn/"+conn.ID+"/", clientv3.WithPrefix()); err != nil {
			t.Error(err)
		}
	}
	_, _, err := rs[0].v.AccessToken(t.Context(), vault.TokenRequest{ID: conn.ID, Force: true})
	if !errors.Is(err, vault.ErrUnavailable) {
		t.Fatalf("AccessToken on the fenced-out replica = %v; want ErrUnavailable", err)
	}
	if n := rs[0].v.FenceLost(); n != 1 {
		t.Errorf("FenceLost() = %d; want 1", n)
	}
	if got := drain(rs[0].outcomes); !slices.Contains(got, vault.RefreshFencedOut) {
		t.Errorf("refresh outcomes = %q; want one %q", got, vault.RefreshFencedOut)
	}
	// Nothing of the answer was written: the record still holds the old
	// grant, marked in flight.
	stored, err := rs[1].v.Get(t.Context(), conn.ID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.Grant.Tokens[0].AccessToken != "at-1" || stored.InFlight == nil {
		t.Fatalf("stored after the fenced-out refresh: token %q, in flight %v; want at-1, marked", stored.Grant.Tokens[0].AccessToken, stored.InFlight)
	}
	p.answered = nil
	_, _, err = rs[1].v.AccessToken(t.Context(), vault.TokenRequest{ID: conn.ID, Force: true})
	var pe *vault.ProviderError
	if !errors.As(err, &pe) || !errors.Is(err, vault.ErrReauthRequired) || pe.Code != vault.ReasonRefreshInterrupted {
		t.Fatalf("AccessToken on the next holder = %v; want ErrReauthRequired, %s", err, vault.ReasonRefreshInterrupted)
	}
	for range 3 {
		rs[1].v.AccessToken(t.Context(), vault.TokenRequest{ID: conn.ID, Force: true})
		rs[0].v.AccessToken(t.Context(), vault.TokenRequest{ID: conn.ID, Force: true})
	}
	if n, reuses := p.counts(); n != 2 || reuses != 1 {
		t.Errorf("provider refreshes = %d, reuses %d; want 2 (the lost one, the one retry), 1", n, reuses)
	}
}

// A fence whose lease would not outlive the provider call is not used: the
// refresh token is not presented.
func TestReplicas_LeaseTooShort_NotPresented(t *testing.T) {
	c := etcdtest.Start(t, 1)
	clk := &testClock{t: time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)}
	p := &rotatingProvider{lifetime: time.Hour, now: clk.Now, live: map[string]bool{}}
	rs := startReplicas(t, c, 1, p, clk, etcd.Options{LockTTL: 6 * time.Second}, vault.Config{FencedCallTimeout: time.Minute})
	conn := connectOn(t, rs[0], rs, "alice")
	clk.Add(3 * time.Second) // past a forced refresh's debounce
	tok, _, err := rs[0].v.AccessToken(t.Context(), vault.TokenRequest{ID: conn.ID, Force: true})
	if err != nil || tok.AccessToken != "at-1" {
		t.Errorf("AccessToken = %q, %v; want the still-valid at-1", tok.AccessToken, err)
	}
	if n, _ := p.counts(); n != 0 {
		t.Errorf("provider refreshes = %d; want 0", n)
	}
	if rs[0].v.FenceLost() != 1 {
		t.Errorf("FenceLost() = %d; want 1", rs[0].v.FenceLost())
	}
}

// Every replica's resident view follows the others: a connection created,
// refreshed, revoked on one is served so on the others, without asking the
// store. The delay is measured.
func TestReplicas_Follow(t *testing.T) {
	c := etcdtest.Start(t, 1)
	clk := &testClock{t: time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)}
	p := &rotatingProvider{lifetime: time.Hour, now: clk.Now, live: map[string]bool{}}
	rs := startReplicas(t, c, 3, p, clk, etcd.Options{}, vault.Config{})
	conn := connectOn(t, rs[0], rs, "alice")
	var delays []time.Duration
	clk.Add(3 * time.Second) // past a forced refresh's debounce
	for i := range 30 {
		from, to := rs[i%3], rs[(i+1)%3]
		tok, _, err := from.v.AccessToken(t.Context(), vault.TokenRequest{ID: conn.ID, Force: true})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		clk.Add(3 * time.Second) // past the forced refresh's debounce
		waitFor(t, "the refreshed token on another replica", func() bool {
			got, _, err := to.v.AccessToken(t.Context(), vault.TokenRequest{ID: conn.ID, MinValid: time.Second})
			return err == nil && got.AccessToken == tok.AccessToken
		})
		delays = append(delays, time.Since(start))
	}
	if n, reuses := p.counts(); n != 30 || reuses != 0 {
		t.Errorf("provider refreshes = %d, reuses %d; want 30, 0", n, reuses)
	}
	slices.Sort(delays)
	t.Logf("propagation of a refreshed token to another replica over %d refreshes: p50 %v, p99 %v, max %v",
		len(delays), delays[len(delays)/2], delays[len(delays)*99/100], delays[len(delays)-1])

	// Events: a subscriber on replica 0 sees what replica 2 writes, in
	// one order with replica 0's own.
	last, _ := rs[0].v.LastEventSequence()
	sub := rs[0].v.Subscribe(last, 16)
	defer sub.Close()
	if _, err := rs[2].v.Revoke(t.Context(), conn.ID, ""); err != nil {
		t.Fatal(err)
	}
	ectx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	ev, err := sub.Next(ectx)
	cancel()
	if err != nil || ev.Type != vault.EventRevoked || ev.Sequence != last+1 {
		t.Errorf("replica 0's subscriber got %+v, %v; want the revocation replica 2 wrote, sequence %d", ev.Type, err, last+1)
	}
	waitFor(t, "the revocation on replica 0", func() bool {
		_, _, err := rs[0].v.AccessToken(t.Context(), vault.TokenRequest{ID: conn.ID})
		return errors.Is(err, vault.ErrRevoked)
	})
	// Compaction of the history does not stop a live watch; a new
	// connection still arrives everywhere.
	c.Compact(t)
	connectOn(t, rs[1], rs, "bob")
	if n := rs[2].v.Len(); n != 2 {
		t.Errorf("replica 2 holds %d connections; want 2", n)
	}
}

func drain(ch chan string) []string {
	var out []string
	for {
		select {
		case s := <-ch:
			out = append(out, s)
		default:
			return out
		}
	}
}

// Keys rotated on one replica while every replica serves: the others read
// the new keyring as soon as a record sealed under the new term reaches
// them, and keep serving, refreshing and following.
func TestReplicas_RotateKeys_WhileServing(t *testing.T) {
	c := etcdtest.Start(t, 1)
	clk := &testClock{t: time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)}
	p := &rotatingProvider{lifetime: time.Hour, now: clk.Now, live: map[string]bool{}}
	rs := startReplicas(t, c, 2, p, clk, etcd.Options{}, vault.Config{})
	conn := connectOn(t, rs[0], rs, "alice")
	clk.Add(3 * time.Second)
	term, n, err := rs[0].v.RotateKeys(t.Context())
	if err != nil || n == 0 {
		t.Fatalf("RotateKeys = %d, %d, %v; want a new term, records re-sealed", term, n, err)
	}
	// Replica 1 refreshes the connection, whose record is now sealed under
	// a term it did not have.
	tok, _, err := rs[1].v.AccessToken(t.Context(), vault.TokenRequest{ID: conn.ID, Force: true})
	if err != nil {
		t.Fatalf("AccessToken on the other replica after the rotation = %v", err)
	}
	waitFor(t, "replica 0 to follow replica 1's refresh", func() bool {
		got, _, err := rs[0].v.AccessToken(t.Context(), vault.TokenRequest{ID: conn.ID, MinValid: time.Second})
		return err == nil && got.AccessToken == tok.AccessToken
	})
	// A connection created on replica 0 under the new term reaches 1.
	connectOn(t, rs[0], rs, "bob")
}

// Connect sessions and start-URL flows live in etcd like the rest: a
// session created on one replica opens on another, a flow started on one
// is bound on a second and completed on a third, once, and both expire.
func TestReplicas_SessionsAndBoundFlows(t *testing.T) {
	c := etcdtest.Start(t, 1)
	clk := &testClock{t: time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)}
	p := &rotatingProvider{lifetime: time.Hour, now: clk.Now, live: map[string]bool{}}
	rs := startReplicas(t, c, 3, p, clk, etcd.Options{}, vault.Config{
		StartURL: func(flow string) string { return "https://tv.example/connect/start?flow=" + flow },
	})
	tok, s, err := rs[0].v.CreateSession(t.Context(), vault.SessionRequest{Owner: "alice", TTL: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	got, err := rs[1].v.Session(t.Context(), tok)
	if err != nil || got.ID != s.ID || got.Owner != "alice" {
		t.Fatalf("Session on another replica = %+v, %v", got, err)
	}
	u, _, err := rs[0].v.StartConnect(t.Context(), vault.ConnectRequest{Owner: "alice", Provider: "fake"})
	if err != nil {
		t.Fatal(err)
	}
	su, _ := url.Parse(u)
	auth, err := rs[1].v.BeginConnect(t.Context(), su.Query().Get("flow"), "browser-a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rs[2].v.BeginConnect(t.Context(), su.Query().Get("flow"), "browser-b"); !errors.Is(err, vault.ErrFlowInvalid) {
		t.Errorf("second BeginConnect = %v; want ErrFlowInvalid", err)
	}
	au, _ := url.Parse(auth)
	cb := vault.CallbackRequest{Provider: "fake", State: au.Query().Get("state"), Code: "code", Binding: "browser-b"}
	if _, err := rs[2].v.CompleteConnect(t.Context(), cb); !errors.Is(err, vault.ErrBrowserMismatch) {
		t.Errorf("callback from another browser = %v; want ErrBrowserMismatch", err)
	}
	cb.Binding = "browser-a"
	if res, err := rs[2].v.CompleteConnect(t.Context(), cb); err != nil || res.Connection.Owner != "alice" {
		t.Fatalf("callback = %v, %v", res, err)
	}
	clk.Add(11 * time.Minute)
	if _, err := rs[2].v.Session(t.Context(), tok); !errors.Is(err, vault.ErrSessionInvalid) {
		t.Errorf("expired session = %v; want ErrSessionInvalid", err)
	}
	if n, err := rs[1].v.SweepStates(t.Context()); err != nil || n != 1 {
		t.Errorf("SweepStates = %d, %v; want 1", n, err)
	}
}

// A replica that loads in the background serves a token from etcd during
// its load, waits for the load on what else it is asked, and follows what
// the others wrote meanwhile from the revision its Open read.
func TestReplicas_LoadInBackground(t *testing.T) {
	c := etcdtest.Start(t, 1)
	clk := &testClock{t: time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)}
	p := &rotatingProvider{lifetime: time.Hour, now: clk.Now, live: map[string]bool{}}
	mk, err := seal.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	rs := startReplicasKeyed(t, c, mk, 1, p, clk, etcd.Options{}, vault.Config{})
	alice := connectOn(t, rs[0], rs, "alice")
	bob := connectOn(t, rs[0], rs, "bob")
	hold, reached := make(chan struct{}), make(chan struct{})
	late := startReplicasKeyed(t, c, mk, 1, p, clk, etcd.Options{}, vault.Config{LoadInBackground: true, Failpoint: func(name string) {
		if name == vault.FailpointLoad {
			close(reached)
			<-hold
		}
	}})[0]
	released := false
	release := func() {
		if !released {
			released = true
			close(hold)
		}
	}
	t.Cleanup(release)
	<-reached
	tok, _, err := late.v.AccessToken(t.Context(), vault.TokenRequest{ID: alice.ID})
	if err != nil || tok.AccessToken != alice.Grant.Tokens[0].AccessToken {
		t.Fatalf("AccessToken during the load = %q, %v; want alice's token from etcd", tok.AccessToken, err)
	}
	// Written by the other replica during the load: bob revoked, carol
	// connected.
	if _, err := rs[0].v.Revoke(t.Context(), bob.ID, ""); err != nil {
		t.Fatal(err)
	}
	carol := connectOn(t, rs[0], rs, "carol")
	got := make(chan error, 1)
	go func() {
		_, _, err := late.v.AccessToken(t.Context(), vault.TokenRequest{ID: bob.ID})
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("AccessToken(revoked) answered during the load: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	release()
	if err := <-got; !errors.Is(err, vault.ErrRevoked) {
		t.Fatalf("AccessToken(revoked during the load) = %v; want ErrRevoked", err)
	}
	waitFor(t, "carol on the late replica", func() bool {
		id, err := late.v.Lookup(t.Context(), vault.Selector{Owner: "carol", Provider: "fake"})
		return err == nil && id == carol.ID
	})
}
