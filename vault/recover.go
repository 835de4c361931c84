package vault

import (
	"context"
	"errors"
	"log/slog"
	"sync"
)

// Recovery of refreshes a crash interrupted.

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
	if err := v.waitLoaded(ctx); err != nil {
		return 0, err
	}
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
