// Package vault is tokenvault's domain core: connections and their
// records, the connect flow, the refresh critical section, the scheduler
// and the event outbox, over a Store it declares (vault/bolt implements
// it). Secrets are sealed by a keyring from vault/seal before they reach
// the Store. It knows nothing of gRPC, of HTTP or of any particular
// provider; it states what it needs of a provider in the Provider
// interface. The audit log (vault/audit) and webhook delivery
// (vault/webhook) build on it; it imports neither.
//
// The files say what they hold: vault.go the Vault type, Open and what
// every file shares; connect.go the connect flow; refresh.go the refresh
// critical section; recover.go recovery after a crash; revoke.go
// revocation; list.go reads; scheduler.go the refresh scheduler; events.go
// the outbox; keyring.go the keyring's place in the Store.
package vault

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	// flowPrefix holds the flows StartConnect began that no browser has
	// opened yet (connect.go), sessionPrefix the connect sessions
	// (session.go): both under the hash of their secret.
	flowPrefix    = "flow/"
	sessionPrefix = "session/"
)

// sealedPrefixes are the prefixes whose values are sealed with the
// keyring: the re-wrap pass walks them, and a key term is retired only
// when none of them holds a value under it.
var sealedPrefixes = []string{connPrefix, statePrefix, flowPrefix, sessionPrefix, eventPrefix}

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
	// StartURL returns the URL a flow's browser opens first (the start
	// URL, which binds the flow to that browser and goes on to the
	// provider): StartConnect without a Binding returns it. Nil: every
	// flow must be started with a Binding.
	StartURL func(flow string) string
	// DefaultMinValid is GetAccessToken's min_valid_for when the caller
	// gives none; default 5 minutes.
	DefaultMinValid time.Duration
	// RefreshTimeout bounds one provider refresh call; default 30 seconds.
	RefreshTimeout time.Duration
	// FencedCallTimeout bounds a provider refresh call made under a fence
	// across processes (a Store that is a Fencer); default 10 seconds. The
	// fence's lease must outlive it: it is checked right before the call.
	FencedCallTimeout time.Duration
	Logger            *slog.Logger
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
	// LoadInBackground makes Open return before the connections are
	// loaded: it reads the outbox's state and the watch revision, starts
	// loading every connection under ctx, and returns. Until the load ends
	// (Loaded), AccessToken by id answers from the one record in the store
	// what it would answer from memory, and every other call that reads the
	// connections waits for the load (loading.go). A failed load is
	// LoadErr's. Unset, Open returns with every connection loaded.
	LoadInBackground bool
	// LoadAfter, with LoadInBackground, holds the load back until it is
	// closed (nil: the load begins at once). The sidecar closes it once it
	// serves: on two cores a load of thousands of records beside the start
	// slowed the way to the first call it answers. If ctx ends first, the
	// load fails with ctx's error.
	LoadAfter <-chan struct{}
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
	ids     []string              // sorted connection ids, for listing
	byOwner map[ownerKey][]*entry // by owner and provider, for Lookup (lookup.go)

	sched atomic.Pointer[Scheduler] // told of every change; nil: none

	// unsaved holds, by connection id, a refreshed record whose commit
	// failed (a full disk, an I/O error, a deadline): the provider has
	// issued its grant, and may have retired the refresh token the store
	// still holds. It is committed by the next writer of the connection
	// (see reload) and never served before. An entry is read and written
	// only under its connection's lock.
	unsaved sync.Map

	// unreadable holds the records that do not open (quarantine.go).
	unreadable quarantine

	// What keeps several processes sharing the Store apart and in step
	// (replicas.go).
	followState

	// The load of the connections, in Open or after it (loading.go).
	loadState loadState
}

// entry is the in-memory state of one connection: its identity, which
// never changes, and the resident part of its committed record (replaced on
// every write). mu is the connection's critical section for writes.
type entry struct {
	id, owner string
	label     string
	*placement

	mu       sync.Mutex
	res      atomic.Pointer[resident]
	rev      uint64 // store revision of res; guarded by mu
	lastUsed atomic.Int64
	item     *schedItem // the Scheduler's; guarded by Scheduler.mu
	fence    Fence      // held across processes, if any; guarded by mu
}

// placement is where a connection belongs: its tenant and provider, shared
// by every connection in the same.
type placement struct {
	tenant, provider string
}

func newEntry(c *Connection) *entry {
	return &entry{id: c.ID, owner: c.Owner, label: c.Label, placement: internPlacement(c.Tenant, c.Provider)}
}

// Open loads every connection from the store and returns a Vault serving
// them; with Config.LoadInBackground it returns once the vault can serve
// and loads them after (loading.go). Refreshes that a crash interrupted
// are found by the load and resolved by RecoverInterrupted.
func Open(ctx context.Context, cfg Config) (*Vault, error) {
	if cfg.Store == nil || cfg.Keyring == nil {
		return nil, errors.New("vault: Config needs a Store and a Keyring")
	}
	cfg.StateTTL = cmp.Or(cfg.StateTTL, 10*time.Minute)
	cfg.DefaultMinValid = cmp.Or(cfg.DefaultMinValid, 5*time.Minute)
	cfg.RefreshTimeout = cmp.Or(cfg.RefreshTimeout, 30*time.Second)
	cfg.FencedCallTimeout = cmp.Or(cfg.FencedCallTimeout, 10*time.Second)
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
		byOwner: make(map[ownerKey][]*entry),
	}
	v.creating = map[string]bool{}
	v.fencer, _ = cfg.Store.(Fencer)
	if err := v.openOutbox(ctx); err != nil {
		return nil, err
	}
	if w, ok := cfg.Store.(Watcher); ok {
		// Follow resumes from here: what changes while the connections
		// load is applied again, and skipped where already loaded.
		rev, err := w.Revision(ctx)
		if err != nil {
			return nil, fmt.Errorf("vault: open: %w", err)
		}
		v.watchFrom, v.shared = rev, true
	}
	v.loadState.done = make(chan struct{})
	if cfg.LoadInBackground {
		go v.loadInBackground(ctx, cfg.LoadAfter)
		return v, nil
	}
	err := v.load(ctx)
	close(v.loadState.done)
	if err != nil {
		return nil, err
	}
	return v, nil
}

// decode opens and decodes the connection record under key. A record that
// does not is quarantined (quarantine.go): the error wraps
// ErrRecordUnreadable. One that does leaves quarantine if it was in it.
func (v *Vault) decode(key string, sealed []byte) (*Connection, error) {
	plain, err := v.openShared(key, sealed)
	if errors.Is(err, seal.ErrBroken) {
		return nil, v.quarantineRecord(key, unreadableReason(err))
	}
	if err != nil {
		return nil, fmt.Errorf("vault: open %s: %w", key, err) // the keyring could not be read again
	}
	var c Connection
	if reason, err := decodeChecked(key, plain, &c, nil); err != nil {
		return nil, v.quarantineRecord(key, reason)
	}
	v.releaseRecord(key)
	return &c, nil
}

// Len returns how many connections the vault holds, of any status. While
// they load in the background it waits for the load.
func (v *Vault) Len() int {
	v.waitLoadedForever()
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
	ops = e.fenceOps(ops) // under a fence, only while it holds
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
	if errors.Is(err, ErrRecordUnreadable) {
		// Quarantined: served no more, from memory either, and dropped
		// by the scheduler, as if it had not opened at start.
		v.forget(e)
		return nil, err
	}
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
