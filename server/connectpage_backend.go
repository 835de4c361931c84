package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/tokenvault/tokenvault/server/connectpage"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/audit"
)

// pageBackend is the connect page's Backend over the vault. Everything it
// does for a session it does for that session's owner (and tenant) only,
// at that session's providers only: a connection id from the browser is
// checked against them before anything reads or changes it.
type pageBackend struct {
	v     *vault.Vault
	audit *audit.Log // nil: not audited
}

// pageMethod is the audit record's method for the connect page's actions.
const pageMethod = "http:connect"

func (b *pageBackend) Session(ctx context.Context, token string) (connectpage.Session, error) {
	s, err := b.v.Session(ctx, token)
	if errors.Is(err, vault.ErrSessionInvalid) {
		return connectpage.Session{}, connectpage.ErrSessionInvalid
	}
	if err != nil {
		return connectpage.Session{}, err
	}
	return connectpage.Session{
		ID: s.ID, Owner: s.Owner, Tenant: s.Tenant, Providers: s.Providers, ReturnTo: s.ReturnTo,
		AllowDisconnect: s.AllowDisconnect, Expires: s.Expires,
		AppMetadata: s.AppMetadata, CreatedBy: s.CreatedBy,
	}, nil
}

// maxPageConnections bounds what the page lists of one owner.
const maxPageConnections = 500

func (b *pageBackend) Connections(ctx context.Context, s connectpage.Session) ([]connectpage.Connection, error) {
	cs, _, err := b.v.List(ctx, vault.Filter{Owner: s.Owner, Tenant: s.Tenant}, "", maxPageConnections)
	if err != nil {
		return nil, err
	}
	var out []connectpage.Connection
	for _, c := range cs {
		if !sessionHas(s, c) || c.Status == vault.StatusRevoked {
			continue
		}
		out = append(out, connectpage.Connection{
			ID: c.ID, Provider: c.Provider, Label: c.Label, Account: c.Grant.Account,
			NeedsReauth: c.Status == vault.StatusNeedsReauth, Reason: c.StatusReason, Since: since(c),
		})
	}
	return out, nil
}

// sessionHas reports whether c is one of s's: its owner's, in its tenant,
// at one of its providers.
func sessionHas(s connectpage.Session, c *vault.Connection) bool {
	return c.Owner == s.Owner && c.Tenant == s.Tenant && (len(s.Providers) == 0 || slices.Contains(s.Providers, c.Provider))
}

// since is when the connection became what it is now.
func since(c *vault.Connection) time.Time {
	if n := len(c.Transitions); n > 0 {
		return c.Transitions[n-1].At
	}
	return c.CreatedAt
}

// owned returns the session's connection id, or ErrNotAllowed: an id that
// is unknown, another owner's, or revoked is refused alike.
func (b *pageBackend) owned(ctx context.Context, s connectpage.Session, id string) (*vault.Connection, error) {
	c, err := b.v.Get(ctx, id)
	if errors.Is(err, vault.ErrNotFound) {
		return nil, connectpage.ErrNotAllowed
	}
	if err != nil {
		return nil, err
	}
	if !sessionHas(s, c) || c.Status == vault.StatusRevoked {
		return nil, connectpage.ErrNotAllowed
	}
	return c, nil
}

func (b *pageBackend) Connect(ctx context.Context, s connectpage.Session, r connectpage.ConnectRequest) (string, error) {
	if len(s.Providers) > 0 && !slices.Contains(s.Providers, r.Provider) {
		return "", connectpage.ErrNotAllowed
	}
	if r.Binding == "" {
		return "", fmt.Errorf("connect page: a flow without a browser binding")
	}
	label := ""
	if r.ConnectionID != "" {
		// Reconnect: the flow gets the connection's label, so that the
		// new grant lands on it and it keeps its id.
		c, err := b.owned(ctx, s, r.ConnectionID)
		if err != nil {
			return "", err
		}
		if c.Provider != r.Provider {
			return "", connectpage.ErrNotAllowed
		}
		label = c.Label
	}
	u, _, err := b.v.StartConnect(ctx, vault.ConnectRequest{
		Owner: s.Owner, Tenant: s.Tenant, Provider: r.Provider, Label: label,
		ReturnTo: r.ReturnTo, ReturnToPage: true, Binding: r.Binding,
		AppMetadata: s.AppMetadata, CreatedBy: s.CreatedBy,
	})
	return u, err
}

func (b *pageBackend) Begin(ctx context.Context, flow, binding string) (string, error) {
	u, err := b.v.BeginConnect(ctx, flow, binding)
	if errors.Is(err, vault.ErrFlowInvalid) {
		return "", connectpage.ErrFlowInvalid
	}
	return u, err
}

// Disconnect revokes the connection as RevokeConnection does: at the
// provider, then the token material is destroyed and a revoked record
// kept. It is audited with the session's id (never its token).
func (b *pageBackend) Disconnect(ctx context.Context, s connectpage.Session, id string) error {
	c, err := b.owned(ctx, s, id)
	if err != nil {
		return err
	}
	res, err := b.v.Revoke(ctx, c.ID, "disconnected by the end user on the connect page")
	if b.audit != nil {
		rec := audit.Record{Caller: s.ID, Method: pageMethod + ".disconnect", ConnectionID: c.ID, Provider: c.Provider, Outcome: "OK"}
		if err != nil {
			rec.Outcome, rec.Reason = codeNames[errCode(toStatus(err))], errorReason(toStatus(err))
		} else if res.ProviderErr != nil {
			rec.Reason = "PROVIDER_REVOCATION_FAILED"
		}
		b.audit.Record(rec)
	}
	return err
}
