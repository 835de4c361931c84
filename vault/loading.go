package vault

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	recordv1 "github.com/tokenvault/tokenvault/proto/tokenvault/record/v1"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// Loading in the background (Config.LoadInBackground). Open does what must
// come before anything is served (the outbox, the watch revision) and
// starts the loader, which reads and decodes every connection record
// (load.go) and then makes them all resident at once. Until then:
//
//   - AccessToken by id, the hot path, reads the one record from the
//     store, opens and decodes it without changing anything (peek), and
//     answers from it only what it would answer from memory: an active
//     connection's token valid for as long as asked, or the unreadable
//     record's error. ProviderOf and IsUnreadable, which the server asks
//     before it, answer from the record likewise.
//   - Everything else that reads the connections (a selector lookup,
//     lists, writes, refreshes, admin calls, the scheduler, Follow) waits
//     for the load, bounded by its context, and then takes its usual path:
//     every answer is the one a vault loaded before serving would give.
//
// A load that fails leaves the vault serving nothing more: Loaded is
// closed, LoadErr says why, and every waiting call returns that error.

// FailpointLoad is the Config.Failpoint point the background loader
// reaches before it reads the connections: a test holds it there.
const FailpointLoad = "load"

// loadState is what the Vault keeps of its load.
type loadState struct {
	ready    atomic.Bool   // the connections are resident: nothing waits
	done     chan struct{} // closed when the load ended, loaded or failed
	err      error         // why it failed; written before done closes
	took     time.Duration // how long it took; written before done closes
	earlyUse sync.Map      // connection id -> *atomic.Int64: uses served before the load ended
}

// load reads every connection and makes them resident. It is Open's work
// when the vault does not load in the background, the loader's when it
// does.
func (v *Vault) load(ctx context.Context) error {
	start := time.Now()
	defer func() { v.loadState.took = time.Since(start) }()
	all, bad, err := v.loadConnections(ctx)
	if err != nil {
		return err
	}
	more, err := v.loadUnreadable(ctx, bad, len(all)+len(bad))
	if err != nil {
		return err
	}
	all = append(all, more...)
	ids := make([]string, 0, len(all))
	for _, e := range all {
		ids = append(ids, e.id)
	}
	slices.Sort(ids)
	v.mu.Lock()
	v.entries = make(map[string]*entry, len(all))
	v.byOwner = make(map[ownerKey][]*entry, len(all))
	for _, e := range all {
		v.addEntry(e)
	}
	v.ids = ids
	v.mu.Unlock()
	v.loadState.ready.Store(true)
	// Uses served from the store meanwhile count as uses (AccessToken
	// records them here too once ready is set, so none is lost).
	v.loadState.earlyUse.Range(func(k, x any) bool {
		if e := v.entry(k.(string)); e != nil {
			noteUse(e, x.(*atomic.Int64).Load())
		}
		v.loadState.earlyUse.Delete(k)
		return true
	})
	return nil
}

// loadInBackground runs load once LoadAfter allows, then closes done.
func (v *Vault) loadInBackground(ctx context.Context, after <-chan struct{}) {
	defer close(v.loadState.done)
	if after != nil {
		select {
		case <-after:
		case <-ctx.Done():
			v.loadState.err = fmt.Errorf("vault: load: %w", ctx.Err())
			return
		}
	}
	v.failpoint(FailpointLoad)
	if err := v.load(ctx); err != nil {
		v.loadState.err = fmt.Errorf("vault: load: %w", err)
	}
}

// Loaded returns a channel closed when the connections are loaded, or the
// load failed (LoadErr). Closed when Open returns unless
// Config.LoadInBackground is set.
func (v *Vault) Loaded() <-chan struct{} { return v.loadState.done }

// LoadErr returns why the load failed once Loaded is closed; nil if it
// did not, or has not ended.
func (v *Vault) LoadErr() error {
	select {
	case <-v.loadState.done:
		return v.loadState.err
	default:
		return nil
	}
}

// LoadDuration returns how long the load took, once Loaded is closed.
func (v *Vault) LoadDuration() time.Duration {
	select {
	case <-v.loadState.done:
		return v.loadState.took
	default:
		return 0
	}
}

// Loading reports whether the connections are still loading.
func (v *Vault) Loading() bool {
	if v.loadState.ready.Load() {
		return false
	}
	select {
	case <-v.loadState.done:
		return false
	default:
		return true
	}
}

// WaitLoaded waits until the connections are loaded, and returns nil, or
// the load's error if it failed, or ctx's if ctx ends first. It returns at
// once on a vault that is not loading.
func (v *Vault) WaitLoaded(ctx context.Context) error { return v.waitLoaded(ctx) }

// waitLoaded is WaitLoaded: every exported method that reads the
// connections (entries, byOwner, ids) calls it first.
func (v *Vault) waitLoaded(ctx context.Context) error {
	if v.loadState.ready.Load() {
		return nil
	}
	select {
	case <-v.loadState.done:
		return v.loadState.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitLoadedForever is waitLoaded for the few methods without a context
// (counts, lists for metrics and tools): the load ends, loaded or failed,
// and they then answer from what is resident.
func (v *Vault) waitLoadedForever() {
	if !v.loadState.ready.Load() {
		<-v.loadState.done
	}
}

// errNotPeeked is peek's answer when the record does not settle the
// question by itself: absent (so far), sealed under a key term the
// keyring does not hold yet, or the store failed. The caller waits for the
// load and asks again.
var errNotPeeked = errors.New("vault: the record cannot answer before the load")

// peek reads connection id's record from the store and returns its entry,
// decoded as the loader decodes it, without changing anything: nothing is
// quarantined or published (the loader does that). A record that does not
// open or decode for a reason of its own returns the *UnreadableError the
// loader's quarantine will answer; any other failure errNotPeeked.
func (v *Vault) peek(ctx context.Context, id string) (*entry, error) {
	key := connPrefix + id
	val, rev, err := v.store.Get(ctx, key)
	if err != nil {
		return nil, errNotPeeked
	}
	plain, err := v.kr.OpenAppend(nil, key, val)
	if err != nil {
		reason := unreadableReason(err)
		if !errors.Is(err, seal.ErrBroken) || reason == seal.BrokenUnknownTerm {
			// A term added by another replica: the loader reads the
			// keyring again for it, or refuses the start.
			return nil, errNotPeeked
		}
		return nil, &UnreadableError{ConnectionID: id, Reason: reason}
	}
	var (
		d  loadDecoder
		c  Connection
		pb recordv1.Connection
	)
	e, reason, err := decodeEntryChecked(key, plain, &d, &c, &pb)
	clear(plain)
	if err != nil {
		return nil, &UnreadableError{ConnectionID: id, Reason: reason}
	}
	e.rev = rev
	return e, nil
}

// peekWait is peek for a caller without a context: a record that cannot
// answer makes it wait for the load, and then it returns nil, nil.
func (v *Vault) peekWait(id string) (*entry, error) {
	e, err := v.peek(context.Background(), id)
	if errors.Is(err, errNotPeeked) {
		v.waitLoadedForever()
		return nil, nil
	}
	return e, err
}

// earlyToken is AccessToken for a connection not resident while the
// connections load: a token the resident path would serve from memory is
// served from the record as stored; an unreadable record answers its
// error; anything else waits for the load and takes the usual path.
func (v *Vault) earlyToken(ctx context.Context, req TokenRequest) (Token, TokenInfo, error) {
	e, err := v.peek(ctx, req.ID)
	var ue *UnreadableError
	if errors.As(err, &ue) {
		return Token{}, TokenInfo{}, err
	}
	if e != nil && !req.Force {
		minValid := req.MinValid
		if minValid <= 0 {
			minValid = v.cfg.DefaultMinValid
		}
		now := v.now()
		r := e.res.Load()
		if r.status == StatusActive {
			if t := r.token(req.Credential); t != nil && t.validFor(now, t.margin(minValid)) {
				v.noteEarlyUse(req.ID, now.UnixNano())
				return t.out(), e.info(r, t), nil
			}
		}
	}
	if err := v.waitLoaded(ctx); err != nil {
		return Token{}, TokenInfo{}, err
	}
	return v.AccessToken(ctx, req)
}

// noteEarlyUse records a use of connection id served before the load
// ended, for the loaded entry's last-used time.
func (v *Vault) noteEarlyUse(id string, at int64) {
	x, _ := v.loadState.earlyUse.LoadOrStore(id, new(atomic.Int64))
	u := x.(*atomic.Int64)
	for old := u.Load(); old < at && !u.CompareAndSwap(old, at); old = u.Load() {
	}
	if v.loadState.ready.Load() {
		// Loaded meanwhile: load may have gone past it already.
		if e := v.entry(id); e != nil {
			noteUse(e, at)
		}
	}
}

// noteUse moves e's last use to at, unless it is later already.
func noteUse(e *entry, at int64) {
	for old := e.lastUsed.Load(); old < at && !e.lastUsed.CompareAndSwap(old, at); old = e.lastUsed.Load() {
	}
}
