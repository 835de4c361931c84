package vault

import (
	"github.com/tokenvault/tokenvault/internal/retry"

	"context"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"time"
)

// The refresh critical section: handing out access tokens, refreshing them
// at the provider once however many callers ask, and backing off after
// transient failures.

// A TokenRequest asks AccessToken for one credential of a connection.
type TokenRequest struct {
	// ID is the connection's id.
	ID string
	// Credential names the token; "" is the primary one.
	Credential string
	// MinValid is how long the token must stay valid; 0 is the configured
	// default (Config.DefaultMinValid). It is capped at a quarter of the
	// token's lifetime, at least 10 s (see MaxMarginFraction), so that no
	// caller makes the vault refresh on every read.
	MinValid time.Duration
	// Force refreshes at the provider even if the token is still valid
	// (the caller saw it rejected). Forced refreshes within a short window
	// of the last one share its result.
	Force bool
}

// AccessToken returns the credential req names, without its refresh token,
// valid for at least req.MinValid, refreshing at the provider first if
// needed or if req.Force is set; and what the caller needs to know of the
// connection with it. A token still valid is served from memory.
//
// It returns ErrNotFound for an unknown id, ErrRevoked for a revoked
// connection, ErrReauthRequired if the provider rejected the grant,
// ErrMisconfigured if the provider rejected our client, and ErrUnavailable
// if the provider failed transiently and the stored token is expired.
func (v *Vault) AccessToken(ctx context.Context, req TokenRequest) (Token, TokenInfo, error) {
	id, credential, minValid, force := req.ID, req.Credential, req.MinValid, req.Force
	e := v.entry(id)
	if e == nil {
		if !v.loadState.ready.Load() {
			return v.earlyToken(ctx, req) // loading.go
		}
		return Token{}, TokenInfo{}, v.missing(id)
	}
	if minValid <= 0 {
		minValid = v.cfg.DefaultMinValid
	}
	now := v.now()
	r := e.res.Load()
	if !force && r.status == StatusActive {
		if t := r.token(credential); t != nil && t.validFor(now, t.margin(minValid)) {
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
	unlock, err := v.lockRecord(ctx, e)
	if err != nil {
		return Token{}, nil, err
	}
	defer unlock()
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
	if t.ValidFor(now, t.margin(minValid)) && (!force || now.Sub(t.IssuedAt) < forceDebounce) {
		return *t, c, nil // someone refreshed while we waited
	}
	if t.RefreshToken == "" {
		if t.ValidFor(now, 0) && !force {
			return *t, c, nil // cannot refresh; still valid, if not for as long as asked
		}
		if grantExpired(c.Grant, now) {
			return Token{}, nil, v.expireLocked(ctx, e, c, now)
		}
		if force && t.ValidFor(now, 0) {
			return v.forceUnrefreshable(ctx, e, c, t, now)
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

// forceUnrefreshable answers a forced refresh of t, a token that cannot be
// refreshed (GitHub OAuth Apps, Slack without rotation) and has not
// expired: the caller saw it rejected, so the provider is asked whether the
// grant still lives, if it can say (a Validator). Live: t, as it is. Dead:
// the connection goes to needs_reauth with the provider's reason and its
// event, and every caller after gets ErrReauthRequired. A provider that
// cannot validate leaves t as the best there is. Forced calls within
// forceDebounce of the last validation share it. The caller holds e.mu
// and has re-read c.
func (v *Vault) forceUnrefreshable(ctx context.Context, e *entry, c *Connection, t *Token, now time.Time) (Token, *Connection, error) {
	p, err := v.provider(c.Provider)
	if err != nil {
		return Token{}, nil, err
	}
	if _, ok := p.(Validator); !ok || now.Sub(c.LastValidatedAt) < forceDebounce {
		return *t, c, nil
	}
	if _, err := v.validateLocked(ctx, ctx, e, c, 0); err != nil {
		return Token{}, nil, err
	}
	return *t, c, nil
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
	// 2. The provider call (paced, if the Scheduler started it). Under a
	// fence across processes, right before it: the fence must outlive the
	// call, which is bounded accordingly. The provider cannot check a
	// fence; this margin is what keeps a paused or cut-off replica from
	// presenting a refresh token another one already used.
	callCtx := ctx
	if e.fence != nil {
		if err := v.checkFence(ctx, e, v.cfg.FencedCallTimeout); err != nil {
			v.fencedOut(ctx, e, c.Provider, "before the provider call", err)
			// Nothing was presented. The marker stays: whoever holds the
			// fence next retries the refresh token once, and the provider,
			// which never saw it, accepts it.
			if t := marked.Grant.Token(credential); t != nil && t.ValidFor(v.now(), 0) {
				return *t, marked, nil
			}
			return Token{}, nil, &ProviderError{Kind: ErrUnavailable, Code: "fence_lost"}
		}
		var cancel context.CancelFunc
		callCtx, cancel = context.WithTimeout(ctx, v.cfg.FencedCallTimeout)
		defer cancel()
	}
	sendGate(callCtx, c.Provider)
	called := v.now()
	g, perr := p.Refresh(callCtx, marked.Grant.clone(), credential)
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
	err = v.commit(ctx, e, marked, next)
	if errors.Is(err, ErrConflict) && e.fence != nil {
		if ferr := e.fence.Check(ctx, 0); ferr != nil {
			// Another replica may hold the connection now: write nothing.
			// The grant is kept unseen; a later holder of the fence
			// commits it only over the very record it was refreshed from.
			v.fencedOut(ctx, e, c.Provider, "after the provider answered", ferr)
			v.unsaved.Store(e.id, keep)
			return Token{}, nil, &ProviderError{Kind: ErrUnavailable, Code: "fence_lost"}
		}
		// Still ours; another replica wrote the record meanwhile (a
		// last-used time, a re-seal): put the grant over what it wrote.
		if merged, merr := v.mergeRefreshed(ctx, e, marked, keep); merr == nil {
			next, err = merged, nil
		} else {
			err = merr
		}
	}
	if err != nil {
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

// mergeRefreshed commits refreshed's grant over e's record as another
// writer left it after marked, provided the record still carries marked's
// in-flight marker (nobody resolved this refresh meanwhile). The caller
// holds e.mu and e's fence.
func (v *Vault) mergeRefreshed(ctx context.Context, e *entry, marked, refreshed *Connection) (*Connection, error) {
	cur, err := v.read(ctx, e)
	if err != nil {
		return nil, err
	}
	if cur.InFlight == nil || !cur.InFlight.StartedAt.Equal(marked.InFlight.StartedAt) || cur.Status != StatusActive {
		return nil, fmt.Errorf("vault: refresh of %s resolved by another writer meanwhile: %w", e.id, ErrConflict)
	}
	next := cur.clone()
	next.Grant = refreshed.Grant
	next.InFlight = nil
	next.LastRefreshedAt = refreshed.LastRefreshedAt
	next.Failures, next.LastError, next.NextRetryAt = 0, "", time.Time{}
	if err := v.commit(ctx, e, cur, next); err != nil {
		return nil, err
	}
	return next, nil
}

// Refresh refreshes the named credential of connection id now, through the
// same critical section as AccessToken. The scheduler calls it.
func (v *Vault) Refresh(ctx context.Context, id, credential string) (*Connection, error) {
	if err := v.waitLoaded(ctx); err != nil {
		return nil, err
	}
	e := v.entry(id)
	if e == nil {
		return nil, v.missing(id)
	}
	_, c, err := v.refreshShared(ctx, e, credential, 0, true)
	return c, err
}

// Backoff returns how long to wait after the n-th consecutive transient
// failure: exponential from 1 s, capped at 10 minutes, with full jitter
// (j in [0,1)), and never less than the provider's Retry-After.
func Backoff(n int, retryAfter time.Duration, j float64) time.Duration {
	d := retry.Exponential(n, time.Second, 10*time.Minute)
	d = d/2 + time.Duration(j*float64(d/2))
	return max(d, retryAfter)
}
