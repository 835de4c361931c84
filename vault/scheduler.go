package vault

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Failpoint names, passed to Config.Failpoint (crash tests only).
const (
	// FailpointBeforeProviderCall: the in-flight marker is durable, the
	// provider has not been called.
	FailpointBeforeProviderCall = "before_provider_call"
	// FailpointAfterProviderAnswer: the provider has answered (and may have
	// rotated the refresh token); nothing of the answer is committed.
	FailpointAfterProviderAnswer = "after_provider_answer"
	// FailpointAfterCommit: the outcome of the refresh is committed.
	FailpointAfterCommit = "after_commit"
)

// A RefreshPolicy says when the Scheduler refreshes and validates the
// connections of one provider. The zero value gives the defaults.
type RefreshPolicy struct {
	// Ahead is the fraction of an access token's lifetime left when it is
	// refreshed (default 0.25: a one-hour token at 45 minutes) ...
	Ahead float64
	// ... minus up to Jitter of the lifetime more (default 0.1), spread
	// evenly over connections, so that connections created together do
	// not refresh together.
	Jitter float64
	// MinValid: a token is refreshed before it has less than this left, so
	// that callers asking for the default min_valid_for never wait for a
	// refresh (default Config.DefaultMinValid).
	MinValid time.Duration
	// MinInterval is the least time between a token's issue and its next
	// scheduled refresh (default 10 s), a floor against tokens issued
	// already expired or nearly so.
	MinInterval time.Duration

	// TokenLifetime, if set, is the lifetime assumed for an access token
	// that comes with a refresh token but without expires_in: the vault
	// stores it with that expiry, and refreshes it ahead of it. Zero:
	// such tokens do not expire.
	TokenLifetime time.Duration
	// RefreshIdleMax, if set, is how long a refresh token lives unused
	// (Google: six months); the scheduler refreshes before it dies.
	RefreshIdleMax time.Duration
	// ValidateInterval, if set and the provider is a Validator, is how
	// often a token that is never refreshed (no expiry, or no refresh
	// token) is checked at the provider, so that a revoked grant is found
	// before the application needs it.
	ValidateInterval time.Duration

	// RateLimit bounds the refreshes and validations the scheduler starts
	// at this provider, per second (default 100), with bursts of Burst
	// (default 20). On-demand refreshes are not limited.
	RateLimit float64
	Burst     int
}

func (p RefreshPolicy) withDefaults(minValid time.Duration) RefreshPolicy {
	if p.Ahead <= 0 || p.Ahead >= 1 {
		p.Ahead = 0.25
	}
	if p.Jitter <= 0 || p.Jitter >= 1-p.Ahead {
		p.Jitter = min(0.1, (1-p.Ahead)/2)
	}
	p.MinValid = cmp.Or(p.MinValid, minValid, 5*time.Minute)
	p.MinInterval = cmp.Or(p.MinInterval, 10*time.Second)
	if p.RateLimit <= 0 {
		p.RateLimit = 100
	}
	if p.Burst <= 0 {
		p.Burst = 20
	}
	return p
}

// assumeExpiry gives t, an access token just issued at now without an
// expiry, the lifetime its provider's policy assumes. A token without a
// refresh token is left alone: an assumed expiry could only make the vault
// stop serving a token it cannot renew.
func (v *Vault) assumeExpiry(provider string, t *Token, now time.Time) {
	if lt := v.cfg.RefreshPolicies[provider].TokenLifetime; lt > 0 && t.Expiry.IsZero() && t.RefreshToken != "" {
		t.Expiry = now.Add(lt)
	}
}

// Action is what the Scheduler does to a connection when it is due.
type Action uint8

const (
	ActionNone     Action = iota // nothing: not scheduled
	ActionRefresh                // refresh Plan.Credential
	ActionValidate               // check the grant at the provider
	ActionExpire                 // mark a grant that expired with nothing to renew it
)

func (o Action) String() string {
	switch o {
	case ActionRefresh:
		return "refresh"
	case ActionValidate:
		return "validate"
	case ActionExpire:
		return "expire"
	}
	return "none"
}

// A Plan is the Scheduler's next action on one connection.
type Plan struct {
	At         time.Time
	Action     Action
	Credential string
}

// NextPlan decides when to act next on connection c, and how: a pure
// function of the record, the provider's policy (defaults applied for zero
// fields), whether the provider can validate, the time now and a jitter j
// in [0,1) that is stable for the connection.
//
//   - Only active connections are scheduled; a refresh a crash interrupted
//     (c.InFlight) is retried first, once its backoff allows.
//   - A credential with a refresh token is refreshed at
//     expiry - (Ahead + j*Jitter) * lifetime, no later than expiry -
//     MinValid (less j*Jitter*lifetime), no sooner than MinInterval after
//     it was issued, and not before c.NextRetryAt (backoff). A token
//     without expiry gets TokenLifetime; a refresh token that dies unused
//     is treated the same way with lifetime RefreshIdleMax.
//   - A connection with a token that is never refreshed is validated every
//     ValidateInterval (less j*Jitter of it), if canValidate.
//   - A connection none of whose tokens has a refresh token, and all of
//     whose tokens expire, is expired (moved to needs_reauth) when the last
//     of them does, so that the state change is reported when it happens,
//     not when the application next asks.
//   - What is overdue (the scheduler was down, or the clock jumped) is
//     spread by j over the time it can still wait, instead of all at now;
//     only what cannot wait is due now.
//
// The earliest of these wins. Plan.Action is ActionNone if nothing is to be done.
func NextPlan(c *Connection, p RefreshPolicy, canValidate bool, now time.Time, j float64) Plan {
	if c == nil {
		return Plan{}
	}
	return nextPlan(newResident(c), p, canValidate, now, j)
}

// nextPlan is NextPlan on the resident part of the record, which is all it
// reads.
func nextPlan(c *resident, p RefreshPolicy, canValidate bool, now time.Time, j float64) Plan {
	if c.status != StatusActive || len(c.tokens) == 0 {
		return Plan{}
	}
	p = p.withDefaults(0)
	j = min(max(j, 0), 1)
	nextRetryAt := timeOf(c.retryAt)
	if c.inFlight {
		if t := c.token(c.inFlightCred); t != nil && t.refreshable {
			return Plan{At: later(now, nextRetryAt), Action: ActionRefresh, Credential: c.inFlightCred}
		}
	}
	var best Plan
	consider := func(at, latest time.Time, op Action, cred string) {
		if at.Before(now) {
			at = now
			if latest.After(now) {
				at = now.Add(time.Duration(j * float64(latest.Sub(now))))
			}
		}
		if best.Action == ActionNone || at.Before(best.At) {
			best = Plan{At: at, Action: op, Credential: cred}
		}
	}
	neverRefreshed := false
	var issued time.Time // the newest token's
	var dies time.Time   // when the last token dies, if none can be renewed
	mortal := true       // every token expires and none can be refreshed
	for i := range c.tokens {
		t := &c.tokens[i]
		tIssued := timeOf(t.issuedAt)
		issued = later(issued, tIssued)
		exp := timeOf(t.expiry)
		if exp.IsZero() && p.TokenLifetime > 0 && t.refreshable && !tIssued.IsZero() {
			exp = tIssued.Add(p.TokenLifetime)
		}
		if !t.refreshable {
			if t.access != "" && (exp.IsZero() || exp.After(now)) {
				neverRefreshed = true
			}
			mortal = mortal && !exp.IsZero()
			dies = later(dies, exp)
			continue
		}
		mortal = false
		if exp.IsZero() {
			neverRefreshed = true
		}
		var at, latest time.Time
		if !exp.IsZero() {
			at, latest = refreshWindow(tIssued, exp, p, j)
		}
		if p.RefreshIdleMax > 0 && !tIssued.IsZero() {
			a, l := refreshWindow(tIssued, tIssued.Add(p.RefreshIdleMax), p, j)
			if at.IsZero() || a.Before(at) {
				at, latest = a, l
			}
		}
		if at.IsZero() {
			continue
		}
		if nextRetryAt.After(at) {
			at = nextRetryAt
			latest = later(latest, at)
		}
		consider(at, latest, ActionRefresh, t.name)
	}
	if neverRefreshed && canValidate && p.ValidateInterval > 0 {
		base := timeOf(c.validatedAt)
		if base.IsZero() {
			base = cmp.Or(issued, timeOf(c.createdAt))
		}
		iv := float64(p.ValidateInterval)
		at := base.Add(time.Duration(iv - j*p.Jitter*iv))
		latest := base.Add(time.Duration(iv + p.Jitter*iv))
		consider(at, latest, ActionValidate, "")
	}
	if mortal {
		consider(dies, dies, ActionExpire, "")
	}
	return best
}

// refreshWindow returns when a token issued at issued and dying at end is
// due for refresh, and the latest it may be refreshed (see NextPlan).
func refreshWindow(issued, end time.Time, p RefreshPolicy, j float64) (at, latest time.Time) {
	var life time.Duration
	if !issued.IsZero() && end.After(issued) {
		life = end.Sub(issued)
	}
	spread := time.Duration(j * p.Jitter * float64(life))
	// Before a read would refresh it (margin.go): a token shorter than
	// four times MinValid is refreshed a quarter of its life ahead, not at
	// every MinInterval.
	latest = end.Add(-fitMargin(p.MinValid, life))
	at = end.Add(-time.Duration(p.Ahead*float64(life)) - spread)
	if limit := latest.Add(-spread); at.After(limit) {
		at = limit // short lifetimes: still jittered, under the MinValid cap
	}
	if !issued.IsZero() {
		if floor := issued.Add(p.MinInterval); at.Before(floor) {
			at = floor
			latest = later(latest, floor)
		}
	}
	return at, latest
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// jitterOf returns the jitter for NextPlan of connection id with resident
// c: a hash of its id and of its newest token's issue time, in [0,1). It is
// stable while the tokens are (a restart rebuilds the same schedule) and new
// with each token, so that connections created together drift apart.
func jitterOf(id string, c *resident) float64 {
	// FNV-1a, inline: this runs for every connection at start.
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(id); i++ {
		h = (h ^ uint64(id[i])) * prime
	}
	var issued int64
	for i := range c.tokens {
		issued = max(issued, c.tokens[i].issuedAt)
	}
	n := uint64(timeOf(issued).UnixNano())
	for i := range 8 {
		h = (h ^ (n >> (8 * i) & 0xff)) * prime
	}
	// FNV's low bits mix poorly: finish with a multiply-xorshift.
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	return float64(h>>11) / (1 << 53)
}

// DefaultConcurrency is how many refreshes and validations a scheduler runs
// at once unless configured otherwise; the sidecar runs with it.
const DefaultConcurrency = 16

// SchedulerConfig configures a Scheduler. The zero value works.
type SchedulerConfig struct {
	// Concurrency bounds the refreshes and validations running at once
	// (default DefaultConcurrency).
	Concurrency int
	// Now and After are the clock: default the vault's clock and
	// time.After. Real time appears only in the caller's defaults.
	Now   func() time.Time
	After func(time.Duration) <-chan time.Time
	// LateAfter: an entry found due more than this long ago is decided
	// again before it runs (default 1 minute), so that a clock that jumps
	// forward spreads the overdue work instead of running it at once.
	LateAfter time.Duration
	// MaxSleep bounds one wait of the loop (default 1 minute), so that a
	// clock jump is noticed even while nothing is due.
	MaxSleep time.Duration
	// Logger defaults to the vault's.
	Logger *slog.Logger
	// Share, if set, divides the scheduled work between the replicas
	// sharing the vault's Store: a connection that comes due is acted on
	// only if this replica owns it; otherwise it is parked until its
	// owner's commit re-plans it, or ownership changes (a replica left:
	// its share comes due here at once). Nil: every connection is this
	// scheduler's (one replica).
	Share Share
}

// SchedulerStats counts what a Scheduler did since it started.
type SchedulerStats struct {
	Scheduled int    // connections on the schedule now
	Running   int    // actions running now
	Refreshes uint64 // refreshes that committed a new grant
	Validated uint64 // validations the provider answered live
	Failed    uint64 // actions that failed (transient, configuration, store)
	Reauth    uint64 // connections moved to needs_reauth
	Skipped   uint64 // actions not taken: the record changed meanwhile
	Replanned uint64 // entries found late and decided again
	Foreign   int    // connections due now whose work another replica owns (Share)
}

// A Scheduler refreshes a vault's connections ahead of expiry and validates
// long-lived ones, in the background. It keeps every scheduled connection
// on a heap keyed by its next action (see NextPlan); runs at most
// Concurrency actions at once, and at most RateLimit per second per
// provider; pauses a provider that answered with Retry-After. Each action
// goes through the connection's critical section, the one on-demand
// refreshes use, and is dropped if the record changed since it was
// planned: a connection is never refreshed twice at once, and a refresh
// someone else just made is not repeated. The vault tells it of every
// committed change, and it decides again from the new record.
type Scheduler struct {
	v   *Vault
	cfg SchedulerConfig
	log *slog.Logger

	policies    map[string]RefreshPolicy // with defaults
	canValidate map[string]bool
	wake        chan struct{}

	mu      sync.Mutex
	heap    schedHeap
	count   int                      // items scheduled (heap, ready or running)
	ready   map[string][]*schedItem  // due, waiting for the rate limit or a slot, by provider
	parked  map[*schedItem]struct{}  // due, owned by another replica (Share)
	buckets map[string]*rate.Limiter // by provider: actions started
	sends   map[string]*rate.Limiter // by provider: requests sent (sendGate)
	paused  map[string]time.Time     // provider -> until (Retry-After)
	running int                      // actions running
	rr      int                      // round-robin start over providers
	epoch   uint32                   // of this Run; items of another are stale
	provs   []string                 // sorted provider names with a ready queue
	stats   struct{ refreshes, validated, failed, reauth, skipped, replanned atomic.Uint64 }
}

// schedItem is one scheduled connection: its Plan, kept small (there is
// one per connection). It lives on its entry (e.item) and is guarded by
// Scheduler.mu.
type schedItem struct {
	e      *entry
	at     int64  // Plan.At, Unix nanoseconds
	gen    uint64 // the record's Generation the plan was made from
	cred   string // Plan.Credential
	index  int32  // in the heap; -1 if not there
	epoch  uint32
	fails  uint16 // consecutive actions without progress
	action Action
	state  itemState
}

func (it *schedItem) plan() Plan {
	return Plan{At: time.Unix(0, it.at), Action: it.action, Credential: it.cred}
}

type itemState uint8

const (
	itemIdle    itemState = iota // on the heap
	itemReady                    // due, in a ready queue
	itemRunning                  // its action is running
	itemParked                   // due, but another replica's (Share)
)

// NewScheduler returns a scheduler for v; Run starts it.
func NewScheduler(v *Vault, cfg SchedulerConfig) *Scheduler {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.Now == nil {
		cfg.Now = v.now
	}
	if cfg.After == nil {
		cfg.After = time.After
	}
	cfg.LateAfter = cmp.Or(cfg.LateAfter, time.Minute)
	cfg.MaxSleep = cmp.Or(cfg.MaxSleep, time.Minute)
	if cfg.Logger == nil {
		cfg.Logger = v.log
	}
	s := &Scheduler{
		v: v, cfg: cfg, log: cfg.Logger,
		policies:    map[string]RefreshPolicy{},
		canValidate: map[string]bool{},
		wake:        make(chan struct{}, 1),
		ready:       map[string][]*schedItem{},
		parked:      map[*schedItem]struct{}{},
		buckets:     map[string]*rate.Limiter{},
		sends:       map[string]*rate.Limiter{},
		paused:      map[string]time.Time{},
	}
	for name, p := range v.cfg.Providers {
		_, s.canValidate[name] = p.(Validator)
	}
	return s
}

func (s *Scheduler) policy(provider string) RefreshPolicy {
	p, ok := s.policies[provider]
	if !ok {
		p = s.v.cfg.RefreshPolicies[provider].withDefaults(s.v.cfg.DefaultMinValid)
		s.policies[provider] = p
	}
	return p
}

// Stats returns the scheduler's counters.
func (s *Scheduler) Stats() SchedulerStats {
	s.mu.Lock()
	st := SchedulerStats{Scheduled: s.count, Running: s.running, Foreign: len(s.parked)}
	s.mu.Unlock()
	st.Refreshes = s.stats.refreshes.Load()
	st.Validated = s.stats.validated.Load()
	st.Failed = s.stats.failed.Load()
	st.Reauth = s.stats.reauth.Load()
	st.Skipped = s.stats.skipped.Load()
	st.Replanned = s.stats.replanned.Load()
	return st
}

// Run builds the schedule from the vault's connections and runs it until
// ctx is done; then it waits for the actions under way to commit and
// returns ctx's error. Only one Scheduler runs on a vault at a time; Run
// returns an error if another is running.
func (s *Scheduler) Run(ctx context.Context) error {
	if err := s.v.waitLoaded(ctx); err != nil {
		return err
	}
	if !s.v.sched.CompareAndSwap(nil, s) {
		return errors.New("vault: a scheduler is already running on this vault")
	}
	defer s.v.sched.CompareAndSwap(s, nil)
	var wg sync.WaitGroup
	defer wg.Wait()
	s.build()
	if s.cfg.Share != nil {
		wg.Go(func() {
			// The next change's channel is taken before looking at the
			// parked items, so a change while they are looked at is not
			// missed.
			changed := s.cfg.Share.Changed()
			for {
				select {
				case <-ctx.Done():
					return
				case <-changed:
					changed = s.cfg.Share.Changed()
					s.unpark()
				}
			}
		})
	}
	for {
		d := s.step(ctx, &wg)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.wake:
		case <-s.cfg.After(d):
		}
	}
}

// build puts every connection of the vault on a fresh schedule.
func (s *Scheduler) build() {
	s.v.mu.RLock()
	entries := make([]*entry, 0, len(s.v.entries))
	for _, e := range s.v.entries {
		entries = append(entries, e)
	}
	s.v.mu.RUnlock()
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.epoch++
	s.heap = s.heap[:0]
	s.count = 0
	clear(s.ready)
	clear(s.parked)
	s.provs = nil
	for name := range s.v.cfg.Providers {
		s.policy(name)
	}
	for name := range s.v.cfg.RefreshPolicies {
		s.policy(name)
	}
	// Plan on all CPUs (NextPlan is pure; policy and canValidate are only
	// read from here on), then heap in one pass.
	items := make([]schedItem, len(entries)) // one allocation for all
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	chunk := (len(entries) + workers - 1) / workers
	for w := range workers {
		wg.Go(func() {
			for i := w * chunk; i < min((w+1)*chunk, len(entries)); i++ {
				e, it := entries[i], &items[i]
				*it = schedItem{e: e, index: -1, epoch: s.epoch}
				c := e.res.Load()
				pol, ok := s.policies[e.provider]
				if !ok {
					pol = RefreshPolicy{}.withDefaults(s.v.cfg.DefaultMinValid)
				}
				p := nextPlan(c, pol, s.canValidate[e.provider], now, jitterOf(e.id, c))
				it.at, it.action, it.cred, it.gen = p.At.UnixNano(), p.Action, p.Credential, c.gen
			}
		})
	}
	wg.Wait()
	s.heap = slices.Grow(s.heap, len(items))
	for i := range items {
		it := &items[i]
		it.e.item = it
		if it.action != ActionNone {
			it.index = int32(len(s.heap))
			s.heap = append(s.heap, it)
			s.count++
		}
	}
	heap.Init(&s.heap)
}

// plan decides it's next action from c, the resident of it's connection;
// it reports whether there is one. The caller holds s.mu.
func (s *Scheduler) plan(it *schedItem, c *resident, now time.Time) bool {
	p := nextPlan(c, s.policy(it.e.provider), s.canValidate[it.e.provider], now, jitterOf(it.e.id, c))
	it.at, it.action, it.cred = p.At.UnixNano(), p.Action, p.Credential
	it.gen = c.gen
	return p.Action != ActionNone
}

// noteChange re-plans e, whose record's resident just became c. The vault
// calls it with e's lock held, after every commit.
func (s *Scheduler) noteChange(e *entry, c *resident) {
	now := s.cfg.Now()
	s.mu.Lock()
	it := e.item
	if it == nil || it.epoch != s.epoch {
		it = &schedItem{e: e, index: -1, epoch: s.epoch}
		e.item = it
	}
	if it.state == itemParked {
		// Its owner acted (or the record changed otherwise): plan anew.
		delete(s.parked, it)
		it.state = itemIdle
		if !s.plan(it, c, now) {
			s.count--
			s.mu.Unlock()
			return
		}
		heap.Push(&s.heap, it)
		poke := it.index == 0
		s.mu.Unlock()
		if poke {
			s.poke()
		}
		return
	}
	if it.state != itemIdle {
		// Queued or running: decided again when it runs or ends.
		s.mu.Unlock()
		return
	}
	wasFirst := it.index == 0
	switch ok := s.plan(it, c, now); {
	case !ok && it.index >= 0:
		heap.Remove(&s.heap, int(it.index))
		s.count--
	case ok && it.index >= 0:
		heap.Fix(&s.heap, int(it.index))
	case ok:
		heap.Push(&s.heap, it)
		s.count++
	}
	poke := it.index == 0 || wasFirst
	s.mu.Unlock()
	if poke {
		s.poke()
	}
}

// unpark puts the parked items back on the heap, due: ownership changed,
// and the next step acts on those that are now this replica's (parking the
// others again).
func (s *Scheduler) unpark() {
	s.mu.Lock()
	n := len(s.parked)
	for it := range s.parked {
		it.state = itemIdle
		heap.Push(&s.heap, it)
	}
	clear(s.parked)
	s.mu.Unlock()
	if n > 0 {
		s.poke()
	}
}

func (s *Scheduler) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// pauseProvider stops starting actions at provider until `until` (a
// Retry-After it answered).
func (s *Scheduler) pauseProvider(provider string, until time.Time) {
	s.mu.Lock()
	if until.After(s.paused[provider]) {
		s.paused[provider] = until
	}
	s.mu.Unlock()
}

// step moves what is due to the ready queues, starts what the limits
// allow, and returns how long the loop may sleep.
func (s *Scheduler) step(ctx context.Context, wg *sync.WaitGroup) time.Duration {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	nowNs := now.UnixNano()
	for len(s.heap) > 0 && s.heap[0].at <= nowNs {
		it := s.heap[0]
		if nowNs-it.at > int64(s.cfg.LateAfter) {
			// The clock jumped forward (or the process stood still):
			// decide again, which spreads what can still wait.
			s.stats.replanned.Add(1)
			if !s.plan(it, it.e.res.Load(), now) {
				heap.Remove(&s.heap, 0)
				s.count--
				continue
			}
			if it.at > nowNs {
				heap.Fix(&s.heap, 0)
				continue
			}
		}
		heap.Pop(&s.heap)
		if s.cfg.Share != nil && !s.cfg.Share.Owns(it.e.id) {
			it.state = itemParked
			s.parked[it] = struct{}{}
			continue
		}
		it.state = itemReady
		p := it.e.provider
		if len(s.ready[p]) == 0 {
			if i, found := slices.BinarySearch(s.provs, p); !found {
				s.provs = slices.Insert(s.provs, i, p)
			}
		}
		s.ready[p] = append(s.ready[p], it)
	}

	wait := s.cfg.MaxSleep
	if len(s.heap) > 0 {
		wait = min(wait, time.Duration(s.heap[0].at-nowNs))
	}
	for s.running < s.cfg.Concurrency && len(s.provs) > 0 {
		started := false
		n := len(s.provs)
		for k := 0; k < n && s.running < s.cfg.Concurrency; k++ {
			i := (s.rr + k) % len(s.provs)
			p := s.provs[i]
			if until := s.paused[p]; until.After(now) {
				wait = min(wait, until.Sub(now))
				continue
			}
			if d := take(s.bucket(s.buckets, p), now); d > 0 {
				wait = min(wait, d)
				continue
			}
			q := s.ready[p]
			it := q[0]
			q[0] = nil
			s.ready[p] = q[1:]
			it.state = itemRunning
			s.running++
			started = true
			plan, gen := it.plan(), it.gen
			wg.Go(func() { s.run(ctx, it, plan, gen) })
		}
		s.rr++
		// Drop providers whose queue ran dry.
		s.provs = slices.DeleteFunc(s.provs, func(p string) bool {
			if len(s.ready[p]) == 0 {
				delete(s.ready, p)
				return true
			}
			return false
		})
		if !started {
			break
		}
	}
	return max(wait, 0)
}

// run performs it's action and puts it back on the schedule.
func (s *Scheduler) run(ctx context.Context, it *schedItem, plan Plan, gen uint64) {
	var (
		did bool
		err error
	)
	gated := context.WithValue(ctx, gateKey{}, s)
	switch plan.Action {
	case ActionRefresh:
		did, err = s.v.refreshPlanned(gated, it.e, plan.Credential, gen)
	case ActionValidate:
		did, err = s.v.validatePlanned(gated, it.e, gen)
	case ActionExpire:
		did, err = s.v.expirePlanned(ctx, it.e, gen)
	}
	c := it.e.res.Load()
	switch {
	case c.status == StatusNeedsReauth && errors.Is(err, ErrReauthRequired):
		s.stats.reauth.Add(1)
	case err != nil, plan.Action == ActionRefresh && did && c.failures > 0:
		// (A transient refresh failure while the token is still valid
		// returns no error: the record shows it.)
		s.stats.failed.Add(1)
		if err != nil && ctx.Err() == nil {
			s.log.LogAttrs(ctx, slog.LevelDebug, "scheduled action failed",
				slog.String("connection", it.e.id), slog.String("op", plan.Action.String()),
				slog.String("err", err.Error()))
		}
	case !did:
		s.stats.skipped.Add(1)
	case plan.Action == ActionRefresh:
		s.stats.refreshes.Add(1)
	default:
		s.stats.validated.Add(1)
	}

	now := s.cfg.Now()
	s.mu.Lock()
	s.running--
	it.state = itemIdle
	if it.epoch != s.epoch || it.e.item != it {
		s.mu.Unlock()
		return
	}
	// Read again under s.mu: a commit after this point finds the item
	// idle and re-plans it (noteChange); one before it is seen here.
	c = it.e.res.Load()
	if !s.plan(it, c, now) {
		s.count--
		s.mu.Unlock()
		s.poke()
		return
	}
	if c.gen == gen {
		// Nothing changed (a failure that left no trace, such as a
		// transient validation failure): back off, whatever the plan says,
		// so that nothing loops.
		it.fails = min(it.fails+1, 64)
		var retryAfter time.Duration
		var pe *ProviderError
		if errors.As(err, &pe) {
			retryAfter = pe.RetryAfter
		}
		it.at = max(it.at, now.Add(Backoff(int(it.fails), retryAfter, mrand.Float64())).UnixNano())
	} else {
		it.fails = 0
	}
	heap.Push(&s.heap, it)
	s.mu.Unlock()
	s.poke()
}

// bucket returns provider's token bucket in m, made on first use. The
// caller holds s.mu.
func (s *Scheduler) bucket(m map[string]*rate.Limiter, provider string) *rate.Limiter {
	b := m[provider]
	if b == nil {
		pol := s.policy(provider)
		b = rate.NewLimiter(rate.Limit(pol.RateLimit), pol.Burst)
		m[provider] = b
	}
	return b
}

// gateKey marks the context of a scheduled action with its Scheduler.
type gateKey struct{}

// sendGate paces a scheduled action's request to provider: the vault calls
// it right before the provider call, after the in-flight marker is
// written. The dispatcher already limits how many actions start; this
// second bucket, of the same rate, keeps a stall in between (a slow fsync)
// from sending what piled up behind it all at once. On-demand refreshes
// (no Scheduler in ctx) pass at once.
func sendGate(ctx context.Context, provider string) {
	s, _ := ctx.Value(gateKey{}).(*Scheduler)
	if s == nil {
		return
	}
	for {
		s.mu.Lock()
		d := take(s.bucket(s.sends, provider), s.cfg.Now())
		s.mu.Unlock()
		if d <= 0 {
			return
		}
		select {
		case <-s.cfg.After(d):
		case <-ctx.Done():
			return // the call will fail on ctx
		}
	}
}

// refreshPlanned refreshes credential of e if its record is still at
// generation gen, through the refresh critical section. It reports whether
// it called the provider.
func (v *Vault) refreshPlanned(ctx context.Context, e *entry, credential string, gen uint64) (bool, error) {
	return v.withRecord(ctx, e, func(rctx context.Context, c *Connection) (bool, error) {
		if c.Generation != gen || c.Status != StatusActive {
			return false, nil // refreshed, reconnected or revoked meanwhile
		}
		if t := c.Grant.Token(credential); t == nil || t.RefreshToken == "" || v.now().Before(c.NextRetryAt) {
			return false, nil
		}
		_, _, err := v.refreshLocked(rctx, e, c, credential)
		return true, err
	})
}

// withRecord runs fn in e's critical section with e's record just re-read
// (reload), under a context that outlives ctx's cancellation by up to
// RefreshTimeout: a write once begun (a provider call whose answer must be
// committed) is finished, whoever gives up waiting. It returns fn's results.
func (v *Vault) withRecord(ctx context.Context, e *entry, fn func(rctx context.Context, c *Connection) (bool, error)) (bool, error) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), v.cfg.RefreshTimeout)
	defer cancel()
	unlock, err := v.lockRecord(rctx, e)
	if err != nil {
		return false, err
	}
	defer unlock()
	c, err := v.reload(rctx, e)
	if err != nil {
		return false, err
	}
	return fn(rctx, c)
}

// A Validator is a Provider that can check whether a grant is still live at
// the provider without refreshing it. Validate returns nil if it is, and a
// *ProviderError of kind ErrReauthRequired if the grant is dead.
type Validator interface {
	Validate(ctx context.Context, g Grant) error
}

// Validate checks connection id's grant at the provider now. If the
// provider says it is live the connection's LastValidatedAt is recorded; if
// the provider rejects it the connection moves to needs_reauth and Validate
// returns ErrReauthRequired; a transient failure changes nothing and comes
// back as ErrUnavailable. It returns ErrInvalidArgument if the provider
// cannot validate.
func (v *Vault) Validate(ctx context.Context, id string) (*Connection, error) {
	if err := v.waitLoaded(ctx); err != nil {
		return nil, err
	}
	e := v.entry(id)
	if e == nil {
		return nil, fmt.Errorf("vault: connection %q: %w", id, ErrNotFound)
	}
	if _, err := v.validatePlanned(ctx, e, 0); err != nil {
		return nil, err
	}
	return v.Get(ctx, id)
}

// expirePlanned moves e to needs_reauth (reason token_expired) if its
// record is still at generation gen and its grant has expired with nothing
// to renew it. It reports whether it changed the record.
func (v *Vault) expirePlanned(ctx context.Context, e *entry, gen uint64) (bool, error) {
	return v.withRecord(ctx, e, func(rctx context.Context, c *Connection) (bool, error) {
		now := v.now()
		if c.Generation != gen || c.Status != StatusActive || !grantExpired(c.Grant, now) {
			return false, nil // changed meanwhile, or the clock went back
		}
		return true, v.expireLocked(rctx, e, c, now)
	})
}

// validatePlanned validates e's grant if its record is still at generation
// gen (0: any). It reports whether it called the provider.
func (v *Vault) validatePlanned(ctx context.Context, e *entry, gen uint64) (bool, error) {
	return v.withRecord(ctx, e, func(rctx context.Context, c *Connection) (bool, error) {
		return v.validateLocked(ctx, rctx, e, c, gen)
	})
}

// validateLocked is validatePlanned inside the connection's critical
// section: ctx is the caller's (for logging), rctx the section's.
func (v *Vault) validateLocked(ctx, rctx context.Context, e *entry, c *Connection, gen uint64) (bool, error) {
	if gen != 0 && c.Generation != gen {
		return false, nil
	}
	if err := statusErr(c.ID, c.Status, c.StatusReason); err != nil {
		return false, err
	}
	p, err := v.provider(c.Provider)
	if err != nil {
		return false, err
	}
	vp, ok := p.(Validator)
	if !ok {
		return false, fmt.Errorf("%w: provider %q cannot validate grants", ErrInvalidArgument, c.Provider)
	}
	sendGate(rctx, c.Provider)
	verr := vp.Validate(rctx, c.Grant.clone())
	now := v.now()
	next := c.clone()
	if verr != nil {
		pe := providerError(verr)
		v.log.LogAttrs(ctx, slog.LevelWarn, "validation failed",
			slog.String("connection", c.ID), slog.String("provider", c.Provider),
			slog.String("code", pe.Code), slog.String("class", pe.Kind.Error()))
		if !errors.Is(pe.Kind, ErrReauthRequired) {
			if s := v.sched.Load(); s != nil && pe.RetryAfter > 0 {
				s.pauseProvider(c.Provider, now.Add(pe.RetryAfter))
			}
			kind := pe.Kind
			if !errors.Is(kind, ErrMisconfigured) {
				kind = ErrUnavailable
			}
			return true, &ProviderError{Kind: kind, Code: pe.Code, RetryAfter: pe.RetryAfter}
		}
		next.transition(now, StatusNeedsReauth, pe.Code)
		next.LastError = pe.Code
		if err := v.commit(rctx, e, c, next); err != nil {
			return true, err
		}
		return true, &ProviderError{Kind: ErrReauthRequired, Code: pe.Code}
	}
	next.LastValidatedAt = now
	return true, v.commit(rctx, e, c, next)
}

// schedHeap orders items by their next action's time.
type schedHeap []*schedItem

func (h schedHeap) Len() int           { return len(h) }
func (h schedHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h schedHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = int32(i)
	h[j].index = int32(j)
}
func (h *schedHeap) Push(x any) {
	it := x.(*schedItem)
	it.index = int32(len(*h))
	*h = append(*h, it)
}
func (h *schedHeap) Pop() any {
	old := *h
	n := len(old)
	it := old[n-1]
	old[n-1] = nil
	it.index = -1
	*h = old[:n-1]
	return it
}

// take takes a token from l at now (the scheduler's clock, which may be
// simulated or jump: the limiter is only ever given explicit times) and
// returns 0, or returns how long until one is available without taking it.
func take(l *rate.Limiter, now time.Time) time.Duration {
	r := l.ReserveN(now, 1)
	if !r.OK() {
		return time.Second
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d
	}
	return 0
}
