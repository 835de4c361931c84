package vault

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// What the vault tells those who watch it: which provider a connection
// belongs to (access control, audit), how many connections are in each
// status (metrics), how refreshes end (Config.OnRefresh), and when each
// connection was last used (persisted by FlushLastUsed).

// Refresh outcomes passed to Config.OnRefresh.
const (
	RefreshOK            = "ok"
	RefreshNeedsReauth   = "needs_reauth"
	RefreshTransient     = "transient"
	RefreshMisconfigured = "misconfigured"
)

// refreshOutcome classifies the error of a provider refresh call.
func refreshOutcome(err error) string {
	switch {
	case err == nil:
		return RefreshOK
	case errors.Is(err, ErrReauthRequired):
		return RefreshNeedsReauth
	case errors.Is(err, ErrMisconfigured):
		return RefreshMisconfigured
	}
	return RefreshTransient
}

// ProviderOf returns the provider of connection id, and false if there is
// no such connection. It copies nothing: cheap enough for every call.
func (v *Vault) ProviderOf(id string) (string, bool) {
	e := v.entry(id)
	if e == nil && !v.loadState.ready.Load() {
		// Loading (loading.go): the record says, or the load will.
		if pe, _ := v.peekWait(id); pe != nil {
			return pe.provider, true
		}
		e = v.entry(id)
	}
	if e == nil {
		return "", false
	}
	return e.provider, true
}

// StatusCount is how many connections of one provider are in one status.
type StatusCount struct {
	Provider string
	Status   Status
	Count    int
}

// CountByStatus counts connections by provider and status, in provider
// then status order. Pairs with no connection are absent.
func (v *Vault) CountByStatus() []StatusCount {
	type key struct {
		p string
		s Status
	}
	counts := map[key]int{}
	v.waitLoadedForever()
	v.mu.RLock()
	for _, e := range v.entries {
		counts[key{e.provider, e.res.Load().status}]++
	}
	v.mu.RUnlock()
	out := make([]StatusCount, 0, len(counts))
	for k, n := range counts {
		out = append(out, StatusCount{Provider: k.p, Status: k.s, Count: n})
	}
	slices.SortFunc(out, func(a, b StatusCount) int {
		if a.Provider != b.Provider {
			return cmp.Compare(a.Provider, b.Provider)
		}
		return cmp.Compare(a.Status, b.Status)
	})
	return out
}

// lastUsedBatch is how many records one Apply of FlushLastUsed writes.
const lastUsedBatch = 256

// FlushLastUsed persists the last-used time of every connection whose
// in-memory last use is more than minStep ahead of its stored record, so
// that it survives a restart. Records are written in batches (one Apply, one
// fsync per batch) with a compare-and-swap on each record's revision. A
// connection whose write lock is held (a refresh under way) is skipped: that
// write persists its last use anyway. It returns how many records it wrote.
func (v *Vault) FlushLastUsed(ctx context.Context, minStep time.Duration) (int, error) {
	if err := v.waitLoaded(ctx); err != nil {
		return 0, err
	}
	v.mu.RLock()
	var due []*entry
	for _, e := range v.entries {
		if lastUseDue(e, minStep) {
			due = append(due, e)
		}
	}
	v.mu.RUnlock()
	n := 0
	for len(due) > 0 {
		k := min(len(due), lastUsedBatch)
		w, err := v.flushLastUsed(ctx, due[:k], minStep)
		n += w
		if err != nil {
			return n, err
		}
		due = due[k:]
	}
	return n, nil
}

// lastUseDue reports whether e's last use is more than minStep ahead of its
// record. A connection never used has lastUsed <= 0.
func lastUseDue(e *entry, minStep time.Duration) bool {
	used := e.lastUsed.Load()
	if used <= 0 {
		return false
	}
	stored := e.res.Load().lastUsedAt
	return stored == 0 || used-stored > int64(minStep)
}

func (v *Vault) flushLastUsed(ctx context.Context, batch []*entry, minStep time.Duration) (int, error) {
	var (
		locked       []*entry
		prevs, nexts []*Connection
		ops          []Op
	)
	defer func() {
		for _, e := range locked {
			e.mu.Unlock()
		}
	}()
	now := v.now()
	for _, e := range batch {
		if !e.mu.TryLock() {
			continue
		}
		if !lastUseDue(e, minStep) {
			e.mu.Unlock()
			continue
		}
		prev, err := v.reload(ctx, e)
		if err != nil {
			e.mu.Unlock()
			return 0, err
		}
		next := prev.clone()
		next.LastUsedAt = timeOf(e.lastUsed.Load())
		next.Generation++
		next.UpdatedAt = now
		key := connPrefix + next.ID
		plain, err := marshalRecord(next)
		if err != nil {
			e.mu.Unlock()
			return 0, fmt.Errorf("vault: encode %s: %w", next.ID, err)
		}
		sealed, err := v.kr.Seal(key, plain)
		if err != nil {
			e.mu.Unlock()
			return 0, fmt.Errorf("vault: seal %s: %w", next.ID, err)
		}
		locked = append(locked, e)
		prevs, nexts = append(prevs, prev), append(nexts, next)
		ops = append(ops, Op{Key: key, Value: sealed, IfRev: int64(e.rev)})
	}
	if len(ops) == 0 {
		return 0, nil
	}
	revs, err := v.store.Apply(ctx, ops...)
	if errors.Is(err, ErrConflict) {
		// Another writer sharing the store changed one of them: write them
		// one by one through the ordinary path, which re-reads first.
		n := 0
		for _, e := range locked {
			c, err := v.reload(ctx, e)
			if err != nil {
				return n, err
			}
			if err := v.commit(ctx, e, c, c.clone()); err != nil {
				return n, err
			}
			n++
		}
		return n, nil
	}
	if err != nil {
		return 0, fmt.Errorf("vault: write last-used times: %w", err)
	}
	for i, e := range locked {
		e.rev = revs[i]
		v.publish(e, prevs[i], nexts[i])
	}
	return len(locked), nil
}
