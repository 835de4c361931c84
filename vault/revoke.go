package vault

import (
	"cmp"
	"context"
	"time"
)

// Revocation at the provider, and destroying the token material.

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
	if err := v.waitLoaded(ctx); err != nil {
		return nil, err
	}
	e := v.entry(id)
	if e == nil {
		return nil, v.missing(id)
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
