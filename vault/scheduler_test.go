package vault_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// The scheduler's tests run in synctest bubbles, on fake time, against an
// in-memory store and a hand-written provider: no sockets, no files.

// memStore is an in-memory vault.Store.
type memStore struct {
	mu    sync.Mutex
	rev   uint64
	m     map[string]memVal
	stall atomic.Pointer[func()] // if set, the next Apply calls it first
}

type memVal struct {
	val []byte
	rev uint64
}

func newMemStore() *memStore { return &memStore{m: map[string]memVal{}} }

func (s *memStore) Get(ctx context.Context, key string) ([]byte, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[key]
	if !ok {
		return nil, 0, vault.ErrNotFound
	}
	return slices.Clone(v.val), v.rev, nil
}

func (s *memStore) Apply(ctx context.Context, ops ...vault.Op) ([]uint64, error) {
	if f := s.stall.Swap(nil); f != nil {
		(*f)()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, op := range ops {
		if op.IfRev >= 0 && uint64(op.IfRev) != s.m[op.Key].rev {
			return nil, vault.ErrConflict
		}
	}
	revs := make([]uint64, len(ops))
	for i, op := range ops {
		if op.Delete {
			delete(s.m, op.Key)
			continue
		}
		s.rev++
		s.m[op.Key] = memVal{slices.Clone(op.Value), s.rev}
		revs[i] = s.rev
	}
	return revs, nil
}

func (s *memStore) Take(ctx context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[key]
	if !ok {
		return nil, vault.ErrNotFound
	}
	delete(s.m, key)
	return v.val, nil
}

func (s *memStore) Scan(ctx context.Context, prefix, after string, fn func(string, []byte, uint64) (bool, error)) error {
	s.mu.Lock()
	var keys []string
	for k := range s.m {
		if strings.HasPrefix(k, prefix) && k > after {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	vals := make([]memVal, len(keys))
	for i, k := range keys {
		vals[i] = s.m[k]
	}
	s.mu.Unlock()
	for i, k := range keys {
		if more, err := fn(k, vals[i].val, vals[i].rev); err != nil || !more {
			return err
		}
	}
	return nil
}

func (s *memStore) Close() error { return nil }

// schedFake is a provider that rotates refresh tokens strictly: one current
// refresh token per grant, and presenting an older one counts as reuse and
// kills the grant. It records every refresh, and how many ran at once.
type schedFake struct {
	now       func() time.Time
	lifetime  time.Duration // 0: tokens without expiry
	delay     time.Duration // each Refresh and Validate takes this long
	validate  bool          // Validate is supported (see validating)
	noRefresh bool          // tokens are issued without a refresh token

	mu         sync.Mutex
	n          int
	current    map[string]string    // grant -> its refresh token
	issuedAt   map[string]time.Time // refresh token -> when issued
	inFlight   map[string]int       // grant -> refreshes running
	running    int
	maxRunning int
	overlaps   int // a grant refreshed twice at once
	reuse      int
	refreshes  []refreshRec
	validates  map[string]int
	dead       map[string]bool // grants the provider rejects
	failErr    error           // every Refresh and Validate fails with it
}

type refreshRec struct {
	grant string
	at    time.Time
	age   time.Duration // of the token refreshed
}

func newSchedFake(lifetime time.Duration) *schedFake {
	return &schedFake{
		now: time.Now, lifetime: lifetime,
		current: map[string]string{}, issuedAt: map[string]time.Time{}, inFlight: map[string]int{},
		validates: map[string]int{}, dead: map[string]bool{},
	}
}

func (p *schedFake) PKCE() bool { return true }

func (p *schedFake) AuthURL(r vault.AuthRequest) (string, error) {
	return "https://auth.example/authorize?state=" + url.QueryEscape(r.State), nil
}

// tokenLocked issues a new token pair for grant g.
func (p *schedFake) tokenLocked(g string) vault.Token {
	p.n++
	now := p.now()
	t := vault.Token{AccessToken: fmt.Sprintf("at-%d", p.n), RefreshToken: fmt.Sprintf("rt-%d", p.n), TokenType: "Bearer"}
	if p.noRefresh {
		t.RefreshToken = ""
	}
	if p.lifetime > 0 {
		t.Expiry = now.Add(p.lifetime)
	}
	p.current[g] = t.RefreshToken
	p.issuedAt[t.RefreshToken] = now
	return t
}

func (p *schedFake) Exchange(ctx context.Context, r vault.ExchangeRequest) (vault.Grant, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := fmt.Sprintf("g%d", len(p.current)+1)
	return vault.Grant{Account: g, Tokens: []vault.Token{p.tokenLocked(g)}}, nil
}

func (p *schedFake) Refresh(ctx context.Context, gr vault.Grant, cred string) (vault.Grant, error) {
	g := gr.Account
	p.mu.Lock()
	p.inFlight[g]++
	if p.inFlight[g] > 1 {
		p.overlaps++
	}
	p.running++
	p.maxRunning = max(p.maxRunning, p.running)
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.inFlight[g]--
		p.running--
		p.mu.Unlock()
	}()
	time.Sleep(p.delay)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failErr != nil {
		return vault.Grant{}, p.failErr
	}
	rt := gr.Token(cred).RefreshToken
	if p.dead[g] {
		return vault.Grant{}, &vault.ProviderError{Kind: vault.ErrReauthRequired, Code: "invalid_grant"}
	}
	if p.current[g] != rt {
		p.reuse++
		p.dead[g] = true
		return vault.Grant{}, &vault.ProviderError{Kind: vault.ErrReauthRequired, Code: "invalid_grant"}
	}
	now := p.now()
	p.refreshes = append(p.refreshes, refreshRec{g, now, now.Sub(p.issuedAt[rt])})
	gr.Tokens = []vault.Token{p.tokenLocked(g)}
	return gr, nil
}

func (p *schedFake) Revoke(ctx context.Context, g vault.Grant) error { return nil }

// validatingFake is a schedFake that can validate grants.
type validatingFake struct{ *schedFake }

func (p validatingFake) Validate(ctx context.Context, gr vault.Grant) error {
	time.Sleep(p.delay)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failErr != nil {
		return p.failErr
	}
	p.validates[gr.Account]++
	if p.dead[gr.Account] {
		return &vault.ProviderError{Kind: vault.ErrReauthRequired, Code: "token_revoked"}
	}
	return nil
}

func (p *schedFake) refreshCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.refreshes)
}

func (p *schedFake) log() []refreshRec {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.refreshes)
}

func (p *schedFake) validated(g string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.validates[g]
}

// counts returns the reuse, overlap and concurrency counters.
func (p *schedFake) counts() (reuse, overlaps, maxRunning int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reuse, p.overlaps, p.maxRunning
}

func (p *schedFake) set(f func(p *schedFake)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

// schedEnv is a vault on a memStore with one provider, "fake".
type schedEnv struct {
	t   *testing.T
	st  *memStore
	mk  seal.MasterKey
	cfg vault.Config
	v   *vault.Vault
	p   *schedFake
}

func newSchedEnv(t *testing.T, p *schedFake, policy vault.RefreshPolicy) *schedEnv {
	t.Helper()
	mk, err := seal.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	var prov vault.Provider = p
	if p.validate {
		prov = validatingFake{p}
	}
	e := &schedEnv{t: t, st: newMemStore(), mk: mk, p: p, cfg: vault.Config{
		Providers:       map[string]vault.Provider{"fake": prov},
		RefreshPolicies: map[string]vault.RefreshPolicy{"fake": policy},
		Now:             p.now,
	}}
	e.open()
	return e
}

// open opens (or reopens: a restart) the vault on the env's store.
func (e *schedEnv) open() {
	e.t.Helper()
	kr, err := vault.OpenKeyring(context.Background(), e.st, e.mk)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := e.cfg
	cfg.Store, cfg.Keyring = e.st, kr
	if e.v, err = vault.Open(context.Background(), cfg); err != nil {
		e.t.Fatal(err)
	}
}

func (e *schedEnv) connect(owner string) *vault.Connection {
	e.t.Helper()
	ctx := context.Background()
	u, _, err := e.v.StartConnect(ctx, vault.ConnectRequest{Binding: "b", Owner: owner, Provider: "fake"})
	if err != nil {
		e.t.Fatal(err)
	}
	pu, _ := url.Parse(u)
	res, err := e.v.CompleteConnect(ctx, vault.CallbackRequest{Binding: "b", Provider: "fake", State: pu.Query().Get("state"), Code: "code"})
	if err != nil {
		e.t.Fatal(err)
	}
	return res.Connection
}

// run starts a scheduler and returns a function that stops it and waits
// for it to return.
func (e *schedEnv) run(cfg vault.SchedulerConfig) (*vault.Scheduler, func()) {
	s := vault.NewScheduler(e.v, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	return s, func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			e.t.Errorf("Run = %v; want context.Canceled", err)
		}
	}
}

func TestScheduler_RefreshesAheadOfExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newSchedFake(time.Hour)
		e := newSchedEnv(t, p, vault.RefreshPolicy{})
		var ids []string
		for i := range 20 {
			ids = append(ids, e.connect(fmt.Sprint("user-", i)).ID)
		}
		_, stop := e.run(vault.SchedulerConfig{})
		time.Sleep(5 * time.Hour)
		stop()

		// 75% of the lifetime, less up to 10% of jitter: 39 to 45 minutes.
		log := p.log()
		for _, r := range log {
			if r.age < 39*time.Minute || r.age > 45*time.Minute {
				t.Errorf("grant %s refreshed at age %v; want 39m..45m", r.grant, r.age)
			}
		}
		if n := len(log); n < 20*6 || n > 20*8 {
			t.Errorf("%d refreshes of 20 connections in 5h; want 6 to 8 each", n)
		}
		for _, id := range ids {
			c, _ := e.v.Get(context.Background(), id)
			if tok := c.Grant.Token(""); c.Status != vault.StatusActive || !tok.ValidFor(time.Now(), 5*time.Minute) {
				t.Errorf("%s: %s, token valid until %v; want active and valid 5m more", id, c.Status, tok.Expiry)
			}
		}
		if reuse, overlaps, _ := p.counts(); reuse != 0 || overlaps != 0 {
			t.Errorf("reuse %d, overlapping refreshes %d; want 0, 0", reuse, overlaps)
		}
	})
}

// TestScheduler_ConnectionsCreatedTogether_Spread: jitter keeps a thousand
// connections made in the same instant from refreshing in the same instant.
func TestScheduler_ConnectionsCreatedTogether_Spread(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newSchedFake(time.Hour)
		e := newSchedEnv(t, p, vault.RefreshPolicy{RateLimit: 1000, Burst: 1000})
		const n = 1000
		for i := range n {
			e.connect(fmt.Sprint("user-", i))
		}
		start := time.Now()
		_, stop := e.run(vault.SchedulerConfig{Concurrency: 64})
		time.Sleep(time.Hour)
		stop()
		perMinute := map[int]int{}
		for _, r := range p.log() {
			perMinute[int(r.at.Sub(start)/time.Minute)]++
		}
		// The jitter spreads them over 6 minutes (39m to 45m): about 167
		// a minute; a storm would be all 1000 in one.
		if len(perMinute) < 6 {
			t.Errorf("refreshes fell in %d distinct minutes; want at least 6: %v", len(perMinute), perMinute)
		}
		for m, k := range perMinute {
			if k > 2*n/6 {
				t.Errorf("%d refreshes in minute %d; want at most %d", k, m, 2*n/6)
			}
		}
	})
}

// TestScheduler_WithOnDemand_NeverTwiceAtOnce races the scheduler against
// callers who ask for tokens, some of them forcing a refresh: the provider
// must never see one grant refreshed twice at once, nor a refresh token
// used twice.
func TestScheduler_WithOnDemand_NeverTwiceAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// No provider delay here: the vault holds the connection's lock
		// across the provider call, and a goroutine waiting on a mutex
		// keeps a synctest bubble's clock from advancing.
		p := newSchedFake(10 * time.Minute)
		e := newSchedEnv(t, p, vault.RefreshPolicy{})
		var ids []string
		for i := range 10 {
			ids = append(ids, e.connect(fmt.Sprint("user-", i)).ID)
		}
		_, stop := e.run(vault.SchedulerConfig{Concurrency: 4})
		ctx := context.Background()
		var wg sync.WaitGroup
		var served, expired atomic.Int32
		for r := range 8 {
			wg.Go(func() {
				for i := range 2000 { // 2000 calls, 1 a second: about half an hour
					id := ids[(r+i)%len(ids)]
					tok, _, err := e.v.AccessToken(ctx, vault.TokenRequest{ID: id, MinValid: time.Duration(i%7) * time.Minute, Force: i%50 == 0})
					if err != nil {
						t.Errorf("AccessToken(%s) = %v", id, err)
						return
					}
					served.Add(1)
					if !tok.Expiry.After(time.Now()) {
						expired.Add(1)
					}
					time.Sleep(time.Second)
				}
			})
		}
		wg.Wait()
		stop()
		if reuse, overlaps, _ := p.counts(); overlaps != 0 || reuse != 0 {
			t.Errorf("overlapping refreshes %d, reused refresh tokens %d; want 0, 0", overlaps, reuse)
		}
		if expired.Load() != 0 {
			t.Errorf("%d of %d tokens served expired", expired.Load(), served.Load())
		}
	})
}

func TestScheduler_Reauth_DroppedThenReconnectRescheduled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newSchedFake(time.Hour)
		e := newSchedEnv(t, p, vault.RefreshPolicy{})
		alice := e.connect("alice")
		e.connect("bob")
		s, stop := e.run(vault.SchedulerConfig{})
		defer stop()
		synctest.Wait()
		if st := s.Stats(); st.Scheduled != 2 {
			t.Fatalf("Scheduled = %d; want 2", st.Scheduled)
		}
		p.set(func(p *schedFake) { p.dead[alice.Grant.Account] = true })
		time.Sleep(50 * time.Minute)
		c, _ := e.v.Get(context.Background(), alice.ID)
		if c.Status != vault.StatusNeedsReauth || c.StatusReason != "invalid_grant" {
			t.Fatalf("alice: %s/%s; want needs_reauth/invalid_grant", c.Status, c.StatusReason)
		}
		tr := c.Transitions[len(c.Transitions)-1]
		if tr.From != vault.StatusActive || tr.To != vault.StatusNeedsReauth || tr.Reason != "invalid_grant" || tr.At.IsZero() {
			t.Errorf("last transition = %+v; want active -> needs_reauth, invalid_grant, with its time", tr)
		}
		if st := s.Stats(); st.Scheduled != 1 || st.Reauth != 1 {
			t.Errorf("Scheduled %d, Reauth %d; want 1, 1", st.Scheduled, st.Reauth)
		}
		// Not retried: hours pass and alice's grant sees no call.
		before := len(p.log())
		time.Sleep(5 * time.Hour)
		for _, r := range p.log()[before:] {
			if r.grant == alice.Grant.Account {
				t.Fatalf("a dead grant was refreshed again")
			}
		}
		// Reconnecting returns alice to active and to the schedule.
		again := e.connect("alice")
		if again.ID != alice.ID || again.Status != vault.StatusActive {
			t.Fatalf("reconnect = %s/%s; want %s/active", again.ID, again.Status, alice.ID)
		}
		synctest.Wait()
		if st := s.Stats(); st.Scheduled != 2 {
			t.Errorf("Scheduled after reconnect = %d; want 2", st.Scheduled)
		}
		time.Sleep(time.Hour)
		refreshed := false
		for _, r := range p.log() {
			refreshed = refreshed || r.grant == again.Grant.Account
		}
		if !refreshed {
			t.Error("the reconnected grant was not refreshed within its lifetime")
		}
	})
}

func TestScheduler_Transient_BacksOffAndKeepsServing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newSchedFake(time.Hour)
		e := newSchedEnv(t, p, vault.RefreshPolicy{})
		c := e.connect("alice")
		s, stop := e.run(vault.SchedulerConfig{})
		defer stop()
		p.set(func(p *schedFake) {
			p.failErr = &vault.ProviderError{Kind: vault.ErrUnavailable, Code: "http_503", RetryAfter: 30 * time.Second}
		})
		serveFor := func(d time.Duration) {
			end := time.Now().Add(d)
			for time.Now().Before(end) {
				tok, _, err := e.v.AccessToken(context.Background(), vault.TokenRequest{ID: c.ID, MinValid: time.Minute})
				if err != nil || tok.AccessToken != "at-1" {
					t.Fatalf("AccessToken during the outage = %q, %v; want the still-valid at-1", tok.AccessToken, err)
				}
				time.Sleep(10 * time.Second)
			}
		}
		time.Sleep(46 * time.Minute) // past the refresh time
		serveFor(10 * time.Minute)
		got, _ := e.v.Get(context.Background(), c.ID)
		// Backoff from 1s doubling, never under Retry-After (30s): at
		// most 20 attempts in 10 minutes, and at least a few.
		if n := got.Failures; n < 3 || n > 20 {
			t.Errorf("%d attempts in 10 minutes of outage; want 3..20", n)
		}
		if got.Status != vault.StatusActive || got.LastError != "http_503" {
			t.Errorf("during outage: %s, last error %q; want active, http_503", got.Status, got.LastError)
		}
		p.set(func(p *schedFake) { p.failErr = nil })
		time.Sleep(11 * time.Minute) // the longest backoff is 10 minutes
		got, _ = e.v.Get(context.Background(), c.ID)
		if tok := got.Grant.Token(""); tok.AccessToken == "at-1" || got.Failures != 0 || got.Status != vault.StatusActive {
			t.Errorf("after recovery: token %s, failures %d, %s; want a new token, 0, active", tok.AccessToken, got.Failures, got.Status)
		}
		if st := s.Stats(); st.Refreshes != 1 || st.Failed == 0 {
			t.Errorf("stats %+v; want 1 refresh and some failures", st)
		}
	})
}

// TestScheduler_ClockJumps: a clock that jumps forward spreads the overdue
// refreshes over the time they can still wait instead of running them all
// at once; a clock that jumps back causes nothing.
func TestScheduler_ClockJumps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var offset atomic.Int64
		now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
		p := newSchedFake(time.Hour)
		p.now = now
		e := newSchedEnv(t, p, vault.RefreshPolicy{RateLimit: 10000, Burst: 10000})
		const n = 500
		for i := range n {
			e.connect(fmt.Sprint("user-", i))
		}
		_, stop := e.run(vault.SchedulerConfig{Concurrency: 64})
		defer stop()
		time.Sleep(time.Minute)

		// Forward 50 minutes: every refresh (due 39m..45m) is overdue, but
		// the tokens have 5 to 10 minutes left before min_valid.
		offset.Add(int64(50 * time.Minute))
		jumped := now()
		time.Sleep(15 * time.Minute)
		perMinute := map[int]int{}
		for _, r := range p.log() {
			perMinute[int(r.at.Sub(jumped)/time.Minute)]++
		}
		if got := p.refreshCount(); got != n {
			t.Fatalf("%d refreshes after the jump; want each of the %d connections once", got, n)
		}
		for m, k := range perMinute {
			if k > n/2 {
				t.Errorf("%d refreshes in minute %d after the jump; want them spread (at most %d a minute): %v", k, m, n/2, perMinute)
			}
		}
		if len(perMinute) < 3 {
			t.Errorf("refreshes after the jump fell in %d minutes; want at least 3: %v", len(perMinute), perMinute)
		}
		for _, r := range p.log() {
			if r.age > 55*time.Minute+time.Minute {
				t.Errorf("a token was refreshed at age %v, past expiry - min_valid", r.age)
			}
		}

		// Back an hour: nothing is due for a long while, and nothing runs.
		offset.Add(int64(-time.Hour))
		before := p.refreshCount()
		time.Sleep(30 * time.Minute)
		if got := p.refreshCount() - before; got != 0 {
			t.Errorf("%d refreshes in the 30 minutes after the clock went back; want 0", got)
		}
		// Once the clock catches up, refreshes resume, once each.
		time.Sleep(2 * time.Hour)
		if got := p.refreshCount() - before; got < n || got > 3*n {
			t.Errorf("%d refreshes after catching up; want between %d and %d", got, n, 3*n)
		}
		if reuse, overlaps, _ := p.counts(); reuse != 0 || overlaps != 0 {
			t.Errorf("reuse %d, overlaps %d; want 0, 0", reuse, overlaps)
		}
	})
}

// TestScheduler_Restart_RebuildsFromStore: a new vault on the same store
// schedules every connection again, without a burst at start.
func TestScheduler_Restart_RebuildsFromStore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newSchedFake(time.Hour)
		e := newSchedEnv(t, p, vault.RefreshPolicy{})
		const n = 100
		for i := range n {
			e.connect(fmt.Sprint("user-", i))
			time.Sleep(20 * time.Second) // issued over 33 minutes
		}
		_, stop := e.run(vault.SchedulerConfig{})
		time.Sleep(10 * time.Minute)
		stop()
		e.open() // restart
		s, stop := e.run(vault.SchedulerConfig{})
		defer stop()
		synctest.Wait()
		if st := s.Stats(); st.Scheduled != n {
			t.Fatalf("Scheduled after restart = %d; want %d", st.Scheduled, n)
		}
		before := p.refreshCount()
		time.Sleep(time.Minute)
		if got := p.refreshCount() - before; got > 10 {
			t.Errorf("%d refreshes in the first minute after restart; want no burst", got)
		}
		time.Sleep(2 * time.Hour)
		for _, r := range p.log() {
			if r.age > 55*time.Minute {
				t.Errorf("refresh at age %v; want before expiry - min_valid", r.age)
			}
		}
	})
}

func TestScheduler_ConcurrencyAndRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newSchedFake(time.Minute)
		p.delay = time.Second
		e := newSchedEnv(t, p, vault.RefreshPolicy{RateLimit: 5, Burst: 2})
		const n = 60
		for i := range n {
			e.connect(fmt.Sprint("user-", i))
		}
		time.Sleep(2 * time.Minute) // all expired: due at once
		start := time.Now()
		_, stop := e.run(vault.SchedulerConfig{Concurrency: 3})
		time.Sleep(time.Minute)
		stop()
		if _, _, running := p.counts(); running > 3 {
			t.Errorf("%d refreshes ran at once; want at most 3", running)
		}
		perSecond := map[int]int{}
		for _, r := range p.log() {
			perSecond[int(r.at.Sub(start)/time.Second)]++
		}
		for s, k := range perSecond {
			if k > 5+2 {
				t.Errorf("%d refreshes in second %d; want at most rate 5 + burst 2", k, s)
			}
		}
		if got := p.refreshCount(); got < n {
			t.Errorf("%d refreshes; want all %d expired connections refreshed within a minute", got, n)
		}
	})
}

func TestScheduler_RetryAfter_PausesProvider(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newSchedFake(time.Minute)
		e := newSchedEnv(t, p, vault.RefreshPolicy{})
		for i := range 50 {
			e.connect(fmt.Sprint("user-", i))
		}
		var calls atomic.Int32
		p.set(func(p *schedFake) {
			p.failErr = &vault.ProviderError{Kind: vault.ErrUnavailable, Code: "rate_limited", RetryAfter: 10 * time.Minute}
		})
		time.Sleep(2 * time.Minute) // all expired
		_, stop := e.run(vault.SchedulerConfig{Concurrency: 1})
		defer stop()
		time.Sleep(5 * time.Minute)
		for _, id := range e.ids() {
			c, _ := e.v.Get(context.Background(), id)
			calls.Add(int32(c.Failures))
		}
		// The first 429 pauses the provider for 10 minutes: one call, not
		// one per connection.
		if n := calls.Load(); n != 1 {
			t.Errorf("%d calls within Retry-After; want 1", n)
		}
	})
}

func (e *schedEnv) ids() []string {
	cs, _, err := e.v.List(context.Background(), vault.Filter{}, "", 10000)
	if err != nil {
		e.t.Fatal(err)
	}
	var ids []string
	for _, c := range cs {
		ids = append(ids, c.ID)
	}
	return ids
}

func TestScheduler_Validates_LongLivedTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newSchedFake(0) // tokens without expiry (GitHub OAuth apps)
		p.validate = true
		e := newSchedEnv(t, p, vault.RefreshPolicy{ValidateInterval: time.Hour})
		alice, bob := e.connect("alice"), e.connect("bob")
		s, stop := e.run(vault.SchedulerConfig{})
		defer stop()
		time.Sleep(3*time.Hour + time.Minute)
		if v := p.validated(alice.Grant.Account); v < 3 || v > 4 {
			t.Errorf("alice validated %d times in 3h; want 3 or 4", v)
		}
		c, _ := e.v.Get(context.Background(), alice.ID)
		if c.LastValidatedAt.IsZero() || time.Since(c.LastValidatedAt) > time.Hour {
			t.Errorf("LastValidatedAt = %v; want within the last hour", c.LastValidatedAt)
		}
		if p.refreshCount() != 0 {
			t.Error("a token without expiry was refreshed")
		}
		// The user revokes bob's grant at the provider: found within an
		// interval, before anyone asks for the token.
		p.set(func(p *schedFake) { p.dead[bob.Grant.Account] = true })
		time.Sleep(time.Hour + 10*time.Minute)
		c, _ = e.v.Get(context.Background(), bob.ID)
		if c.Status != vault.StatusNeedsReauth || c.StatusReason != "token_revoked" {
			t.Errorf("bob: %s/%s; want needs_reauth/token_revoked", c.Status, c.StatusReason)
		}
		n := p.validated(bob.Grant.Account)
		time.Sleep(3 * time.Hour)
		if p.validated(bob.Grant.Account) != n {
			t.Error("a dead grant was validated again")
		}
		if st := s.Stats(); st.Scheduled != 1 || st.Reauth != 1 {
			t.Errorf("stats %+v; want 1 scheduled, 1 reauth", st)
		}
	})
}

// TestScheduler_ExpiresUnrenewableGrants: a grant issued without a refresh
// token expires with its token. A read after that moves the connection to
// needs_reauth (token_expired) at once; so does the scheduler when the
// token dies, before anyone asks, without calling the provider.
func TestScheduler_ExpiresUnrenewableGrants(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		p := newSchedFake(time.Hour)
		p.noRefresh = true
		e := newSchedEnv(t, p, vault.RefreshPolicy{})
		read, swept := e.connect("reader"), e.connect("swept")
		status := func(c *vault.Connection) string {
			got, err := e.v.Get(ctx, c.ID)
			if err != nil {
				t.Fatal(err)
			}
			return string(got.Status) + "/" + got.StatusReason
		}

		time.Sleep(59 * time.Minute)
		if _, _, err := e.v.AccessToken(ctx, vault.TokenRequest{ID: read.ID}); err != nil {
			t.Errorf("AccessToken before expiry = %v; want the token", err)
		}
		time.Sleep(2 * time.Minute)
		_, _, err := e.v.AccessToken(ctx, vault.TokenRequest{ID: read.ID})
		var pe *vault.ProviderError
		if !errors.As(err, &pe) || !errors.Is(err, vault.ErrReauthRequired) || pe.Code != vault.ReasonTokenExpired {
			t.Errorf("AccessToken after expiry = %v; want ErrReauthRequired, token_expired", err)
		}
		if got := status(read); got != "needs_reauth/token_expired" {
			t.Errorf("read after expiry: %s; want needs_reauth/token_expired", got)
		}
		if got := status(swept); got != "active/" {
			t.Errorf("unread, no scheduler: %s; want active until something looks", got)
		}

		s, stop := e.run(vault.SchedulerConfig{})
		defer stop()
		time.Sleep(time.Minute)
		if got := status(swept); got != "needs_reauth/token_expired" {
			t.Errorf("with the scheduler: %s; want needs_reauth/token_expired", got)
		}
		time.Sleep(3 * time.Hour)
		if st := s.Stats(); st.Reauth != 1 || st.Refreshes != 0 || st.Validated != 0 || st.Scheduled != 0 {
			t.Errorf("stats %+v; want the one expiry, nothing scheduled after", st)
		}
		if p.refreshCount() != 0 {
			t.Error("the provider was asked to refresh a grant without a refresh token")
		}

		// A token expiring later is expired by the scheduler when it dies.
		later := e.connect("later")
		time.Sleep(59 * time.Minute)
		if got := status(later); got != "active/" {
			t.Errorf("before expiry: %s; want active", got)
		}
		time.Sleep(2 * time.Minute)
		if got := status(later); got != "needs_reauth/token_expired" {
			t.Errorf("after expiry: %s; want needs_reauth/token_expired", got)
		}
	})
}

func TestScheduler_ValidateTransient_BacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newSchedFake(0)
		p.validate = true
		e := newSchedEnv(t, p, vault.RefreshPolicy{ValidateInterval: time.Hour})
		e.connect("alice")
		var failures atomic.Int32
		p.set(func(p *schedFake) { p.failErr = &vault.ProviderError{Kind: vault.ErrUnavailable, Code: "http_503"} })
		s, stop := e.run(vault.SchedulerConfig{})
		defer stop()
		time.Sleep(2 * time.Hour)
		failures.Store(int32(s.Stats().Failed))
		// Exponential from 1s, capped at 10 minutes: about 20 in the
		// hour after the first failure; a loop would be thousands.
		if n := failures.Load(); n < 5 || n > 30 {
			t.Errorf("%d failed validations in an hour of outage; want 5..30", n)
		}
	})
}

// TestScheduler_TokenLifetime: a token that came without expires_in gets
// the configured lifetime, and is refreshed ahead of it.
func TestScheduler_TokenLifetime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newSchedFake(0)
		e := newSchedEnv(t, p, vault.RefreshPolicy{TokenLifetime: 2 * time.Hour})
		c := e.connect("alice")
		if got, want := c.Grant.Token("").Expiry, time.Now().Add(2*time.Hour); !got.Equal(want) {
			t.Fatalf("Expiry = %v; want issue + token_lifetime = %v", got, want)
		}
		_, stop := e.run(vault.SchedulerConfig{})
		defer stop()
		time.Sleep(3 * time.Hour)
		log := p.log()
		if len(log) == 0 || log[0].age < 78*time.Minute || log[0].age > 90*time.Minute {
			t.Fatalf("refreshes %+v; want the first at 78m..90m", log)
		}
		got, _ := e.v.Get(context.Background(), c.ID)
		if exp := got.Grant.Token("").Expiry; exp.IsZero() {
			t.Error("the refreshed token has no expiry")
		}
	})
}

func TestScheduler_OneAtATime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newSchedEnv(t, newSchedFake(time.Hour), vault.RefreshPolicy{})
		_, stop := e.run(vault.SchedulerConfig{})
		defer stop()
		synctest.Wait()
		err := vault.NewScheduler(e.v, vault.SchedulerConfig{}).Run(context.Background())
		if err == nil {
			t.Error("a second scheduler ran on the same vault")
		}
	})
}

// TestVault_OnChange_SeesEveryCommit: the hook sees creation, refreshes and
// the move to needs_reauth, with before and after.
func TestVault_OnChange_SeesEveryCommit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newSchedFake(time.Hour)
		e := newSchedEnv(t, p, vault.RefreshPolicy{})
		var mu sync.Mutex
		var seen []string
		e.cfg.OnChange = func(old, new *vault.Connection) {
			mu.Lock()
			defer mu.Unlock()
			from := "nil"
			if old != nil {
				from = fmt.Sprintf("%s/%d", old.Status, old.Generation)
			}
			seen = append(seen, fmt.Sprintf("%s->%s/%d", from, new.Status, new.Generation))
		}
		e.open()
		c := e.connect("alice")
		time.Sleep(time.Hour)
		e.v.AccessToken(context.Background(), vault.TokenRequest{ID: c.ID}) // marker, then new grant
		time.Sleep(time.Minute)
		p.set(func(p *schedFake) { p.dead[c.Grant.Account] = true })
		e.v.Refresh(context.Background(), c.ID, "") // marker, then needs_reauth
		want := "[nil->active/1 active/1->active/2 active/2->active/3 active/3->active/4 active/4->needs_reauth/5]"
		if got := fmt.Sprint(seen); got != want {
			t.Errorf("OnChange saw %s; want %s", got, want)
		}
	})
}

func TestVault_Failpoints_InOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newSchedEnv(t, newSchedFake(time.Hour), vault.RefreshPolicy{})
		var seen []string
		e.cfg.Failpoint = func(name string) { seen = append(seen, name) }
		e.open()
		c := e.connect("alice")
		time.Sleep(time.Minute)
		if _, err := e.v.Refresh(context.Background(), c.ID, ""); err != nil {
			t.Fatal(err)
		}
		want := []string{vault.FailpointBeforeProviderCall, vault.FailpointAfterProviderAnswer, vault.FailpointAfterCommit}
		if !slices.Equal(seen, want) {
			t.Errorf("failpoints %q; want %q", seen, want)
		}
	})
}

// TestScheduler_StallThenNoBurst: a store that stands still for a while
// (a slow fsync) while the dispatcher keeps starting actions must not make
// them reach the provider all at once when it moves again.
func TestScheduler_StallThenNoBurst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newSchedFake(time.Minute)
		e := newSchedEnv(t, p, vault.RefreshPolicy{RateLimit: 5, Burst: 2})
		const n = 60
		for i := range n {
			e.connect(fmt.Sprint("user-", i))
		}
		time.Sleep(2 * time.Minute) // all expired: due at once
		stall := func() { time.Sleep(5 * time.Second) }
		e.st.stall.Store(&stall)
		start := time.Now()
		_, stop := e.run(vault.SchedulerConfig{Concurrency: n})
		time.Sleep(time.Minute)
		stop()
		perSecond := map[int]int{}
		for _, r := range p.log() {
			perSecond[int(r.at.Sub(start)/time.Second)]++
		}
		for s, k := range perSecond {
			if k > 5+2 {
				t.Errorf("%d requests reached the provider in second %d; want at most rate 5 + burst 2: %v", k, s, perSecond)
			}
		}
		if got := p.refreshCount(); got < n {
			t.Errorf("%d refreshes; want all %d", got, n)
		}
	})
}
