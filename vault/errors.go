package vault

import (
	"errors"
	"fmt"
	"time"
)

// ErrNotFound is returned when a key or record does not exist.
var ErrNotFound = errors.New("vault: not found")

// The vault's error vocabulary. Errors returned by the vault wrap one of
// these; the server maps each to a gRPC code and an ErrorInfo reason.
var (
	// ErrReauthRequired: the provider rejected the grant; the user must
	// connect again.
	ErrReauthRequired = errors.New("vault: re-authorization required")
	// ErrRevoked: the connection was revoked.
	ErrRevoked = errors.New("vault: connection revoked")
	// ErrUnavailable: the provider failed transiently and no valid token is
	// at hand; retry later.
	ErrUnavailable = errors.New("vault: provider unavailable")
	// ErrMisconfigured: the provider rejected our client credentials or
	// redirect URL; an operator must fix the configuration.
	ErrMisconfigured = errors.New("vault: provider misconfigured")
	// ErrUnknownProvider: no provider of that name is configured.
	ErrUnknownProvider = errors.New("vault: unknown provider")
	// ErrInvalidArgument: the request is malformed.
	ErrInvalidArgument = errors.New("vault: invalid argument")
	// ErrReturnToNotAllowed: return_to is not on the allowlist.
	ErrReturnToNotAllowed = errors.New("vault: return_to not allowed")
	// ErrInvalidState: a callback's state is unknown, already used, forged
	// or expired.
	ErrInvalidState = errors.New("vault: invalid or expired state")
	// ErrBrowserMismatch: a callback came from a browser other than the
	// one the flow was bound to (RFC 9700 §4.7): no token request is made.
	ErrBrowserMismatch = errors.New("vault: callback from another browser than the flow's")
	// ErrFlowInvalid: a start URL's flow is unknown, expired or already
	// bound to a browser.
	ErrFlowInvalid = errors.New("vault: connect flow invalid, expired or already started")
	// ErrSessionInvalid: a connect session token is unknown or expired.
	ErrSessionInvalid = errors.New("vault: connect session invalid or expired")
	// ErrConsentDenied: the user (or the provider) declined the consent.
	ErrConsentDenied = errors.New("vault: consent denied")
	// ErrExchangeFailed: the provider refused the authorization code.
	ErrExchangeFailed = errors.New("vault: code exchange failed")
	// ErrRecordUnreadable: the connection's stored record does not open or
	// does not decode (damaged, tampered with, sealed under a key the
	// keyring does not hold); it is quarantined (quarantine.go) and every
	// other connection is served. An *UnreadableError says why.
	ErrRecordUnreadable = errors.New("vault: connection record unreadable")
)

// A ProviderError is a classified provider failure. Kind is one of
// ErrReauthRequired, ErrUnavailable, ErrMisconfigured or ErrExchangeFailed;
// Code is the provider's error code, safe to log and to show.
type ProviderError struct {
	Kind       error
	Code       string
	RetryAfter time.Duration
}

func (e *ProviderError) Error() string {
	return fmt.Sprintf("%v: %s", e.Kind, e.Code)
}

func (e *ProviderError) Unwrap() error { return e.Kind }

// providerError classifies err: a *ProviderError in its chain keeps its
// class, anything else (a network failure, a timeout) is transient.
func providerError(err error) *ProviderError {
	var pe *ProviderError
	if errors.As(err, &pe) {
		return pe
	}
	return &ProviderError{Kind: ErrUnavailable, Code: "network"}
}
