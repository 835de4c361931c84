package vault_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenvault/tokenvault/vault"
)

// TestSchedulerSpread measures, in virtual time (a synctest bubble), how
// evenly the real Scheduler spreads 100,000 connections' refreshes over
// several token lifetimes: the busiest second against the mean, and the
// least validity a token had left when it was refreshed. The machine the
// wall-clock command (cmd/tokenvault-bench) runs on is too loaded for it to
// measure the scheduler rather than the host; here time moves only when
// every goroutine waits, so the figures are the scheduler's own.
//
// The setup is cmd/tokenvault-bench's: one-hour tokens issued uniformly
// over the 70% of a lifetime before the start (a restart of a running
// fleet), the sidecar's concurrency (16), a rate limit of 2.5 times the
// mean the connections need with bursts of a twentieth of it. What 6× and
// 60× change there is how long a refresh takes in simulated time: one
// refresh (provider round trip and commit) of -latency real time lasts
// scale × latency simulated. It reports, does not assert, the spread; it
// asserts only that no token was refreshed at or after its expiry.
//
//	TOKENVAULT_SPREAD=1 go test ./vault -run TestSchedulerSpread -v -timeout 30m
//
// TOKENVAULT_SPREAD_CONNECTIONS, _LIFETIMES and _LATENCY change the
// defaults (100000, 3, 2ms).
func TestSchedulerSpread(t *testing.T) {
	if os.Getenv("TOKENVAULT_SPREAD") == "" {
		t.Skip("a measurement: set TOKENVAULT_SPREAD=1 (see the comment)")
	}
	n := envInt(t, "TOKENVAULT_SPREAD_CONNECTIONS", 100000)
	lifetimes := envInt(t, "TOKENVAULT_SPREAD_LIFETIMES", 3)
	latency := 2 * time.Millisecond
	if s := os.Getenv("TOKENVAULT_SPREAD_LATENCY"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		latency = d
	}
	for _, scale := range []int{6, 60} {
		t.Run(fmt.Sprintf("%dx", scale), func(t *testing.T) {
			r := measureSpread(t, n, lifetimes, time.Hour, time.Duration(scale)*latency)
			t.Logf("%d connections, %d lifetimes of 1h, refresh takes %v simulated: %d refreshes, mean %.1f/s, "+
				"busiest second %d = %.2f x mean (p99.9 second %.2f x, p99 %.2f x); least validity left at refresh %v; "+
				"expired at the end %d, not active %d",
				n, lifetimes, time.Duration(scale)*latency, r.total, r.mean, r.busiest, float64(r.busiest)/r.mean,
				r.p999/r.mean, r.p99/r.mean, r.minLeft.Round(time.Second), r.expired, r.inactive)
			if r.minLeft <= 0 {
				t.Errorf("a token was refreshed %v after its expiry", -r.minLeft)
			}
			if r.expired > 0 || r.inactive > 0 {
				t.Errorf("%d connections expired and %d left active status", r.expired, r.inactive)
			}
		})
	}
}

func envInt(t *testing.T, name string, def int) int {
	if s := os.Getenv(name); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v <= 0 {
			t.Fatalf("%s=%q: want a positive integer", name, s)
		}
		return v
	}
	return def
}

type spreadResult struct {
	total, busiest    int
	mean, p99, p999   float64
	minLeft           time.Duration
	expired, inactive int
}

// spreadProvider issues tokens of one lifetime at its clock's time, takes
// delay per refresh, and records each refresh's second and how much
// validity the refreshed token had left.
type spreadProvider struct {
	now      func() time.Time
	lifetime time.Duration
	delay    time.Duration
	n        atomic.Int64

	start     time.Time
	mu        sync.Mutex
	perSecond []int32
	minLeft   time.Duration
	total     int
}

func (p *spreadProvider) PKCE() bool { return true }
func (p *spreadProvider) AuthURL(r vault.AuthRequest) (string, error) {
	return "https://auth.example/authorize?state=" + r.State, nil
}
func (p *spreadProvider) Revoke(ctx context.Context, g vault.Grant) error { return nil }

func (p *spreadProvider) token() vault.Token {
	k := strconv.FormatInt(p.n.Add(1), 36)
	return vault.Token{AccessToken: "at-" + k, RefreshToken: "rt-" + k, TokenType: "Bearer", Expiry: p.now().Add(p.lifetime)}
}

func (p *spreadProvider) Exchange(ctx context.Context, r vault.ExchangeRequest) (vault.Grant, error) {
	return vault.Grant{Account: "g" + strconv.FormatInt(p.n.Load(), 36), Tokens: []vault.Token{p.token()}}, nil
}

func (p *spreadProvider) Refresh(ctx context.Context, g vault.Grant, cred string) (vault.Grant, error) {
	now := p.now()
	left := g.Token(cred).Expiry.Sub(now)
	p.mu.Lock()
	if i := int(now.Sub(p.start) / time.Second); i >= 0 && i < len(p.perSecond) {
		p.perSecond[i]++
		p.total++
		p.minLeft = min(p.minLeft, left)
	}
	p.mu.Unlock()
	time.Sleep(p.delay)
	g.Tokens = []vault.Token{p.token()}
	return g, nil
}

func measureSpread(t *testing.T, n, lifetimes int, lifetime, delay time.Duration) spreadResult {
	var r spreadResult
	synctest.Test(t, func(t *testing.T) {
		var offset atomic.Int64 // while seeding: each connection's issue time
		now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
		p := &spreadProvider{now: now, lifetime: lifetime, delay: delay, minLeft: lifetime}
		need := float64(n) / (0.7 * lifetime.Seconds())
		rate := 2.5 * need
		pol := vault.RefreshPolicy{RateLimit: rate, Burst: max(int(rate/20), 5)}
		e := newSchedEnv(t, newSchedFake(lifetime), pol) // for its store and key
		e.cfg.Providers = map[string]vault.Provider{"fake": p}
		e.cfg.Now = now
		e.open()
		rng := rand.New(rand.NewPCG(1, 2))
		for i := range n {
			// Issued between 0 and 70% of a lifetime before the start.
			offset.Store(-int64(rng.Float64() * 0.7 * float64(lifetime)))
			e.connect("user-" + strconv.Itoa(i))
		}
		offset.Store(0)
		e.open() // a restart: the schedule is built from the store
		run := time.Duration(lifetimes) * lifetime
		p.mu.Lock()
		p.start = time.Now()
		p.perSecond = make([]int32, int(run/time.Second))
		p.mu.Unlock()
		_, stop := e.run(vault.SchedulerConfig{Concurrency: vault.DefaultConcurrency})
		time.Sleep(run)
		stop()

		end := time.Now()
		for after := ""; ; {
			page, next, err := e.v.List(context.Background(), vault.Filter{}, after, 1000)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range page {
				if c.Status != vault.StatusActive {
					r.inactive++
				} else if !c.Grant.Tokens[0].Expiry.After(end) {
					r.expired++
				}
			}
			if after = next; after == "" {
				break
			}
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		counts := slices.Clone(p.perSecond)
		slices.Sort(counts)
		r.total, r.minLeft = p.total, p.minLeft
		r.mean = float64(p.total) / float64(len(counts))
		r.busiest = int(counts[len(counts)-1])
		r.p99 = float64(counts[len(counts)*99/100])
		r.p999 = float64(counts[len(counts)*999/1000])
	})
	return r
}
