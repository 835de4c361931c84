package vault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// The connection lifecycle beyond the connect flow: the application's own
// metadata on a connection, erasure (Delete, DeleteOwner), and grants
// brought in from elsewhere (Import, ExchangeLegacy).

// Bounds of a connection's application metadata.
const (
	MaxAppMetadataKeys  = 32
	MaxAppMetadataKey   = 64
	MaxAppMetadataValue = 256
)

// EventDeleted: the connection was erased (Delete, DeleteOwner): its record
// and token material are gone from the store. Reason is the caller's.
const EventDeleted = "connection.deleted"

// CheckAppMetadata reports, as an ErrInvalidArgument, why m is not
// acceptable as a connection's application metadata: at most
// MaxAppMetadataKeys keys of 1 to MaxAppMetadataKey bytes of letters,
// digits and "_.-:/", values of valid UTF-8 without control characters of
// at most MaxAppMetadataValue bytes.
func CheckAppMetadata(m map[string]string) error {
	if len(m) > MaxAppMetadataKeys {
		return fmt.Errorf("%w: app_metadata has %d keys; at most %d", ErrInvalidArgument, len(m), MaxAppMetadataKeys)
	}
	for k, val := range m {
		if err := checkAppMetadataKey(k); err != nil {
			return err
		}
		if len(val) > MaxAppMetadataValue || !utf8.ValidString(val) || strings.ContainsFunc(val, unicode.IsControl) {
			return fmt.Errorf("%w: app_metadata value of %q must be valid UTF-8 without control characters, at most %d bytes", ErrInvalidArgument, k, MaxAppMetadataValue)
		}
	}
	return nil
}

func checkAppMetadataKey(k string) error {
	ok := k != "" && len(k) <= MaxAppMetadataKey && !strings.ContainsFunc(k, func(r rune) bool {
		return !(r < utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("_.-:/", r)))
	})
	if !ok {
		return fmt.Errorf("%w: app_metadata keys are 1 to %d letters, digits or \"_.-:/\"", ErrInvalidArgument, MaxAppMetadataKey)
	}
	return nil
}

// matchesApp reports whether c carries every pair of want.
func matchesApp(c *Connection, want map[string]string) bool {
	for k, val := range want {
		if got, ok := c.AppMetadata[k]; !ok || got != val {
			return false
		}
	}
	return true
}

// UpdateRequest changes a connection's application metadata.
type UpdateRequest struct {
	ID string
	// Set adds keys or replaces their values; Remove removes keys. A key
	// may not be in both.
	Set    map[string]string
	Remove []string
}

// Update applies r and returns the connection after it. The result must
// stay within CheckAppMetadata's bounds. A change that changes nothing
// writes nothing. It returns ErrNotFound for an unknown id.
func (v *Vault) Update(ctx context.Context, r UpdateRequest) (*Connection, error) {
	if err := v.waitLoaded(ctx); err != nil {
		return nil, err
	}
	if err := CheckAppMetadata(r.Set); err != nil {
		return nil, err
	}
	for _, k := range r.Remove {
		if err := checkAppMetadataKey(k); err != nil {
			return nil, err
		}
		if _, both := r.Set[k]; both {
			return nil, fmt.Errorf("%w: app_metadata key %q is both set and removed", ErrInvalidArgument, k)
		}
	}
	e := v.entry(r.ID)
	if e == nil {
		return nil, v.missing(r.ID)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := v.reload(ctx, e)
	if err != nil {
		return nil, err
	}
	next := c.clone()
	if next.AppMetadata == nil {
		next.AppMetadata = make(map[string]string, len(r.Set))
	}
	maps.Copy(next.AppMetadata, r.Set)
	for _, k := range r.Remove {
		delete(next.AppMetadata, k)
	}
	if len(next.AppMetadata) == 0 {
		next.AppMetadata = nil
	}
	if maps.Equal(next.AppMetadata, c.AppMetadata) {
		return c, nil
	}
	if err := CheckAppMetadata(next.AppMetadata); err != nil {
		return nil, err
	}
	if err := v.commit(ctx, e, c, next); err != nil {
		return nil, err
	}
	return next, nil
}

// DeleteResult is the outcome of Delete.
type DeleteResult struct {
	// Connection is the record as it was before deletion, redacted.
	Connection *Connection
	// ProviderErr is why revocation at the provider failed, if it did; the
	// record is deleted regardless.
	ProviderErr error
}

// Delete erases connection id: it revokes the grant at the provider if the
// connection still holds one, then removes the record (and its identity
// index entry) from the store in one write with its EventDeleted event.
// Nothing of the connection stays in the store but that event, which
// carries the redacted record as events do. It returns ErrNotFound for an
// unknown id. A quarantined record (quarantine.go) is deleted alone: no
// revocation, no event, and a result holding only the id.
func (v *Vault) Delete(ctx context.Context, id, reason string) (*DeleteResult, error) {
	if err := v.waitLoaded(ctx); err != nil {
		return nil, err
	}
	e := v.entry(id)
	if e == nil {
		if v.quarantined(id) != nil {
			// Nothing of it can be read: the record goes, alone.
			if err := v.deleteUnreadable(ctx, id); err != nil {
				return nil, err
			}
			return &DeleteResult{Connection: &Connection{ID: id}}, nil
		}
		return nil, fmt.Errorf("vault: connection %q: %w", id, ErrNotFound)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if v.entry(id) != e {
		return nil, fmt.Errorf("vault: connection %q: %w", id, ErrNotFound) // deleted while we waited
	}
	c, err := v.reload(ctx, e)
	if errors.Is(err, ErrRecordUnreadable) {
		// Damaged while served: the record goes, alone, as above; the
		// resident part left in memory goes with it.
		if err := v.deleteUnreadable(ctx, id); err != nil {
			return nil, err
		}
		v.unsaved.Delete(id)
		v.forget(e)
		return &DeleteResult{Connection: &Connection{ID: id, Provider: e.provider, Owner: e.owner, Tenant: e.tenant}}, nil
	}
	if err != nil {
		return nil, err
	}
	res := &DeleteResult{Connection: c.Redacted()}
	if c.Status != StatusRevoked && len(c.Grant.Tokens) > 0 {
		if p, err := v.provider(c.Provider); err != nil {
			res.ProviderErr = err
		} else {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), v.cfg.RefreshTimeout)
			res.ProviderErr = p.Revoke(rctx, c.Grant.clone())
			cancel()
		}
	}
	ops := []Op{{Key: connPrefix + id, Delete: true, IfRev: int64(e.rev)}}
	ik := identKey(c.Owner, c.Tenant, c.Provider, c.Label)
	if val, rev, err := v.store.Get(ctx, ik); err == nil && string(val) == id {
		ops = append(ops, Op{Key: ik, Delete: true, IfRev: int64(rev)})
	} else if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("vault: read identity: %w", err)
	}
	now := v.now()
	snap := c.eventSnapshot()
	snap.Grant.Tokens, snap.Grant.Secrets = nil, nil
	ev := Event{Type: EventDeleted, Reason: reason, ConnectionSequence: c.EventSeq + 1, Time: now, Connection: snap}
	if _, err := v.applyWithEvents(ctx, []Event{ev}, ops); err != nil {
		return nil, fmt.Errorf("vault: delete %s: %w", id, err)
	}
	v.unsaved.Delete(id)
	v.forget(e)
	v.log.LogAttrs(ctx, slog.LevelInfo, "connection deleted", slog.String("connection", id), slog.String("provider", c.Provider))
	return res, nil
}

// forget removes connection e, deleted or quarantined, from memory. A caller still holding
// the entry sees it revoked, and the scheduler forgets it. The caller
// holds e.mu.
func (v *Vault) forget(e *entry) {
	v.mu.Lock()
	if v.entries[e.id] == e {
		v.removeEntry(e.id)
		if i, ok := slices.BinarySearch(v.ids, e.id); ok {
			v.ids = slices.Delete(v.ids, i, i+1)
		}
	}
	v.mu.Unlock()
	tomb := &Connection{ID: e.id, Owner: e.owner, Tenant: e.tenant, Provider: e.provider, Label: e.label,
		Status: StatusRevoked, StatusReason: EventDeleted}
	r := newResident(tomb)
	e.res.Store(r)
	if s := v.sched.Load(); s != nil {
		s.noteChange(e, r)
	}
}

// DeleteOwner deletes every connection of owner, as Delete does, and
// returns the ids it deleted and how many of them could not be revoked at
// the provider. An owner without connections deletes nothing.
func (v *Vault) DeleteOwner(ctx context.Context, owner, reason string) (ids []string, providerFailures int, err error) {
	if owner == "" {
		return nil, 0, fmt.Errorf("%w: owner is required", ErrInvalidArgument)
	}
	if err := v.waitLoaded(ctx); err != nil {
		return nil, 0, err
	}
	v.mu.RLock()
	var todo []string
	for _, id := range v.ids {
		if v.entries[id].owner == owner {
			todo = append(todo, id)
		}
	}
	v.mu.RUnlock()
	for _, id := range todo {
		res, err := v.Delete(ctx, id, reason)
		if errors.Is(err, ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return ids, providerFailures, err
		}
		ids = append(ids, id)
		if res.ProviderErr != nil {
			providerFailures++
		}
	}
	return ids, providerFailures, nil
}

// A LegacyExchanger is a Provider that can trade a grant's non-expiring
// tokens for rotating ones (Slack's oauth.v2.exchange). It returns
// ErrNothingToExchange for a grant that rotates already.
type LegacyExchanger interface {
	ExchangeLegacy(ctx context.Context, g Grant) (Grant, error)
}

// ErrNothingToExchange: the grant holds no non-expiring token.
var ErrNothingToExchange = errors.New("vault: no non-expiring token to exchange")

// Outcomes of ExchangeLegacy, per connection.
const (
	ExchangeExchanged     = "exchanged"
	ExchangeWouldExchange = "would_exchange"
	ExchangeSkipped       = "skipped"
	ExchangeFailed        = "failed"
)

// ExchangeResult is the outcome of ExchangeLegacy for one connection.
type ExchangeResult struct {
	ConnectionID string
	Outcome      string
	// Reason: the provider's error code for a failure, or why a connection
	// was skipped. Never token material.
	Reason string
}

// ExchangeLegacy trades the non-expiring tokens of every active connection
// of provider for rotating ones, each in its connection's critical
// section, and stores the new grant before anyone is served its token.
// Connections that rotate already are skipped, so it is safe to run
// again. A grant the provider says is dead moves to needs_reauth; a
// configuration error (rotation not turned on for the app) stops the run,
// and the connections not reached are reported skipped.
func (v *Vault) ExchangeLegacy(ctx context.Context, provider string, dryRun bool) ([]ExchangeResult, error) {
	if err := v.waitLoaded(ctx); err != nil {
		return nil, err
	}
	p, err := v.provider(provider)
	if err != nil {
		return nil, err
	}
	lx, ok := p.(LegacyExchanger)
	if !ok {
		return nil, fmt.Errorf("%w: provider %q has no token exchange", ErrInvalidArgument, provider)
	}
	v.mu.RLock()
	var ids []string
	for _, id := range v.ids {
		if v.entries[id].provider == provider {
			ids = append(ids, id)
		}
	}
	v.mu.RUnlock()
	out := make([]ExchangeResult, 0, len(ids))
	var stop string
	for _, id := range ids {
		res := ExchangeResult{ConnectionID: id, Outcome: ExchangeSkipped}
		e := v.entry(id)
		switch {
		case e == nil:
			continue // deleted meanwhile
		case stop != "":
			res.Reason = stop
		default:
			r := e.res.Load()
			switch {
			case r.status != StatusActive:
				res.Reason = "not active"
			case !hasLegacyToken(r):
				res.Reason = "rotating already"
			case dryRun:
				res.Outcome = ExchangeWouldExchange
			default:
				res = v.exchangeOne(ctx, e, lx)
				if res.Outcome == ExchangeFailed && res.Reason == stopMisconfigured {
					stop = "provider misconfigured: " + res.Reason
				}
			}
		}
		out = append(out, res)
	}
	return out, nil
}

const stopMisconfigured = "token_rotation_not_enabled"

func hasLegacyToken(r *resident) bool {
	for i := range r.tokens {
		if t := &r.tokens[i]; !t.refreshable && t.expiry == 0 && t.access != "" {
			return true
		}
	}
	return false
}

func (v *Vault) exchangeOne(ctx context.Context, e *entry, lx LegacyExchanger) ExchangeResult {
	res := ExchangeResult{ConnectionID: e.id, Outcome: ExchangeFailed}
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := v.reload(ctx, e)
	if err != nil {
		res.Reason = "store: " + err.Error()
		return res
	}
	if c.Status != StatusActive {
		return ExchangeResult{ConnectionID: e.id, Outcome: ExchangeSkipped, Reason: "not active"}
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), v.cfg.RefreshTimeout)
	g, err := lx.ExchangeLegacy(rctx, c.Grant.clone())
	cancel()
	now := v.now()
	next := c.clone()
	switch {
	case errors.Is(err, ErrNothingToExchange):
		return ExchangeResult{ConnectionID: e.id, Outcome: ExchangeSkipped, Reason: "rotating already"}
	case err != nil:
		pe := providerError(err)
		res.Reason = pe.Code
		if errors.Is(pe.Kind, ErrReauthRequired) {
			next.transition(now, StatusNeedsReauth, pe.Code)
			next.LastError = pe.Code
			if err := v.commit(ctx, e, c, next); err != nil {
				res.Reason = "store: " + err.Error()
			}
		}
		return res
	}
	for i := range g.Tokens {
		if g.Tokens[i].IssuedAt.IsZero() || g.Tokens[i].AccessToken != c.Grant.Tokens[i].AccessToken {
			g.Tokens[i].IssuedAt = now
		}
	}
	g.Scopes = normalizeScopes(g.Scopes)
	next.Grant = g
	next.LastRefreshedAt = now
	keep := next.clone() // commit changes next
	if err := v.commit(ctx, e, c, next); err != nil {
		// The provider spent the legacy token: keep the new grant for the
		// next writer, as a refresh whose commit failed is kept.
		v.unsaved.Store(e.id, keep)
		res.Reason = "store: " + err.Error()
		return res
	}
	v.log.LogAttrs(ctx, slog.LevelInfo, "exchanged a non-expiring grant for a rotating one",
		slog.String("connection", e.id), slog.String("provider", c.Provider))
	return ExchangeResult{ConnectionID: e.id, Outcome: ExchangeExchanged}
}

// listApp narrows a page of List to the connections matching f.App,
// reading further pages until it has limit of them or the list ends.
func (v *Vault) listApp(ctx context.Context, f Filter, page []*Connection, next string, limit int) ([]*Connection, string, error) {
	var out []*Connection
	for {
		for _, c := range page {
			if !matchesApp(c, f.App) {
				continue
			}
			if len(out) == limit {
				return out, out[len(out)-1].ID, nil
			}
			out = append(out, c)
		}
		if next == "" {
			return out, "", nil
		}
		g := f
		g.App = nil
		var err error
		if page, next, err = v.List(ctx, g, next, limit); err != nil {
			return nil, "", err
		}
	}
}
