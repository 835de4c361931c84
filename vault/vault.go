// Package vault is tokenvault's domain core: the connection record, sealing
// and the keyring, the Store interface, the connect flow, refresh
// coordination, and the event outbox with its webhook delivery. It knows
// nothing of gRPC or of any particular provider; it states what it needs of
// a provider in the Provider interface.
package vault

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/tokenvault/tokenvault/vault/seal"
)

// Key prefixes in the Store.
const (
	connPrefix  = "conn/"
	statePrefix = "state/"
	identPrefix = "ident/"
)

// Config configures a Vault.
type Config struct {
	Store   Store
	Keyring *seal.Keyring
	// Providers by configured name.
	Providers map[string]Provider
	// ReturnTo lists the URLs a connect flow may return the browser to. An
	// entry matches a return_to with the same scheme and host whose path
	// starts with the entry's path.
	ReturnTo []string
	// DefaultReturnTo is used when a flow names none; empty: the callback
	// shows a page of its own.
	DefaultReturnTo string
	// StateTTL is how long a connect flow may take; default 10 minutes.
	StateTTL time.Duration
	// DefaultMinValid is GetAccessToken's min_valid_for when the caller
	// gives none; default 5 minutes.
	DefaultMinValid time.Duration
	// RefreshTimeout bounds one provider refresh call; default 30 seconds.
	RefreshTimeout time.Duration
	Logger         *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// OnRefresh, if set, is told the outcome (RefreshOK, ...) and duration
	// of every provider refresh call. It must be quick and must not block.
	OnRefresh func(provider, outcome string, d time.Duration)
	// RefreshPolicies tune refresh-ahead and validation per provider name
	// (see RefreshPolicy); a provider without an entry gets the defaults.
	RefreshPolicies map[string]RefreshPolicy
	// OnChange, if set, is called after every committed change of a
	// connection record, with the record before (nil for a new connection)
	// and after; both are shared snapshots, read-only. It is called with the
	// connection's lock held, so it must be quick and must not call back
	// into the vault. A Scheduler learns about changes the same way.
	OnChange func(old, new *Connection)
	// Failpoint is for crash tests only: if set, it is called with the name
	// of each point of the refresh critical section as it is reached
	// (FailpointBeforeProviderCall, FailpointAfterProviderAnswer,
	// FailpointAfterCommit), so that a test can kill the process exactly
	// there. Leave it nil in production; unset it costs one nil check.
	Failpoint func(name string)
}

// A Vault holds connections and hands out their access tokens. It is safe
// for concurrent use.
//
// Every write of a connection goes through its entry's lock, re-reads the
// record, and commits with a compare-and-swap on the record's revision, so a
// connection is never refreshed twice at once and a rotated refresh token is
// durable before anyone sees the access token that came with it.
type Vault struct {
	cfg    Config
	store  Store
	kr     *seal.Keyring
	log    *slog.Logger
	now    func() time.Time
	flight singleflight.Group
	events outbox // the event log's sequence and subscribers (events.go)

	mu      sync.RWMutex
	entries map[string]*entry
	ids     []string // sorted connection ids, for listing

	sched atomic.Pointer[Scheduler] // told of every change; nil: none

	// unsaved holds, by connection id, a refreshed record whose commit
	// failed (a full disk, an I/O error, a deadline): the provider has
	// issued its grant, and may have retired the refresh token the store
	// still holds. It is committed by the next writer of the connection
	// (see reload) and never served before. An entry is read and written
	// only under its connection's lock.
	unsaved sync.Map
}

// entry is the in-memory state of one connection: its identity, which
// never changes, and the resident part of its committed record (replaced on
// every write). mu is the connection's critical section for writes.
type entry struct {
	id, owner string
	*placement

	mu       sync.Mutex
	res      atomic.Pointer[resident]
	rev      uint64 // store revision of res; guarded by mu
	lastUsed atomic.Int64
	item     *schedItem // the Scheduler's; guarded by Scheduler.mu
}

// placement is where a connection belongs: its tenant and provider, shared
// by every connection in the same.
type placement struct {
	tenant, provider string
}

func newEntry(c *Connection) *entry {
	return &entry{id: c.ID, owner: c.Owner, placement: internPlacement(c.Tenant, c.Provider)}
}

// Open loads every connection from the store and returns a Vault serving
// them. Refreshes that a crash interrupted are found here and resolved by
// RecoverInterrupted.
func Open(ctx context.Context, cfg Config) (*Vault, error) {
	if cfg.Store == nil || cfg.Keyring == nil {
		return nil, errors.New("vault: Config needs a Store and a Keyring")
	}
	cfg.StateTTL = cmp.Or(cfg.StateTTL, 10*time.Minute)
	cfg.DefaultMinValid = cmp.Or(cfg.DefaultMinValid, 5*time.Minute)
	cfg.RefreshTimeout = cmp.Or(cfg.RefreshTimeout, 30*time.Second)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	for _, r := range cfg.ReturnTo {
		if _, err := parseReturnTo(r); err != nil {
			return nil, fmt.Errorf("vault: return_to allowlist entry %q: %w", r, err)
		}
	}
	v := &Vault{
		cfg:     cfg,
		store:   GroupCommit(cfg.Store),
		kr:      cfg.Keyring,
		log:     cfg.Logger,
		now:     cfg.Now,
		entries: make(map[string]*entry),
	}
	if err := v.openOutbox(ctx); err != nil {
		return nil, err
	}
	all, err := v.loadConnections(ctx)
	if err != nil {
		return nil, err
	}
	v.entries = make(map[string]*entry, len(all))
	v.ids = make([]string, 0, len(all))
	for _, e := range all {
		v.entries[e.id] = e
		v.ids = append(v.ids, e.id)
	}
	slices.Sort(v.ids)
	return v, nil
}

func (v *Vault) decode(key string, sealed []byte) (*Connection, error) {
	plain, err := v.kr.Open(key, sealed)
	if err != nil {
		return nil, fmt.Errorf("vault: open %s: %w", key, err)
	}
	var c Connection
	if err := unmarshalRecord(plain, &c, nil); err != nil {
		return nil, fmt.Errorf("vault: decode %s: %w", key, err)
	}
	return &c, nil
}

// Len returns how many connections the vault holds, of any status.
func (v *Vault) Len() int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return len(v.entries)
}

func (v *Vault) entry(id string) *entry {
	v.mu.RLock()
	e := v.entries[id]
	v.mu.RUnlock()
	return e
}

func (v *Vault) provider(name string) (Provider, error) {
	p, ok := v.cfg.Providers[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownProvider, name)
	}
	return p, nil
}

// commit writes next over e's record, which was prev (nil: a new
// connection), with a compare-and-swap on e's revision, then publishes it.
// The caller holds e.mu. extra ops are applied in the same transaction.
func (v *Vault) commit(ctx context.Context, e *entry, prev, next *Connection, extra ...Op) error {
	if used := time.Unix(0, e.lastUsed.Load()); e.lastUsed.Load() > 0 && used.After(next.LastUsedAt) {
		next.LastUsedAt = used
	}
	next.Generation++
	next.UpdatedAt = v.now()
	key := connPrefix + next.ID
	// The change's events (events.go) go in the same transaction.
	evs := changeEvents(prev, next, next.UpdatedAt)
	plain, err := marshalRecord(next)
	if err != nil {
		return fmt.Errorf("vault: encode %s: %w", next.ID, err)
	}
	sealed, err := v.kr.Seal(key, plain)
	if err != nil {
		return fmt.Errorf("vault: seal %s: %w", next.ID, err)
	}
	ops := append([]Op{{Key: key, Value: sealed, IfRev: int64(e.rev)}}, extra...)
	revs, err := v.applyWithEvents(ctx, evs, ops)
	if err != nil {
		return fmt.Errorf("vault: write %s: %w", next.ID, err)
	}
	e.rev = revs[0]
	v.publish(e, prev, next)
	return nil
}

// publish makes next, committed, e's record, and tells the scheduler and
// Config.OnChange that it went from prev (nil: new, or changed outside this
// vault) to next. The caller holds the connection's lock.
func (v *Vault) publish(e *entry, prev, next *Connection) {
	r := newResident(next)
	e.res.Store(r)
	v.changed(e, r, prev, next)
}

func (v *Vault) changed(e *entry, r *resident, old, next *Connection) {
	if s := v.sched.Load(); s != nil {
		s.noteChange(e, r)
	}
	if f := v.cfg.OnChange; f != nil {
		f(old, next)
	}
}

// failpoint calls Config.Failpoint, a test-only crash hook.
func (v *Vault) failpoint(name string) {
	if f := v.cfg.Failpoint; f != nil {
		f(name)
	}
}

// reload reads e's full record from the store, the one to change and
// write. If another writer (another process sharing the store, a re-wrap
// pass) changed it, the change is published first; a refreshed record
// whose commit failed is committed before anything else (saveUnsaved). The
// caller holds e.mu.
func (v *Vault) reload(ctx context.Context, e *entry) (*Connection, error) {
	c, err := v.read(ctx, e)
	if err != nil {
		return nil, err
	}
	return v.saveUnsaved(ctx, e, c)
}

// saveUnsaved commits e's unsaved refreshed record, if it has one and c
// (just read) is still the record it was refreshed from, and returns the
// record now current. A record that moved on without it (the connection
// was reconnected, or changed outside this vault) makes it stale: it is
// dropped. Until the commit succeeds every writer of the connection fails
// with the commit's error, so nothing is written over the grant that holds
// the only refresh token the provider still accepts.
func (v *Vault) saveUnsaved(ctx context.Context, e *entry, c *Connection) (*Connection, error) {
	x, ok := v.unsaved.Load(e.id)
	if !ok {
		return c, nil
	}
	u := x.(*Connection)
	if u.Generation != c.Generation {
		v.unsaved.Delete(e.id)
		v.log.LogAttrs(ctx, slog.LevelWarn, "dropped a refreshed grant that could not be stored: the connection changed meanwhile",
			slog.String("connection", e.id))
		return c, nil
	}
	next := u.clone()
	if err := v.commit(ctx, e, c, next); err != nil {
		return nil, err
	}
	v.unsaved.Delete(e.id)
	v.log.LogAttrs(ctx, slog.LevelInfo, "stored a refreshed grant whose first commit had failed",
		slog.String("connection", e.id))
	return next, nil
}

// read reads e's record from the store and publishes it if it changed
// outside this vault. The caller holds e.mu.
func (v *Vault) read(ctx context.Context, e *entry) (*Connection, error) {
	key := connPrefix + e.id
	val, rev, err := v.store.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("vault: read %s: %w", e.id, err)
	}
	c, err := v.decode(key, val)
	if err != nil {
		return nil, err
	}
	if rev != e.rev {
		e.rev = rev
		if c.Generation != e.res.Load().gen {
			v.publish(e, nil, c)
		}
	}
	return c, nil
}

// Get returns the connection with the given id, read from the store, or
// ErrNotFound. The record holds token material: callers outside the
// process get Redacted().
func (v *Vault) Get(ctx context.Context, id string) (*Connection, error) {
	e := v.entry(id)
	if e == nil {
		return nil, fmt.Errorf("vault: connection %q: %w", id, ErrNotFound)
	}
	key := connPrefix + id
	val, _, err := v.store.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("vault: read %s: %w", id, err)
	}
	c, err := v.decode(key, val)
	if err != nil {
		return nil, err
	}
	if used := e.lastUsed.Load(); used > 0 && used > nanos(c.LastUsedAt) {
		c.LastUsedAt = timeOf(used)
	}
	return c, nil
}

// List returns up to limit connections matching f with ids after `after`,
// in id order, and the id to pass as after for the next page ("" at the
// end).
func (v *Vault) List(ctx context.Context, f Filter, after string, limit int) ([]*Connection, string, error) {
	if limit <= 0 {
		limit = 100
	}
	v.mu.RLock()
	start, _ := slices.BinarySearch(v.ids, after)
	if start < len(v.ids) && v.ids[start] == after {
		start++
	}
	var ids []string
	next := ""
	for _, id := range v.ids[start:] {
		if !f.match(v.entries[id]) {
			continue
		}
		if len(ids) == limit {
			next = ids[len(ids)-1]
			break
		}
		ids = append(ids, id)
	}
	v.mu.RUnlock()
	out := make([]*Connection, 0, len(ids))
	for _, id := range ids {
		c, err := v.Get(ctx, id)
		if err != nil {
			return nil, "", err
		}
		out = append(out, c)
	}
	return out, next, nil
}

// AccessToken returns the named credential of connection id ("" is the
// primary one), without its refresh token, valid for at least minValid (0:
// the configured default), refreshing at the provider first if needed or if
// force is set; and what the caller needs to know of the connection with
// it. A token still valid is served from memory.
//
// It returns ErrNotFound for an unknown id, ErrRevoked for a revoked
// connection, ErrReauthRequired if the provider rejected the grant,
// ErrMisconfigured if the provider rejected our client, and ErrUnavailable
// if the provider failed transiently and the stored token is expired.
func (v *Vault) AccessToken(ctx context.Context, id, credential string, minValid time.Duration, force bool) (Token, TokenInfo, error) {
	e := v.entry(id)
	if e == nil {
		return Token{}, TokenInfo{}, fmt.Errorf("vault: connection %q: %w", id, ErrNotFound)
	}
	if minValid <= 0 {
		minValid = v.cfg.DefaultMinValid
	}
	now := v.now()
	r := e.res.Load()
	if !force && r.status == StatusActive {
		if t := r.token(credential); t != nil && t.validFor(now, minValid) {
			e.lastUsed.Store(now.UnixNano())
			return t.out(), e.info(r, t), nil
		}
	}
	if err := statusErr(id, r.status, r.reason); err != nil {
		return Token{}, TokenInfo{}, err
	}
	if r.token(credential) == nil {
		return Token{}, TokenInfo{}, fmt.Errorf("%w: connection %q has no credential %q", ErrInvalidArgument, id, credential)
	}
	t, _, err := v.refreshShared(ctx, e, credential, minValid, force)
	if err != nil {
		return Token{}, TokenInfo{}, err
	}
	e.lastUsed.Store(now.UnixNano())
	t.RefreshToken = ""
	r = e.res.Load()
	return t, e.info(r, r.token(credential)), nil
}

// statusErr is the error for using connection id in status s (with
// reason), nil if it is active.
func statusErr(id string, s Status, reason string) error {
	switch s {
	case StatusRevoked:
		return fmt.Errorf("vault: connection %q: %w", id, ErrRevoked)
	case StatusNeedsReauth:
		return &ProviderError{Kind: ErrReauthRequired, Code: reason}
	}
	return nil
}

type refreshResult struct {
	tok  Token
	conn *Connection
}

// refreshShared runs one refresh per connection and credential however many
// callers ask at once; they all get its result.
func (v *Vault) refreshShared(ctx context.Context, e *entry, credential string, minValid time.Duration, force bool) (Token, *Connection, error) {
	key := e.id + "\x00" + credential
	if force {
		key += "\x00force"
	}
	ch := v.flight.DoChan(key, func() (any, error) {
		// The refresh outlives any one caller: a caller that gives up must
		// not abandon a rotated refresh token between answer and commit.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), v.cfg.RefreshTimeout)
		defer cancel()
		t, c, err := v.refresh(rctx, e, credential, minValid, force)
		return refreshResult{t, c}, err
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return Token{}, nil, r.Err
		}
		res := r.Val.(refreshResult)
		return res.tok, res.conn, nil
	case <-ctx.Done():
		return Token{}, nil, ctx.Err()
	}
}

// forceDebounce: a forced refresh of a token obtained less than this long
// ago returns that token, so that a burst of callers who all saw a 401 on
// the previous token cause one refresh, not one each.
const forceDebounce = 2 * time.Second

// refresh is the critical section of DESIGN.md: lock, re-read, mark, call,
// commit, publish.
func (v *Vault) refresh(ctx context.Context, e *entry, credential string, minValid time.Duration, force bool) (Token, *Connection, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := v.reload(ctx, e)
	if err != nil {
		return Token{}, nil, err
	}
	if err := statusErr(c.ID, c.Status, c.StatusReason); err != nil {
		return Token{}, nil, err
	}
	now := v.now()
	t := c.Grant.Token(credential)
	if t == nil {
		return Token{}, nil, fmt.Errorf("%w: no credential %q", ErrInvalidArgument, credential)
	}
	if t.ValidFor(now, minValid) && (!force || now.Sub(t.IssuedAt) < forceDebounce) {
		return *t, c, nil // someone refreshed while we waited
	}
	if t.RefreshToken == "" {
		if t.ValidFor(now, 0) && !force {
			return *t, c, nil // cannot refresh; still valid, if not for as long as asked
		}
		if grantExpired(c.Grant, now) {
			return Token{}, nil, v.expireLocked(ctx, e, c, now)
		}
		return Token{}, nil, &ProviderError{Kind: ErrReauthRequired, Code: "no_refresh_token"}
	}
	if now.Before(c.NextRetryAt) {
		// Backing off after a failure: never hammer a failing provider.
		if t.ValidFor(now, 0) {
			return *t, c, nil
		}
		return Token{}, nil, &ProviderError{Kind: ErrUnavailable, Code: c.LastError, RetryAfter: c.NextRetryAt.Sub(now)}
	}
	return v.refreshLocked(ctx, e, c, credential)
}

// grantExpired reports whether every credential of g has expired by now
// with no refresh token to renew it: nothing but a new consent can give the
// connection a token again.
func grantExpired(g Grant, now time.Time) bool {
	for _, t := range g.Tokens {
		if t.RefreshToken != "" || t.Expiry.IsZero() || now.Before(t.Expiry) {
			return false
		}
	}
	return len(g.Tokens) > 0
}

// expireLocked moves c, whose grant has expired (grantExpired), to
// needs_reauth with reason token_expired, and returns the
// ErrReauthRequired that tells the caller so. The caller holds e.mu and has
// re-read c.
func (v *Vault) expireLocked(ctx context.Context, e *entry, c *Connection, now time.Time) error {
	next := c.clone()
	next.transition(now, StatusNeedsReauth, ReasonTokenExpired)
	next.LastError = ReasonTokenExpired
	if err := v.commit(ctx, e, c, next); err != nil {
		return err
	}
	return &ProviderError{Kind: ErrReauthRequired, Code: ReasonTokenExpired}
}

// refreshLocked calls the provider for c's credential and commits the
// outcome. The caller holds e.mu and has re-read c.
func (v *Vault) refreshLocked(ctx context.Context, e *entry, c *Connection, credential string) (Token, *Connection, error) {
	p, err := v.provider(c.Provider)
	if err != nil {
		return Token{}, nil, err
	}
	// 1. The in-flight marker, durable before the provider sees the
	// refresh token.
	marked := c.clone()
	if marked.InFlight == nil || marked.InFlight.Credential != credential {
		marked.InFlight = &InFlight{Credential: credential, StartedAt: v.now()}
	}
	marked.InFlight.Attempts++
	if err := v.commit(ctx, e, c, marked); err != nil {
		return Token{}, nil, err
	}
	v.failpoint(FailpointBeforeProviderCall)
	// 2. The provider call (paced, if the Scheduler started it).
	sendGate(ctx, c.Provider)
	called := v.now()
	g, perr := p.Refresh(ctx, marked.Grant.clone(), credential)
	v.failpoint(FailpointAfterProviderAnswer)
	now := v.now()
	if v.cfg.OnRefresh != nil {
		v.cfg.OnRefresh(c.Provider, refreshOutcome(perr), now.Sub(called))
	}
	next := marked.clone()
	next.InFlight = nil
	if perr != nil {
		pe := providerError(perr)
		v.log.LogAttrs(ctx, slog.LevelWarn, "refresh failed",
			slog.String("connection", c.ID), slog.String("provider", c.Provider),
			slog.String("code", pe.Code), slog.String("class", pe.Kind.Error()))
		switch {
		case errors.Is(pe.Kind, ErrReauthRequired):
			reason := pe.Code
			if marked.InFlight.Attempts > 1 {
				reason = ReasonRefreshInterrupted
			}
			next.transition(now, StatusNeedsReauth, reason)
			next.Failures, next.LastError, next.NextRetryAt = 0, pe.Code, time.Time{}
			if err := v.commit(ctx, e, marked, next); err != nil {
				return Token{}, nil, err
			}
			v.failpoint(FailpointAfterCommit)
			return Token{}, nil, &ProviderError{Kind: ErrReauthRequired, Code: reason}
		default:
			if marked.InFlight.Attempts > 1 {
				// The interrupted refresh's retry got no answer either:
				// keep the marker so the next attempt still knows.
				next.InFlight = marked.InFlight
			}
			next.Failures++
			next.LastError = pe.Code
			next.NextRetryAt = now.Add(Backoff(next.Failures, pe.RetryAfter, mrand.Float64()))
			if s := v.sched.Load(); s != nil && pe.RetryAfter > 0 {
				s.pauseProvider(c.Provider, now.Add(pe.RetryAfter)) // Retry-After holds for the whole client
			}
			if err := v.commit(ctx, e, marked, next); err != nil {
				return Token{}, nil, err
			}
			v.failpoint(FailpointAfterCommit)
			if t := next.Grant.Token(credential); t != nil && t.ValidFor(now, 0) {
				return *t, next, nil // keep serving a still-valid token
			}
			kind := pe.Kind
			if !errors.Is(kind, ErrMisconfigured) {
				kind = ErrUnavailable
			}
			return Token{}, nil, &ProviderError{Kind: kind, Code: pe.Code, RetryAfter: next.NextRetryAt.Sub(now)}
		}
	}
	// 3. Commit the new grant before anyone sees it.
	for i := range g.Tokens {
		t := &g.Tokens[i]
		if t.Name == credential {
			t.IssuedAt = now
			v.assumeExpiry(c.Provider, t, now)
		} else if old := marked.Grant.Token(t.Name); old != nil {
			// Providers know nothing of IssuedAt: carry it over for the
			// credentials this refresh did not renew.
			t.IssuedAt = old.IssuedAt
		}
	}
	next.Grant = g
	next.Grant.Scopes = normalizeScopes(g.Scopes)
	next.LastRefreshedAt = now
	next.Failures, next.LastError, next.NextRetryAt = 0, "", time.Time{}
	keep := next.clone() // commit changes next
	if err := v.commit(ctx, e, marked, next); err != nil {
		// The provider may have retired the stored refresh token: keep
		// the grant it issued, unseen, for the next writer to commit,
		// rather than burn the connection on a full disk.
		v.unsaved.Store(e.id, keep)
		v.log.LogAttrs(ctx, slog.LevelError, "could not store a refreshed grant; holding it to store at the next attempt",
			slog.String("connection", c.ID), slog.String("err", err.Error()))
		return Token{}, nil, err
	}
	v.failpoint(FailpointAfterCommit)
	t := next.Grant.Token(credential)
	if t == nil {
		return Token{}, nil, &ProviderError{Kind: ErrUnavailable, Code: "credential_missing_after_refresh"}
	}
	return *t, next, nil
}

// Refresh refreshes the named credential of connection id now, through the
// same critical section as AccessToken. The scheduler calls it.
func (v *Vault) Refresh(ctx context.Context, id, credential string) (*Connection, error) {
	e := v.entry(id)
	if e == nil {
		return nil, fmt.Errorf("vault: connection %q: %w", id, ErrNotFound)
	}
	_, c, err := v.refreshShared(ctx, e, credential, 0, true)
	return c, err
}

// RecoverInterrupted resolves every refresh that a crash interrupted: for
// each connection still marked in flight it tries the stored (old) refresh
// token once. If the provider accepts it the connection carries on; if it
// rejects it the connection goes to needs_reauth with reason
// refresh_interrupted. If the provider fails transiently the marker stays
// and the retry waits for the connection's backoff (the Scheduler makes
// it). It returns how many it resolved either way.
//
// Each connection goes through the refresh critical section, re-read under
// its lock: a marker that a concurrent caller resolved first is not retried
// again. At most recoverConcurrency provider calls run at once; if ctx ends
// no further one starts.
func (v *Vault) RecoverInterrupted(ctx context.Context) (int, error) {
	v.mu.RLock()
	var todo []*entry
	for _, e := range v.entries {
		if r := e.res.Load(); r.inFlight && r.status == StatusActive {
			todo = append(todo, e)
		}
	}
	v.mu.RUnlock()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		n        int
		errs     []error
		sem      = make(chan struct{}, recoverConcurrency)
		canceled error
	)
	for _, e := range todo {
		if canceled = ctx.Err(); canceled == nil {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				canceled = ctx.Err()
			}
		}
		if canceled != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			ok, err := v.recoverOne(ctx, e)
			mu.Lock()
			defer mu.Unlock()
			if ok {
				n++
			}
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	return n, errors.Join(append(errs, canceled)...)
}

// recoverConcurrency bounds RecoverInterrupted's provider calls.
const recoverConcurrency = 8

// recoverOne resolves e's interrupted refresh, if it still has one, and
// reports whether the marker is gone. Provider failures are not errors: a
// transient one leaves the marker for a later retry.
func (v *Vault) recoverOne(ctx context.Context, e *entry) (bool, error) {
	// Like refreshShared: once the marker's retry is sent it must be
	// committed, whoever gives up waiting.
	return v.withRecord(ctx, e, func(rctx context.Context, c *Connection) (bool, error) {
		return v.recoverLocked(ctx, rctx, e, c)
	})
}

// recoverLocked is recoverOne inside the connection's critical section:
// ctx is the caller's (for logging), rctx the section's.
func (v *Vault) recoverLocked(ctx, rctx context.Context, e *entry, c *Connection) (bool, error) {
	if c.InFlight == nil || c.Status != StatusActive {
		return true, nil // resolved meanwhile
	}
	v.log.LogAttrs(ctx, slog.LevelWarn, "resolving interrupted refresh",
		slog.String("connection", c.ID), slog.Time("started", c.InFlight.StartedAt),
		slog.Int("attempts", c.InFlight.Attempts))
	if t := c.Grant.Token(c.InFlight.Credential); t == nil || t.RefreshToken == "" {
		// Nothing to retry with (the record cannot have been written this
		// way by a refresh; repair it rather than trip over it forever).
		next := c.clone()
		next.InFlight = nil
		return true, v.commit(rctx, e, c, next)
	}
	if v.now().Before(c.NextRetryAt) {
		return false, nil // the retry already failed transiently: wait out its backoff
	}
	if _, _, err := v.refreshLocked(rctx, e, c, c.InFlight.Credential); err != nil {
		var pe *ProviderError
		if !errors.As(err, &pe) {
			return false, err
		}
	}
	return !e.res.Load().inFlight, nil
}

// Backoff returns how long to wait after the n-th consecutive transient
// failure: exponential from 1 s, capped at 10 minutes, with full jitter
// (j in [0,1)), and never less than the provider's Retry-After.
func Backoff(n int, retryAfter time.Duration, j float64) time.Duration {
	const base, limit = time.Second, 10 * time.Minute
	d := limit
	if n < 20 {
		d = min(base<<max(n-1, 0), limit)
	}
	d = d/2 + time.Duration(j*float64(d/2))
	return max(d, retryAfter)
}

// ConnectRequest starts a connect flow.
type ConnectRequest struct {
	Owner, Tenant, Provider, Label, Purpose string
	Scopes                                  []string
	ReturnTo                                string
	Options                                 map[string]string
}

// connectState is what the vault remembers of a flow between StartConnect
// and the callback. It is sealed, stored under the hash of the state value,
// and taken (read and deleted) exactly once.
type connectState struct {
	Owner    string            `json:"owner"`
	Tenant   string            `json:"tenant,omitempty"`
	Provider string            `json:"provider"`
	Label    string            `json:"label,omitempty"`
	Purpose  string            `json:"purpose,omitempty"`
	Scopes   []string          `json:"scopes,omitempty"`
	ReturnTo string            `json:"return_to,omitempty"`
	Options  map[string]string `json:"options,omitempty"`
	Verifier string            `json:"verifier,omitempty"`
	Expires  time.Time         `json:"expires"`
}

func stateKey(state string) string {
	sum := sha256.Sum256([]byte(state))
	return statePrefix + hex.EncodeToString(sum[:])
}

// StartConnect begins a connect flow and returns the authorization URL and
// when the flow expires.
func (v *Vault) StartConnect(ctx context.Context, r ConnectRequest) (string, time.Time, error) {
	if r.Owner == "" {
		return "", time.Time{}, fmt.Errorf("%w: owner is required", ErrInvalidArgument)
	}
	p, err := v.provider(r.Provider)
	if err != nil {
		return "", time.Time{}, err
	}
	if r.ReturnTo == "" {
		r.ReturnTo = v.cfg.DefaultReturnTo
	} else if !v.returnToAllowed(r.ReturnTo) {
		return "", time.Time{}, ErrReturnToNotAllowed
	}
	st := connectState{
		Owner: r.Owner, Tenant: r.Tenant, Provider: r.Provider, Label: r.Label,
		Purpose: r.Purpose, Scopes: r.Scopes, ReturnTo: r.ReturnTo, Options: r.Options,
		Expires: v.now().Add(v.cfg.StateTTL),
	}
	if p.PKCE() {
		st.Verifier = pkceVerifier()
	}
	state := rand.Text() // crypto/rand, 26 base32 characters = 130 bits
	u, err := p.AuthURL(AuthRequest{State: state, Verifier: st.Verifier, Scopes: r.Scopes, Options: r.Options})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	plain, err := json.Marshal(st)
	if err != nil {
		return "", time.Time{}, err
	}
	key := stateKey(state)
	sealed, err := v.kr.Seal(key, plain)
	if err != nil {
		return "", time.Time{}, err
	}
	if _, err := v.store.Apply(ctx, Op{Key: key, Value: sealed, IfRev: 0}); err != nil {
		return "", time.Time{}, fmt.Errorf("vault: store connect state: %w", err)
	}
	return u, st.Expires, nil
}

// CallbackResult is the outcome of a completed connect flow.
type CallbackResult struct {
	Connection  *Connection
	ReturnTo    string
	Reconnected bool // an existing connection got a new grant, keeping its id
}

// CompleteConnect finishes a flow from the callback parameters of the named
// provider.
// The state is consumed whatever happens next, so a replayed callback fails.
// If errCode is set (e.g. "access_denied") no token request is made and it
// returns ErrConsentDenied; an unknown, used or expired state returns
// ErrInvalidState. The result's ReturnTo is set even on ErrConsentDenied and
// exchange failures, so the browser can be sent back.
func (v *Vault) CompleteConnect(ctx context.Context, provider, state, code, errCode string) (*CallbackResult, error) {
	if state == "" {
		return nil, ErrInvalidState
	}
	key := stateKey(state)
	sealed, err := v.store.Take(ctx, key)
	if errors.Is(err, ErrNotFound) {
		return nil, ErrInvalidState
	}
	if err != nil {
		return nil, fmt.Errorf("vault: take connect state: %w", err)
	}
	plain, err := v.kr.Open(key, sealed)
	if err != nil {
		return nil, ErrInvalidState
	}
	var st connectState
	if err := json.Unmarshal(plain, &st); err != nil {
		return nil, ErrInvalidState
	}
	if v.now().After(st.Expires) || st.Provider != provider {
		// Expired, or issued for another provider's callback: a code
		// replayed across providers is refused before any token request.
		return nil, ErrInvalidState
	}
	res := &CallbackResult{ReturnTo: st.ReturnTo}
	if errCode != "" {
		return res, fmt.Errorf("%w: %s", ErrConsentDenied, errCode)
	}
	if code == "" {
		return res, fmt.Errorf("%w: callback has no code", ErrInvalidArgument)
	}
	p, err := v.provider(st.Provider)
	if err != nil {
		return res, err
	}
	g, err := p.Exchange(ctx, ExchangeRequest{Code: code, Verifier: st.Verifier, Scopes: st.Scopes, Options: st.Options})
	if err != nil {
		pe := providerError(err)
		if errors.Is(pe.Kind, ErrReauthRequired) {
			pe = &ProviderError{Kind: ErrExchangeFailed, Code: pe.Code}
		}
		return res, pe
	}
	now := v.now()
	for i := range g.Tokens {
		g.Tokens[i].IssuedAt = now
		v.assumeExpiry(st.Provider, &g.Tokens[i], now)
	}
	g.Scopes = normalizeScopes(g.Scopes)
	c, reconnected, err := v.saveGrant(ctx, st, g)
	if err != nil {
		return res, err
	}
	res.Connection, res.Reconnected = c, reconnected
	return res, nil
}

func identKey(owner, tenant, provider, label string) string {
	h := sha256.New()
	for _, s := range []string{owner, tenant, provider, label} {
		fmt.Fprintf(h, "%d:%s", len(s), s)
	}
	return identPrefix + hex.EncodeToString(h.Sum(nil))
}

// saveGrant records a new grant: on the existing connection of the same owner,
// tenant, provider and label (keeping its id) unless that one was revoked,
// else on a new connection.
func (v *Vault) saveGrant(ctx context.Context, st connectState, g Grant) (*Connection, bool, error) {
	ik := identKey(st.Owner, st.Tenant, st.Provider, st.Label)
	for attempt := 0; attempt < 5; attempt++ {
		idVal, identRev, err := v.store.Get(ctx, ik)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, false, fmt.Errorf("vault: read identity: %w", err)
		}
		if e := v.entry(string(idVal)); err == nil && e != nil && e.res.Load().status != StatusRevoked {
			c, err := v.reconnect(ctx, e, st, g)
			return c, err == nil, err
		}
		now := v.now()
		c := &Connection{
			ID: "conn_" + strings.ToLower(rand.Text()[:20]), Owner: st.Owner, Tenant: st.Tenant,
			Provider: st.Provider, Label: st.Label, Purpose: st.Purpose,
			RequestedScopes: normalizeScopes(st.Scopes), CreatedAt: now, Grant: g, Connects: 1,
		}
		c.transition(now, StatusActive, "")
		e := newEntry(c)
		e.mu.Lock()
		err = v.commit(ctx, e, nil, c, Op{Key: ik, Value: []byte(c.ID), IfRev: int64(identRev)})
		e.mu.Unlock()
		if errors.Is(err, ErrConflict) {
			continue // a concurrent flow for the same identity won; join it
		}
		if err != nil {
			return nil, false, err
		}
		v.mu.Lock()
		v.entries[c.ID] = e
		i, _ := slices.BinarySearch(v.ids, c.ID)
		v.ids = slices.Insert(v.ids, i, c.ID)
		v.mu.Unlock()
		return c, false, nil
	}
	return nil, false, fmt.Errorf("vault: store connection: %w", ErrConflict)
}

func (v *Vault) reconnect(ctx context.Context, e *entry, st connectState, g Grant) (*Connection, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := v.reload(ctx, e)
	if err != nil {
		return nil, err
	}
	now := v.now()
	next := c.clone()
	next.Grant = g
	next.RequestedScopes = normalizeScopes(st.Scopes)
	if st.Purpose != "" {
		next.Purpose = st.Purpose
	}
	next.InFlight, next.Failures, next.LastError, next.NextRetryAt = nil, 0, "", time.Time{}
	next.Connects++
	next.transition(now, StatusActive, "")
	if err := v.commit(ctx, e, c, next); err != nil {
		return nil, err
	}
	return next, nil
}

// RevokeResult is the outcome of Revoke.
type RevokeResult struct {
	Connection *Connection
	// ProviderErr is why revocation at the provider failed, if it did; the
	// local token material is destroyed regardless.
	ProviderErr error
}

// Revoke revokes connection id at the provider, destroys its token material
// and keeps the record with status revoked. Revoking a revoked connection
// succeeds and calls nobody.
func (v *Vault) Revoke(ctx context.Context, id, reason string) (*RevokeResult, error) {
	e := v.entry(id)
	if e == nil {
		return nil, fmt.Errorf("vault: connection %q: %w", id, ErrNotFound)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := v.reload(ctx, e)
	if err != nil {
		return nil, err
	}
	if c.Status == StatusRevoked {
		return &RevokeResult{Connection: c}, nil
	}
	res := &RevokeResult{}
	if p, err := v.provider(c.Provider); err != nil {
		res.ProviderErr = err
	} else if len(c.Grant.Tokens) > 0 {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), v.cfg.RefreshTimeout)
		res.ProviderErr = p.Revoke(rctx, c.Grant.clone())
		cancel()
	}
	next := c.clone()
	next.Grant.Tokens = nil
	next.Grant.Secrets = nil
	next.InFlight, next.NextRetryAt = nil, time.Time{}
	next.transition(v.now(), StatusRevoked, cmp.Or(reason, ReasonRevoked))
	if err := v.commit(ctx, e, c, next); err != nil {
		return nil, err
	}
	res.Connection = next
	return res, nil
}

// RotateKeys starts a new key term and re-seals every record under it. It
// returns the new term and how many records were re-sealed.
func (v *Vault) RotateKeys(ctx context.Context) (uint32, int, error) {
	term, err := v.kr.Rotate(ctx)
	if err != nil {
		return 0, 0, err
	}
	n, err := Rewrap(ctx, v.store, v.kr, connPrefix, statePrefix, eventPrefix)
	if err != nil {
		return term, n, err
	}
	return term, n, nil
}

// SweepStates deletes connect flows that expired before now and returns how
// many it deleted.
func (v *Vault) SweepStates(ctx context.Context) (int, error) {
	type st struct {
		key string
		rev uint64
		val []byte
	}
	var all []st
	err := v.store.Scan(ctx, statePrefix, "", func(key string, value []byte, rev uint64) (bool, error) {
		all = append(all, st{key, rev, slices.Clone(value)})
		return true, nil
	})
	if err != nil {
		return 0, err
	}
	n := 0
	now := v.now()
	for _, s := range all {
		plain, err := v.kr.Open(s.key, s.val)
		var cs connectState
		if err == nil && json.Unmarshal(plain, &cs) == nil && now.Before(cs.Expires) {
			continue
		}
		if _, err := v.store.Apply(ctx, Op{Key: s.key, Delete: true, IfRev: int64(s.rev)}); err == nil {
			n++
		}
	}
	return n, nil
}

func parseReturnTo(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return nil, errors.New("must be an absolute http(s) URL without credentials")
	}
	return u, nil
}

func (v *Vault) returnToAllowed(s string) bool {
	u, err := parseReturnTo(s)
	if err != nil || u.Fragment != "" {
		return false
	}
	for _, a := range v.cfg.ReturnTo {
		au, err := parseReturnTo(a)
		if err != nil {
			continue
		}
		if u.Scheme == au.Scheme && strings.EqualFold(u.Host, au.Host) && pathWithin(u.EscapedPath(), au.EscapedPath()) {
			return true
		}
	}
	return false
}

// pathWithin reports whether p is base or below it, on segment boundaries
// ("/app" allows "/app" and "/app/x", not "/apple").
func pathWithin(p, base string) bool {
	base = strings.TrimSuffix(base, "/")
	if strings.Contains(p, "/../") || strings.HasSuffix(p, "/..") {
		return false
	}
	return p == base || strings.HasPrefix(p, base+"/") || (base == "" && p == "")
}

// PageToken encodes a List cursor for callers outside the process.
func PageToken(after string) string {
	if after == "" {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString([]byte(after))
}

// ParsePageToken decodes a PageToken.
func ParsePageToken(tok string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return "", fmt.Errorf("%w: bad page token", ErrInvalidArgument)
	}
	return string(b), nil
}

// pkceVerifier returns a fresh RFC 7636 code verifier: 32 random bytes,
// base64url without padding (43 characters).
func pkceVerifier() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}
