package vault

import (
	"math"
	"slices"
	"strings"
	"sync"
	"time"
	"unique"
)

// A resident is what the vault keeps in memory of one connection: what
// AccessToken answers from without touching the store, and what the
// Scheduler plans with. Everything else of the record (refresh tokens,
// secrets, transitions, labels, ...) stays sealed in the store and is read,
// under the connection's lock, by whoever writes it. With 100,000
// connections the full decoded records took 92 MiB; residents take a third
// of that.
//
// A resident is immutable: a commit publishes a new one. Times are Unix
// nanoseconds, 0 for the zero time; strings shared by many connections
// (status, reasons, token types, scope lists) are interned.
type resident struct {
	*residentState
	gen          uint64
	createdAt    int64
	lastUsedAt   int64 // as stored; the entry's lastUsed is newer
	validatedAt  int64
	retryAt      int64
	failures     int32
	inFlight     bool   // a refresh was started and not committed
	inFlightCred string // its credential
	grant        *residentGrant
	tokens       []residentToken
}

// residentState is a connection's status and its reason, shared by every
// resident in the same one.
type residentState struct {
	status Status
	reason string
}

// residentGrant is what GetAccessToken returns along with a token; shared
// between residents of equal grants when it holds no metadata.
type residentGrant struct {
	scopes   []string // granted
	missing  []string // requested and not granted
	metadata map[string]string
}

// residentToken is one credential of a resident: never its refresh token,
// only whether it has one.
type residentToken struct {
	*tokenMeta
	access      string
	expiry      int64
	issuedAt    int64
	refreshable bool
}

// tokenMeta is what many credentials have in common: their name, type and
// scopes (read-only).
type tokenMeta struct {
	name      string
	tokenType string
	scopes    []string
}

// nanos returns t as Unix nanoseconds: 0 for the zero time, clamped to the
// range an int64 holds (years 1678 to 2262).
func nanos(t time.Time) int64 {
	switch {
	case t.IsZero():
		return 0
	case t.Year() >= 2262:
		return math.MaxInt64
	case t.Year() <= 1678:
		return math.MinInt64
	}
	return t.UnixNano()
}

// timeOf is the inverse of nanos.
func timeOf(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// newResident returns the resident of record c.
func newResident(c *Connection) *resident {
	r := &resident{
		residentState: internState(c.Status, c.StatusReason),
		gen:           c.Generation,
		createdAt:     nanos(c.CreatedAt),
		lastUsedAt:    nanos(c.LastUsedAt),
		validatedAt:   nanos(c.LastValidatedAt),
		retryAt:       nanos(c.NextRetryAt),
		failures:      int32(min(c.Failures, math.MaxInt32)),
		inFlight:      c.InFlight != nil,
		grant:         internGrant(c.Grant.Scopes, c.MissingScopes(), c.Grant.Metadata),
		tokens:        make([]residentToken, len(c.Grant.Tokens)),
	}
	if c.InFlight != nil {
		r.inFlightCred = intern(c.InFlight.Credential)
	}
	for i, t := range c.Grant.Tokens {
		r.tokens[i] = residentToken{
			tokenMeta:   internTokenMeta(t.Name, t.TokenType, t.Scopes),
			access:      t.AccessToken,
			expiry:      nanos(t.Expiry),
			issuedAt:    nanos(t.IssuedAt),
			refreshable: t.RefreshToken != "",
		}
	}
	return r
}

// token returns the credential with the given name, or nil.
func (r *resident) token(name string) *residentToken {
	for i := range r.tokens {
		if r.tokens[i].name == name {
			return &r.tokens[i]
		}
	}
	return nil
}

// validFor is Token.ValidFor.
func (t *residentToken) validFor(now time.Time, d time.Duration) bool {
	return t.access != "" && (t.expiry == 0 || t.expiry > now.Add(d).UnixNano())
}

// out returns the credential as a Token, without its refresh token.
func (t *residentToken) out() Token {
	return Token{
		Name: t.name, AccessToken: t.access, TokenType: t.tokenType,
		Expiry: timeOf(t.expiry), IssuedAt: timeOf(t.issuedAt), Scopes: t.scopes,
	}
}

// Interning. Small strings go through package unique; scope lists and
// metadata-free grants through bounded tables (a vault with more distinct
// ones than that simply stops sharing them).
const (
	internMaxLen  = 64
	internMaxSets = 4096
)

func intern(s string) string {
	if s == "" || len(s) > internMaxLen {
		return s
	}
	return unique.Make(s).Value()
}

var interned struct {
	mu         sync.Mutex
	scopes     map[string][]string
	grants     map[[2]string]*residentGrant
	states     map[residentState]*residentState
	tokenMetas map[[3]string]*tokenMeta
	placements map[placement]*placement
}

// internState returns the shared residentState of status and reason.
func internState(status Status, reason string) *residentState {
	return internValue(&interned.states, residentState{Status(intern(string(status))), intern(reason)})
}

// internTokenMeta returns a shared tokenMeta.
func internTokenMeta(name, tokenType string, scopes []string) *tokenMeta {
	scopes = internScopes(scopes)
	key := [3]string{name, tokenType, strings.Join(scopes, "\x00")}
	interned.mu.Lock()
	defer interned.mu.Unlock()
	if m, ok := interned.tokenMetas[key]; ok {
		return m
	}
	m := &tokenMeta{name: intern(name), tokenType: intern(tokenType), scopes: scopes}
	if interned.tokenMetas == nil {
		interned.tokenMetas = map[[3]string]*tokenMeta{}
	}
	if len(interned.tokenMetas) < internMaxSets {
		interned.tokenMetas[key] = m
	}
	return m
}

// internPlacement returns the shared placement of tenant and provider.
func internPlacement(tenant, provider string) *placement {
	return internValue(&interned.placements, placement{intern(tenant), intern(provider)})
}

// internValue returns the shared copy of v in *table.
func internValue[T comparable](table *map[T]*T, v T) *T {
	interned.mu.Lock()
	defer interned.mu.Unlock()
	if p, ok := (*table)[v]; ok {
		return p
	}
	p := &v
	if *table == nil {
		*table = map[T]*T{}
	}
	if len(*table) < internMaxSets {
		(*table)[v] = p
	}
	return p
}

// internScopes returns a shared copy of scopes, which must be read-only.
func internScopes(scopes []string) []string {
	if len(scopes) == 0 {
		return nil
	}
	key := strings.Join(scopes, "\x00")
	interned.mu.Lock()
	defer interned.mu.Unlock()
	if s, ok := interned.scopes[key]; ok {
		return s
	}
	s := slices.Clone(scopes)
	for i := range s {
		s[i] = intern(s[i])
	}
	if interned.scopes == nil {
		interned.scopes = map[string][]string{}
	}
	if len(interned.scopes) < internMaxSets {
		interned.scopes[key] = s
	}
	return s
}

// internGrant returns a residentGrant of the given scopes and metadata,
// shared with other residents if the metadata is empty.
func internGrant(scopes, missing []string, metadata map[string]string) *residentGrant {
	scopes, missing = internScopes(scopes), internScopes(missing)
	if len(metadata) > 0 {
		return &residentGrant{scopes: scopes, missing: missing, metadata: metadata}
	}
	key := [2]string{strings.Join(scopes, "\x00"), strings.Join(missing, "\x00")}
	interned.mu.Lock()
	defer interned.mu.Unlock()
	if g, ok := interned.grants[key]; ok {
		return g
	}
	g := &residentGrant{scopes: scopes, missing: missing}
	if interned.grants == nil {
		interned.grants = map[[2]string]*residentGrant{}
	}
	if len(interned.grants) < internMaxSets {
		interned.grants[key] = g
	}
	return g
}

// TokenInfo is what AccessToken tells about the connection along with its
// token. Its slices and map are shared: read-only.
type TokenInfo struct {
	ConnectionID string
	Provider     string
	// GrantedScopes are the token's own scopes if the provider gave them
	// per token, else the grant's.
	GrantedScopes []string
	// MissingScopes are the scopes requested and not granted.
	MissingScopes []string
	// Metadata is the grant's non-secret provider metadata.
	Metadata map[string]string
}

func (e *entry) info(r *resident, t *residentToken) TokenInfo {
	scopes := r.grant.scopes
	if t != nil && len(t.scopes) > 0 {
		scopes = t.scopes
	}
	return TokenInfo{
		ConnectionID: e.id, Provider: e.provider,
		GrantedScopes: scopes, MissingScopes: r.grant.missing, Metadata: r.grant.metadata,
	}
}
