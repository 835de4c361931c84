package vault

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"
)

// The connect flow: StartConnect hands out an authorization URL bound to a
// stored state, CompleteConnect redeems the callback, and return_to is
// checked against the allowlist.

// ConnectRequest starts a connect flow.
type ConnectRequest struct {
	Owner, Tenant, Provider, Label, Purpose string
	Scopes                                  []string
	ReturnTo                                string
	// ReturnToPage says ReturnTo is the sidecar's own connect page (set by
	// the server for the page's flows, never from a request): it is not
	// checked against the allowlist.
	ReturnToPage bool
	Options      map[string]string
	// AppMetadata is set on the connection the flow creates, or merged
	// into the one it reconnects (bounded by CheckAppMetadata).
	AppMetadata map[string]string
	// CreatedBy names the credential that started the flow: the owning
	// application of a connection it creates.
	CreatedBy string
	// Binding is the hash of the secret of the browser the flow is bound
	// to (RFC 9700 §4.7): its callback completes only in a browser whose
	// secret hashes to it. Empty: the flow is bound by its start URL
	// (Config.StartURL) when a browser first opens it (BeginConnect).
	Binding string
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
	App      map[string]string `json:"app,omitempty"`
	By       string            `json:"by,omitempty"`
	// Binding is the browser binding hash; a flow record (flowPrefix)
	// has none yet, and holds the State its browser will carry instead.
	Binding string `json:"binding,omitempty"`
	State   string `json:"state,omitempty"`
}

func flowKey(flow string) string {
	sum := sha256.Sum256([]byte(flow))
	return flowPrefix + hex.EncodeToString(sum[:])
}

func stateKey(state string) string {
	sum := sha256.Sum256([]byte(state))
	return statePrefix + hex.EncodeToString(sum[:])
}

// StartConnect begins a connect flow and returns the URL to send the
// browser to and when the flow expires. A request with a Binding gets the
// provider's authorization URL, its flow bound to that browser; one without
// gets the start URL (Config.StartURL), which binds the flow to the first
// browser that opens it (BeginConnect).
func (v *Vault) StartConnect(ctx context.Context, r ConnectRequest) (string, time.Time, error) {
	if r.Owner == "" {
		return "", time.Time{}, fmt.Errorf("%w: owner is required", ErrInvalidArgument)
	}
	if r.Binding == "" && v.cfg.StartURL == nil {
		return "", time.Time{}, fmt.Errorf("%w: a connect flow must be bound to a browser", ErrInvalidArgument)
	}
	if err := CheckAppMetadata(r.AppMetadata); err != nil {
		return "", time.Time{}, err
	}
	p, err := v.provider(r.Provider)
	if err != nil {
		return "", time.Time{}, err
	}
	switch {
	case r.ReturnToPage:
	case r.ReturnTo == "":
		r.ReturnTo = v.cfg.DefaultReturnTo
	case !v.returnToAllowed(r.ReturnTo):
		return "", time.Time{}, ErrReturnToNotAllowed
	}
	st := connectState{
		Owner: r.Owner, Tenant: r.Tenant, Provider: r.Provider, Label: r.Label,
		Purpose: r.Purpose, Scopes: r.Scopes, ReturnTo: r.ReturnTo, Options: r.Options,
		Expires: v.now().Add(v.cfg.StateTTL), App: r.AppMetadata, By: r.CreatedBy,
		Binding: r.Binding,
	}
	if p.PKCE() {
		st.Verifier = pkceVerifier()
	}
	state := rand.Text() // crypto/rand, 26 base32 characters = 130 bits
	u, err := p.AuthURL(AuthRequest{State: state, Verifier: st.Verifier, Scopes: r.Scopes, Options: r.Options})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	key := stateKey(state)
	if r.Binding == "" {
		// Not bound yet: the record waits under the flow's own secret,
		// and the state exists only once a browser has opened the flow.
		flow := rand.Text()
		st.State, key, u = state, flowKey(flow), v.cfg.StartURL(flow)
	}
	if err := v.putState(ctx, key, st); err != nil {
		return "", time.Time{}, err
	}
	return u, st.Expires, nil
}

func (v *Vault) putState(ctx context.Context, key string, st connectState) error {
	plain, err := json.Marshal(st)
	if err != nil {
		return err
	}
	sealed, err := v.kr.Seal(key, plain)
	if err != nil {
		return err
	}
	if _, err := v.store.Apply(ctx, Op{Key: key, Value: sealed, IfRev: 0}); err != nil {
		return fmt.Errorf("vault: store connect state: %w", err)
	}
	return nil
}

// BeginConnect binds the flow of a start URL to the browser whose secret
// hashes to binding and returns the provider's authorization URL. A flow
// binds once: opening its start URL again, or after it expired, returns
// ErrFlowInvalid.
func (v *Vault) BeginConnect(ctx context.Context, flow, binding string) (string, error) {
	if flow == "" || binding == "" {
		return "", ErrFlowInvalid
	}
	key := flowKey(flow)
	sealed, err := v.store.Take(ctx, key)
	if errors.Is(err, ErrNotFound) {
		return "", ErrFlowInvalid
	}
	if err != nil {
		return "", fmt.Errorf("vault: take connect flow: %w", err)
	}
	plain, err := v.kr.Open(key, sealed)
	if err != nil {
		return "", ErrFlowInvalid
	}
	var st connectState
	if err := json.Unmarshal(plain, &st); err != nil || st.State == "" || v.now().After(st.Expires) {
		return "", ErrFlowInvalid
	}
	p, err := v.provider(st.Provider)
	if err != nil {
		return "", err
	}
	state := st.State
	st.State, st.Binding = "", binding
	u, err := p.AuthURL(AuthRequest{State: state, Verifier: st.Verifier, Scopes: st.Scopes, Options: st.Options})
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	if err := v.putState(ctx, stateKey(state), st); err != nil {
		return "", err
	}
	return u, nil
}

// CallbackResult is the outcome of a completed connect flow.
type CallbackResult struct {
	Connection  *Connection
	ReturnTo    string
	Reconnected bool // an existing connection got a new grant, keeping its id
}

// A CallbackRequest is what the provider's redirect brought back to the
// callback of the named provider.
type CallbackRequest struct {
	Provider string
	// State, Code and Error are the callback's query parameters of those
	// names; Error (e.g. "access_denied") is set when consent failed.
	State, Code, Error string
	// Binding is the hash of the secret the callback's browser holds ("":
	// none): it must be the flow's.
	Binding string
}

// CompleteConnect finishes a flow from the callback parameters in req.
// The state is consumed whatever happens next, so a replayed callback fails.
// If req.Error is set (e.g. "access_denied") no token request is made and it
// returns ErrConsentDenied; an unknown, used or expired state returns
// ErrInvalidState. The result's ReturnTo is set even on ErrConsentDenied and
// exchange failures, so the browser can be sent back.
func (v *Vault) CompleteConnect(ctx context.Context, req CallbackRequest) (*CallbackResult, error) {
	provider, state, code, errCode := req.Provider, req.State, req.Code, req.Error
	if state == "" {
		return nil, ErrInvalidState
	}
	if err := v.waitLoaded(ctx); err != nil {
		return nil, err
	}
	key := stateKey(state)
	sealed, _, err := v.store.Get(ctx, key)
	if errors.Is(err, ErrNotFound) {
		return nil, ErrInvalidState
	}
	if err != nil {
		return nil, fmt.Errorf("vault: read connect state: %w", err)
	}
	plain, err := v.kr.Open(key, sealed)
	if err != nil {
		return nil, ErrInvalidState
	}
	var st connectState
	if err := json.Unmarshal(plain, &st); err != nil {
		return nil, ErrInvalidState
	}
	if st.Binding == "" || subtle.ConstantTimeCompare([]byte(st.Binding), []byte(req.Binding)) != 1 {
		// Another browser than the one that began the flow (a victim
		// lured into finishing an attacker's flow, a leaked callback
		// URL): no token request, and the state stays for its own
		// browser.
		return nil, ErrBrowserMismatch
	}
	if _, err := v.store.Take(ctx, key); errors.Is(err, ErrNotFound) {
		return nil, ErrInvalidState // a concurrent callback took it first
	} else if err != nil {
		return nil, fmt.Errorf("vault: take connect state: %w", err)
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
			AppMetadata: cloneMap(st.App), CreatedBy: st.By,
		}
		c.transition(now, StatusActive, "")
		e := newEntry(c)
		// Follow, seeing the new record, leaves it to this flow to add.
		v.mu.Lock()
		v.creating[c.ID] = true
		v.mu.Unlock()
		e.mu.Lock()
		err = v.commit(ctx, e, nil, c, Op{Key: ik, Value: []byte(c.ID), IfRev: int64(identRev)})
		e.mu.Unlock()
		if err != nil {
			v.mu.Lock()
			delete(v.creating, c.ID)
			v.mu.Unlock()
		}
		if errors.Is(err, ErrConflict) {
			continue // a concurrent flow for the same identity won; join it
		}
		if err != nil {
			return nil, false, err
		}
		v.mu.Lock()
		delete(v.creating, c.ID)
		v.addEntry(e)
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
	if len(st.App) > 0 {
		if next.AppMetadata == nil {
			next.AppMetadata = make(map[string]string, len(st.App))
		}
		maps.Copy(next.AppMetadata, st.App)
		if CheckAppMetadata(next.AppMetadata) != nil {
			next.AppMetadata = c.AppMetadata // the merge would pass the bounds: keep what was there
		}
	}
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

// SweepStates deletes connect flows (begun or not) and connect sessions
// that expired before now and returns how many it deleted.
func (v *Vault) SweepStates(ctx context.Context) (int, error) {
	n := 0
	for _, prefix := range []string{statePrefix, flowPrefix, sessionPrefix} {
		m, err := v.sweep(ctx, prefix)
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (v *Vault) sweep(ctx context.Context, prefix string) (int, error) {
	type st struct {
		key string
		rev uint64
		val []byte
	}
	var all []st
	err := v.store.Scan(ctx, prefix, "", func(key string, value []byte, rev uint64) (bool, error) {
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
		var rec struct {
			Expires time.Time `json:"expires"`
		}
		if err == nil && json.Unmarshal(plain, &rec) == nil && now.Before(rec.Expires) {
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
	if err != nil || u.Fragment != "" || !plainPath(u) {
		return false
	}
	for _, a := range v.cfg.ReturnTo {
		au, err := parseReturnTo(a)
		if err != nil {
			continue
		}
		if u.Scheme == au.Scheme && strings.EqualFold(u.Host, au.Host) && pathWithin(u.Path, au.Path) {
			return true
		}
	}
	return false
}

// plainPath reports whether u's path, once percent-decoded, has no dot
// segments ("." or "..", however encoded: a browser resolves them, and
// so may the application's server) and no encoded slash or backslash
// (which a server may decode into a separator). Paths are then compared
// decoded, so no encoding slips a return_to out of its allowed prefix.
func plainPath(u *url.URL) bool {
	raw := strings.ToLower(u.EscapedPath())
	if strings.Contains(raw, "%2f") || strings.Contains(raw, "%5c") || strings.Contains(u.Path, "\\") {
		return false
	}
	for seg := range strings.SplitSeq(u.Path, "/") {
		if seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

// pathWithin reports whether p is base or below it, on segment boundaries
// ("/app" allows "/app" and "/app/x", not "/apple"); both are decoded.
func pathWithin(p, base string) bool {
	base = strings.TrimSuffix(base, "/")
	return p == base || strings.HasPrefix(p, base+"/") || (base == "" && p == "")
}

// pkceVerifier returns a fresh RFC 7636 code verifier: 32 random bytes,
// base64url without padding (43 characters).
func pkceVerifier() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}
