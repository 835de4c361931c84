package vault

import (
	"context"
	"maps"
	"slices"
	"strings"
	"time"
)

// Status is where a connection is in its lifecycle.
type Status string

const (
	StatusActive      Status = "active"
	StatusNeedsReauth Status = "needs_reauth"
	StatusRevoked     Status = "revoked"
)

// Reasons a connection leaves StatusActive that the vault itself decides;
// provider error codes ("invalid_grant", ...) are reasons too.
const (
	ReasonRefreshInterrupted = "refresh_interrupted"
	ReasonRevoked            = "revoked"
	// ReasonTokenExpired: every credential expired and none has a
	// refresh token; only a new consent gives a new token.
	ReasonTokenExpired = "token_expired"
)

// A Token is one credential of a grant.
type Token struct {
	// Name is "" for the primary credential; Slack's user token is "user".
	Name         string `json:"name,omitempty"`
	AccessToken  string `json:"access_token,omitempty"`
	RefreshToken string `json:"refresh_token,omitempty"`
	TokenType    string `json:"token_type,omitempty"`
	// Expiry is when the access token expires; zero means it does not.
	Expiry        time.Time `json:"expiry,omitzero"`
	RefreshExpiry time.Time `json:"refresh_expiry,omitzero"`
	Scopes        []string  `json:"scopes,omitempty"`
	// IssuedAt is when the vault received this access token.
	IssuedAt time.Time `json:"issued_at,omitzero"`
}

// ValidFor reports whether the access token is present and stays valid at
// least until now+d.
func (t *Token) ValidFor(now time.Time, d time.Duration) bool {
	if t.AccessToken == "" {
		return false
	}
	return t.Expiry.IsZero() || t.Expiry.After(now.Add(d))
}

// A Grant is what the provider issued for one end user's consent: its
// credentials, and the account they belong to.
type Grant struct {
	Tokens   []Token           `json:"tokens,omitempty"`
	Scopes   []string          `json:"scopes,omitempty"`
	Account  string            `json:"account,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
	// Secrets are secret values that are not tokens (an id token, a Slack
	// incoming-webhook URL); they are never returned to callers.
	Secrets map[string]string `json:"secrets,omitempty"`
}

// Token returns a pointer to the credential with the given name, or nil.
func (g *Grant) Token(name string) *Token {
	for i := range g.Tokens {
		if g.Tokens[i].Name == name {
			return &g.Tokens[i]
		}
	}
	return nil
}

func (g Grant) clone() Grant {
	out := g
	out.Tokens = slices.Clone(g.Tokens)
	for i := range out.Tokens {
		out.Tokens[i].Scopes = slices.Clone(out.Tokens[i].Scopes)
	}
	out.Scopes = slices.Clone(g.Scopes)
	out.Metadata = maps.Clone(g.Metadata)
	out.Secrets = maps.Clone(g.Secrets)
	return out
}

// A Transition records one change of a connection's status.
type Transition struct {
	At     time.Time `json:"at"`
	From   Status    `json:"from,omitempty"`
	To     Status    `json:"to"`
	Reason string    `json:"reason,omitempty"`
}

// maxTransitions is how many transitions a record keeps, newest last.
const maxTransitions = 20

// InFlight marks a refresh that was started: it is written (and fsynced)
// before the provider is called and cleared in the same write that commits
// the new grant. Finding it at start means the process died in between.
type InFlight struct {
	Credential string    `json:"credential,omitempty"`
	StartedAt  time.Time `json:"started_at"`
	// Attempts counts refresh calls made with the same refresh token after
	// an interruption; the documented recovery allows exactly one.
	Attempts int `json:"attempts,omitempty"`
}

// A Connection is one end user's grant at one provider, with everything the
// vault knows about it. Records handed out by the vault are snapshots shared
// between callers: treat them as read-only.
type Connection struct {
	ID       string `json:"id"`
	Owner    string `json:"owner"`
	Tenant   string `json:"tenant,omitempty"`
	Provider string `json:"provider"`
	Label    string `json:"label,omitempty"`
	Purpose  string `json:"purpose,omitempty"`

	Status          Status   `json:"status"`
	StatusReason    string   `json:"status_reason,omitempty"`
	RequestedScopes []string `json:"requested_scopes,omitempty"`

	CreatedAt       time.Time `json:"created_at"`
	UpdatedAt       time.Time `json:"updated_at"`
	LastRefreshedAt time.Time `json:"last_refreshed_at,omitzero"`
	LastUsedAt      time.Time `json:"last_used_at,omitzero"`
	LastValidatedAt time.Time `json:"last_validated_at,omitzero"`

	// Generation increases by one on every write of the record.
	Generation  uint64       `json:"generation"`
	Transitions []Transition `json:"transitions,omitempty"`
	// Connects counts the connect flows that granted this connection: 1
	// when created, one more per reconnect.
	Connects int `json:"connects,omitempty"`
	// EventSeq is the ConnectionSequence of the connection's last event.
	EventSeq uint64 `json:"event_seq,omitempty"`

	// Refresh bookkeeping.
	InFlight    *InFlight `json:"in_flight,omitempty"`
	Failures    int       `json:"failures,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	NextRetryAt time.Time `json:"next_retry_at,omitzero"`

	Grant Grant `json:"grant"`

	// AppMetadata is the application's own labels on the connection
	// (bounded by CheckAppMetadata).
	AppMetadata map[string]string `json:"app_metadata,omitempty"`
	// CreatedBy names the credential that created the connection: the
	// owning application.
	CreatedBy string `json:"created_by,omitempty"`
	// Imported: the connection was brought in by Import, not a connect flow.
	Imported bool `json:"imported,omitempty"`
}

// GrantedScopes returns the scopes the provider granted.
func (c *Connection) GrantedScopes() []string { return c.Grant.Scopes }

// MissingScopes returns the requested scopes the provider did not grant.
func (c *Connection) MissingScopes() []string {
	return missing(c.RequestedScopes, c.Grant.Scopes)
}

// Credentials returns the names of the connection's credentials.
func (c *Connection) Credentials() []string {
	names := make([]string, 0, len(c.Grant.Tokens))
	for _, t := range c.Grant.Tokens {
		names = append(names, t.Name)
	}
	return names
}

// Expiry returns the expiry of the primary access token (zero if none).
func (c *Connection) Expiry() time.Time {
	if t := c.Grant.Token(""); t != nil {
		return t.Expiry
	}
	if len(c.Grant.Tokens) > 0 {
		return c.Grant.Tokens[0].Expiry
	}
	return time.Time{}
}

func missing(requested, granted []string) []string {
	var out []string
	for _, s := range requested {
		if !slices.Contains(granted, s) {
			out = append(out, s)
		}
	}
	return out
}

// clone returns a deep copy of c, to be modified and written.
func (c *Connection) clone() *Connection {
	out := *c
	out.RequestedScopes = slices.Clone(c.RequestedScopes)
	out.Transitions = slices.Clone(c.Transitions)
	if c.InFlight != nil {
		f := *c.InFlight
		out.InFlight = &f
	}
	out.Grant = c.Grant.clone()
	out.AppMetadata = maps.Clone(c.AppMetadata)
	return &out
}

// Redacted returns a copy of c with all token material and secrets removed,
// safe to hand to callers outside the process.
func (c *Connection) Redacted() *Connection {
	out := c.clone()
	for i := range out.Grant.Tokens {
		t := &out.Grant.Tokens[i]
		t.AccessToken, t.RefreshToken = "", ""
	}
	out.Grant.Secrets = nil
	return out
}

// transition moves c to status to, recording why.
func (c *Connection) transition(now time.Time, to Status, reason string) {
	if c.Status == to && c.StatusReason == reason {
		return
	}
	c.Transitions = append(c.Transitions, Transition{At: now, From: c.Status, To: to, Reason: reason})
	if n := len(c.Transitions); n > maxTransitions {
		c.Transitions = slices.Delete(c.Transitions, 0, n-maxTransitions)
	}
	c.Status, c.StatusReason = to, reason
}

// A Filter selects connections; empty fields match everything.
type Filter struct {
	Owner, Tenant, Provider string
	Status                  Status
	// App: only connections carrying every one of these application
	// metadata pairs. It is matched on the stored record, not in memory,
	// so narrow the list with the other fields where you can.
	App map[string]string
}

func (f Filter) match(e *entry) bool {
	return (f.Owner == "" || f.Owner == e.owner) &&
		(f.Tenant == "" || f.Tenant == e.tenant) &&
		(f.Provider == "" || f.Provider == e.provider) &&
		(f.Status == "" || f.Status == e.res.Load().status)
}

// A Provider is what the vault needs of an OAuth provider. Errors it returns
// should be (or wrap) a *ProviderError so the vault can tell a dead grant
// from a passing failure; any other error counts as transient.
type Provider interface {
	AuthURL(req AuthRequest) (string, error)
	Exchange(ctx context.Context, req ExchangeRequest) (Grant, error)
	Refresh(ctx context.Context, g Grant, credential string) (Grant, error)
	Revoke(ctx context.Context, g Grant) error
	// PKCE reports whether the provider takes PKCE S256.
	PKCE() bool
}

// AuthRequest is what a provider needs to build an authorization URL.
type AuthRequest struct {
	State    string
	Verifier string // PKCE verifier; empty: none
	Scopes   []string
	Options  map[string]string
}

// ExchangeRequest is what a provider needs to redeem an authorization code.
type ExchangeRequest struct {
	Code     string
	Verifier string
	Scopes   []string
	Options  map[string]string
}

// normalizeScopes splits on spaces and commas, de-duplicates and sorts.
func normalizeScopes(in []string) []string {
	var out []string
	for _, s := range in {
		for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' }) {
			if !slices.Contains(out, f) {
				out = append(out, f)
			}
		}
	}
	slices.Sort(out)
	return out
}
