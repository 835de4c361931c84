// Package providers speaks OAuth 2.0 to the services that hold end users'
// accounts: a generic provider configured by data, and one adapter per
// service whose quirks need code. Everything above this package sees
// normalized grants and classified errors. It knows nothing of gRPC or of
// storage.
package providers

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// A Provider runs the authorization-code flow against one OAuth 2.0
// authorization server, and refreshes and revokes the grants it issued.
// Implementations are safe for concurrent use.
type Provider interface {
	// Info describes the provider. It never includes secrets.
	Info() Info

	// AuthURL returns the URL to send the end user's browser to.
	AuthURL(req AuthRequest) (string, error)

	// Exchange trades an authorization code for a grant, and fills in the
	// account identity (e.g. by calling the provider's user endpoint).
	// The code is single-use: Exchange sends it at most once.
	Exchange(ctx context.Context, req ExchangeRequest) (Grant, error)

	// Refresh renews the named credential of g ("" is the primary one) and
	// returns the whole updated grant: a rotated refresh token replaces the
	// old one; a response without a refresh token keeps the old one; other
	// credentials are carried over unchanged. It sends the refresh token at
	// most once; it never retries on its own.
	Refresh(ctx context.Context, g Grant, credential string) (Grant, error)

	// Revoke revokes the grant at the provider. Revoking a grant that is
	// already revoked succeeds.
	Revoke(ctx context.Context, g Grant) error
}

// A Validator checks cheaply whether a grant's access token is still live at
// the provider, without refreshing it. It returns nil if it is, and a *Error
// classified as ClassReauth if the provider says the grant is dead.
type Validator interface {
	Validate(ctx context.Context, g Grant) error
}

// Info describes a configured provider. It never carries secrets.
type Info struct {
	Name          string // the configured name, e.g. "slack" or "acme"
	Kind          string // the adapter: "oauth2", "slack", "github", ...
	DisplayName   string
	DefaultScopes []string
	PKCE          bool
	Refresh       bool // grants can be refreshed
	Revocation    bool // grants can be revoked at the provider
	Validation    bool // grants can be checked at the provider (Validator)
	ClientID      string
	RedirectURL   string
}

// AuthRequest is what AuthURL needs to build an authorization URL.
type AuthRequest struct {
	State string
	// Verifier is the PKCE code verifier; empty means no PKCE. The provider
	// sends its S256 challenge.
	Verifier string
	// Scopes to request; empty means Info().DefaultScopes.
	Scopes []string
	// Options are provider-specific flow options (e.g. Salesforce "host").
	// Unknown options are an error.
	Options map[string]string
}

// ExchangeRequest is what Exchange needs to redeem an authorization code.
type ExchangeRequest struct {
	Code     string
	Verifier string
	Scopes   []string          // the scopes that were requested
	Options  map[string]string // the same options given to AuthURL
}

// Token is one credential of a grant.
type Token struct {
	// Name is "" for the primary credential; Slack's user token is "user".
	Name         string
	AccessToken  string
	RefreshToken string
	// TokenType is normalized: "Bearer" for every provider tokenvault ships.
	TokenType string
	// Expiry is when the access token expires; zero means the provider
	// issued a token that does not expire.
	Expiry time.Time
	// RefreshExpiry is when the refresh token expires, if the provider said.
	RefreshExpiry time.Time
	// Scopes granted to this credential, normalized.
	Scopes []string
}

// Grant is what a provider issued for one end user's consent.
type Grant struct {
	// Tokens holds the grant's credentials, the primary one first.
	Tokens []Token
	// Scopes is every scope granted, normalized (split, de-duplicated, sorted).
	Scopes []string
	// Account is a human-readable id of the provider account (a GitHub
	// login, a Slack team id, an email).
	Account string
	// Metadata is non-secret provider data (team_id, instance_url, host,
	// org_id, ...). Providers keep what they need for refresh and revoke
	// here (e.g. the Salesforce host).
	Metadata map[string]string
	// Secrets are secret values that are not tokens (an id token, a Slack
	// incoming-webhook URL). They are sealed like tokens and never returned.
	Secrets map[string]string
}

// Token returns the credential with the given name.
func (g Grant) Token(name string) (Token, bool) {
	for _, t := range g.Tokens {
		if t.Name == name {
			return t, true
		}
	}
	return Token{}, false
}

// Class says what a provider error means for the connection.
type Class int

const (
	// ClassTransient: retry later with backoff, honouring RetryAfter.
	ClassTransient Class = iota
	// ClassReauth: the grant is dead; the user must connect again.
	ClassReauth
	// ClassConfig: our client id, secret or redirect URL is wrong; the
	// operator must act, the user's grant is not to blame.
	ClassConfig
	// ClassInvalidRequest: this request cannot succeed (a spent or wrong
	// authorization code, a denied consent); start the flow again.
	ClassInvalidRequest
)

func (c Class) String() string {
	switch c {
	case ClassTransient:
		return "transient"
	case ClassReauth:
		return "reauth"
	case ClassConfig:
		return "config"
	case ClassInvalidRequest:
		return "invalid_request"
	}
	return fmt.Sprintf("Class(%d)", int(c))
}

// Error is a classified provider failure. Its message never includes tokens
// or response bodies; Code is the provider's error code (e.g. "invalid_grant")
// and is safe to log.
type Error struct {
	Class      Class
	Code       string        // provider error code, or "http_503", "network", ...
	Status     int           // HTTP status, 0 if none
	RetryAfter time.Duration // from Retry-After, if the provider sent one
	Op         string        // "exchange", "refresh", "revoke", "validate", ...
	Provider   string
}

func (e *Error) Error() string {
	s := fmt.Sprintf("providers: %s %s: %s (%s)", e.Provider, e.Op, e.Code, e.Class)
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(", retry after %s", e.RetryAfter)
	}
	return s
}

// ClassOf returns the class of err: the Class of a *Error in its chain, and
// ClassTransient for anything else (network failures, timeouts).
func ClassOf(err error) Class {
	var pe *Error
	if errors.As(err, &pe) {
		return pe.Class
	}
	return ClassTransient
}
