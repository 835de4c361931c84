package vault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tokenvault/tokenvault/vault/seal"
)

// What a Store shared by several processes (several replicas of the
// sidecar on one etcd cluster) offers beyond Store. The vault uses each if
// its Store has it; a Store of one process (bbolt) has neither, and the
// connection's in-process lock is then all the exclusion there is.

// A Fencer makes one process at a time the writer of a name across every
// process sharing the Store: the vault fences each connection's refresh
// critical section, so that exactly one replica at a time may present the
// connection's refresh token to the provider.
type Fencer interface {
	// Fence waits until this process holds name (waiting on the holder
	// before it, not polling) or ctx ends. A holder that dies loses the
	// fence after a lease TTL. One process must not ask for one name twice
	// at once.
	Fence(ctx context.Context, name string) (Fence, error)
}

// A Fence is one holding of a Fencer's name.
type Fence interface {
	// Op is a compare-only Op (Check set) that holds while the fence does:
	// an Apply including it fails with ErrConflict, writing nothing, once
	// the fence is lost (released, expired, taken over).
	Op() Op
	// Check returns nil if the fence still holds and will for at least d
	// more, so that a call bounded by d ends before anyone else can hold
	// it; otherwise an error wrapping ErrFenceLost.
	Check(ctx context.Context, d time.Duration) error
	// Release gives the fence up; bounded in time.
	Release()
}

// ErrFenceLost is returned when a fence no longer holds (or would not for
// as long as needed).
var ErrFenceLost = errors.New("vault: fence lost")

// A Watcher reports every write to the Store, by this process or any
// other, so that each replica's resident view follows the others'.
type Watcher interface {
	// Revision returns the Store's current revision: Watch(after = it)
	// reports every later write.
	Revision(ctx context.Context) (uint64, error)
	// Watch calls fn with the changes of keys under prefix after revision
	// after, in order, one call per transaction, until ctx ends or fn
	// fails (returning its error). It returns an error wrapping
	// ErrCompacted if that history is gone, and some other error if the
	// watch is lost; the caller then watches again.
	Watch(ctx context.Context, prefix string, after uint64, fn func([]Change) error) error
}

// A Share tells a replica which connections' scheduled work (refresh ahead
// of expiry, validation, expiry) is its own, when several replicas share a
// Store: each connection's to exactly one live replica, so that the
// provider load is spread over the replicas and nothing is done twice. A
// replica that leaves (dies, is cut off) hands its share to the others
// within a lease TTL. Views may briefly differ while members come and go:
// the connection's fence keeps two replicas that both think they own it
// from refreshing one expiry twice.
type Share interface {
	// Owns reports whether this replica owns connection id's scheduled work.
	Owns(id string) bool
	// Changed returns a channel closed when ownership may have changed
	// (a member joined or left).
	Changed() <-chan struct{}
}

// A Change is one write of a key reported by a Watcher.
type Change struct {
	Key     string
	Value   []byte // nil for a delete
	Rev     uint64 // the key's new revision; of the delete itself for a delete
	Deleted bool
}

// ErrCompacted is returned by Watcher.Watch when the history to resume
// from is gone: the caller reads the current state again.
var ErrCompacted = errors.New("vault: watched history compacted")

// fenceCheckMargin is added to a fenced provider call's timeout when
// checking that the fence outlives it: clocks and a last round trip.
const fenceCheckMargin = time.Second

// fenceName is the name of connection id's fence.
func fenceName(id string) string { return connPrefix + id }

// lockRecord enters e's critical section: the connection's in-process
// lock, then, if the Store is a Fencer, its fence across processes (held
// in e.fence until the returned unlock). The caller re-reads the record
// after it.
func (v *Vault) lockRecord(ctx context.Context, e *entry) (unlock func(), err error) {
	e.mu.Lock()
	if v.fencer == nil {
		return e.mu.Unlock, nil
	}
	waited := v.now()
	f, err := v.fencer.Fence(ctx, fenceName(e.id))
	if err != nil {
		e.mu.Unlock()
		v.log.LogAttrs(ctx, slog.LevelWarn, "could not take the connection's refresh fence",
			slog.String("connection", e.id), slog.String("err", err.Error()))
		return nil, &ProviderError{Kind: ErrUnavailable, Code: "store_unavailable"}
	}
	if d := v.now().Sub(waited); d > 100*time.Millisecond {
		v.log.LogAttrs(ctx, slog.LevelDebug, "waited for another replica's refresh",
			slog.String("connection", e.id), slog.Duration("waited", d))
	}
	e.fence = f
	return func() {
		e.fence = nil
		f.Release()
		e.mu.Unlock()
	}, nil
}

// fenceOps returns the compare of e's fence, if held, to add to a commit.
// The caller holds e.mu.
func (e *entry) fenceOps(ops []Op) []Op {
	if e.fence == nil {
		return ops
	}
	return append(ops, e.fence.Op())
}

// checkFence returns nil if e's fence (if any) holds for a provider call of
// d. The caller holds e.mu.
func (v *Vault) checkFence(ctx context.Context, e *entry, d time.Duration) error {
	if e.fence == nil {
		return nil
	}
	return e.fence.Check(ctx, d+fenceCheckMargin)
}

// fencedOut reports (logs, counts) that e's refresh lost its fence: what
// the provider answered is not written by this replica.
func (v *Vault) fencedOut(ctx context.Context, e *entry, provider, when string, err error) {
	v.fenceLost.Add(1)
	v.log.LogAttrs(ctx, slog.LevelError, "lost the connection's refresh fence; writing nothing",
		slog.String("connection", e.id), slog.String("when", when), slog.String("err", err.Error()))
	if v.cfg.OnRefresh != nil {
		v.cfg.OnRefresh(provider, RefreshFencedOut, 0)
	}
}

// RefreshFencedOut is the OnRefresh outcome of a refresh this replica did
// not finish because it lost the connection's fence: before the provider
// call (nothing was presented), or after it (the answer is not written).
const RefreshFencedOut = "fenced_out"

// FenceLost returns how many refreshes lost their fence since Open.
func (v *Vault) FenceLost() int64 { return v.fenceLost.Load() }

// Follow keeps the vault's resident view current with the writes of the
// other processes sharing its Store, until ctx ends: connections created,
// refreshed, revoked or moved to needs_reauth elsewhere are served here
// within the watch's delay. It resumes from the last revision it applied
// after a lost watch, and reads every connection again if that history was
// compacted away. With a Store that is not a Watcher it returns at once.
func (v *Vault) Follow(ctx context.Context) error {
	w, ok := v.cfg.Store.(Watcher)
	if !ok {
		return nil
	}
	if err := v.waitLoaded(ctx); err != nil {
		return err
	}
	after := v.watchFrom
	backoff := 50 * time.Millisecond
	for {
		err := w.Watch(ctx, "", after, func(cs []Change) error {
			var evs []Event
			for _, c := range cs {
				switch {
				case c.Key == seal.KeyringKey:
					// Keys rotated by another replica: records sealed
					// under the new term follow this change.
					if err := v.kr.Reload(ctx); errors.Is(err, seal.ErrWrongMasterKey) {
						v.log.LogAttrs(ctx, slog.LevelError, "the keyring is now sealed by another master key (keys rekey): restart this replica with the new key; until then it serves with the keys it holds")
					} else if err != nil {
						v.log.LogAttrs(ctx, slog.LevelError, "could not read the keyring another replica changed", slog.String("err", err.Error()))
					}
				case strings.HasPrefix(c.Key, connPrefix):
					v.applyChange(ctx, c)
				case strings.HasPrefix(c.Key, eventPrefix) && !c.Deleted:
					if ev, err := v.decodeEvent(c.Key, c.Value); err == nil {
						evs = append(evs, ev)
					}
				}
				after = c.Rev
			}
			if len(evs) > 0 {
				v.events.mu.Lock()
				v.noteEventsLocked(evs)
				v.events.mu.Unlock()
			}
			v.followed.Store(&followMark{rev: after, at: v.now()})
			backoff = 50 * time.Millisecond
			return nil
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, ErrCompacted) {
			v.log.LogAttrs(ctx, slog.LevelWarn, "watched history compacted; reading every connection again", slog.String("err", err.Error()))
			if rev, rerr := v.resync(ctx, w); rerr == nil {
				after = rev
				continue
			} else {
				err = rerr
			}
		}
		v.log.LogAttrs(ctx, slog.LevelWarn, "watch of the shared store lost; resuming", slog.String("err", err.Error()),
			slog.Uint64("after", after), slog.Duration("in", backoff))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// followMark is the last revision Follow applied, and when.
type followMark struct {
	rev uint64
	at  time.Time
}

// resync reads every connection again and applies what changed; it returns
// the revision to watch on from.
func (v *Vault) resync(ctx context.Context, w Watcher) (uint64, error) {
	rev, err := w.Revision(ctx)
	if err != nil {
		return 0, err
	}
	var cs []Change
	err = v.cfg.Store.Scan(ctx, connPrefix, "", func(key string, value []byte, r uint64) (bool, error) {
		cs = append(cs, Change{Key: key, Value: slices.Clone(value), Rev: r})
		return true, nil
	})
	if err != nil {
		return 0, err
	}
	for _, c := range cs {
		v.applyChange(ctx, c)
	}
	return rev, nil
}

// applyChange makes one watched write of a connection record the
// entry's, unless the entry is already at that revision or later (its own
// commits, seen again). A connection unknown here is added; one being
// created by this process's connect flow is left to it.
func (v *Vault) applyChange(ctx context.Context, ch Change) {
	id, ok := strings.CutPrefix(ch.Key, connPrefix)
	if !ok || id == "" {
		return
	}
	if ch.Deleted {
		v.mu.Lock()
		if _, ok := v.entries[id]; ok {
			v.removeEntry(id)
			if i, found := slices.BinarySearch(v.ids, id); found {
				v.ids = slices.Delete(v.ids, i, i+1)
			}
		}
		v.mu.Unlock()
		return
	}
	c, err := v.decode(ch.Key, ch.Value)
	if errors.Is(err, ErrRecordUnreadable) {
		// Quarantined (quarantine.go): served no more here.
		if e := v.entry(id); e != nil {
			v.forgetIfFree(e)
		}
		return
	}
	if err != nil {
		// A record sealed under a key term this replica does not know yet
		// (a rotation elsewhere) opens once the keyring is read again.
		v.log.LogAttrs(ctx, slog.LevelWarn, "could not read a connection changed by another replica",
			slog.String("connection", id), slog.String("err", err.Error()))
		return
	}
	v.mu.Lock()
	e := v.entries[id]
	if e == nil {
		if v.creating[id] {
			v.mu.Unlock()
			return // this process is creating it; it adds it
		}
		e = newEntry(c)
		e.rev = ch.Rev
		e.res.Store(newResident(c))
		v.addEntry(e)
		i, _ := slices.BinarySearch(v.ids, id)
		v.ids = slices.Insert(v.ids, i, id)
		v.mu.Unlock()
		e.mu.Lock()
		v.changed(e, e.res.Load(), nil, c)
		e.mu.Unlock()
		return
	}
	v.mu.Unlock()
	apply := func() {
		if ch.Rev <= e.rev {
			return
		}
		e.rev = ch.Rev
		if c.Generation != e.res.Load().gen {
			v.publish(e, nil, c)
		}
	}
	// Never wait for a connection's lock here: its holder may be waiting
	// for another replica, and every other connection's changes would wait
	// behind it. The revision check keeps late and repeated changes out.
	if e.mu.TryLock() {
		apply()
		e.mu.Unlock()
		return
	}
	go func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		apply()
	}()
}

// followState is what Follow keeps on the Vault.
type followState struct {
	watchFrom uint64 // the revision Open read the connections at
	followed  atomic.Pointer[followMark]
	creating  map[string]bool // ids being created by this process; guarded by mu
	fencer    Fencer
	fenceLost atomic.Int64
	shared    bool // the Store is a Watcher: other processes write to it
}

// catchUpEventsLocked reads the events other replicas wrote after the last
// one this vault knows, makes them known (the sequence counter, waiters,
// subscribers) and reports whether there were any. The caller holds
// v.events.mu.
func (v *Vault) catchUpEventsLocked(ctx context.Context) (bool, error) {
	o := &v.events
	var evs []Event
	err := v.cfg.Store.Scan(ctx, eventPrefix, eventKey(o.last), func(key string, value []byte, _ uint64) (bool, error) {
		ev, err := v.decodeEvent(key, value)
		if err != nil {
			return false, err
		}
		evs = append(evs, ev)
		return true, nil
	})
	if err != nil || len(evs) == 0 {
		return false, err
	}
	v.noteEventsLocked(evs)
	return true, nil
}

// noteEventsLocked makes events written by another replica known, in
// sequence order, skipping those already known. The caller holds
// v.events.mu.
func (v *Vault) noteEventsLocked(evs []Event) {
	o := &v.events
	var fresh []Event
	for _, ev := range evs {
		if ev.Sequence > o.last {
			fresh = append(fresh, ev)
			o.last = ev.Sequence
		}
	}
	if len(fresh) == 0 {
		return
	}
	close(o.wake)
	o.wake = make(chan struct{})
	for s := range o.subs {
		s.offer(fresh)
	}
}

// openShared opens a sealed value. Sharing the Store, a value another
// replica sealed under a key term this one has not loaded yet (keys
// rotated there a moment ago) opens after reading the keyring again, once.
func (v *Vault) openShared(key string, sealed []byte) ([]byte, error) {
	plain, err := v.kr.Open(key, sealed)
	if err == nil || !v.shared {
		return plain, err
	}
	term, terr := seal.TermOf(sealed)
	if terr != nil || term <= v.kr.Term() {
		return plain, err // not a newer term: reading the keyring will not help
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if rerr := v.kr.Reload(ctx); rerr != nil {
		// Not the value's fault: it is not quarantined for it.
		return nil, fmt.Errorf("sealed under key term %d, newer than this replica's keyring, which could not be read again: %w", term, rerr)
	}
	return v.kr.Open(key, sealed)
}
