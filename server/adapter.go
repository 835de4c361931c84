package server

import (
	"context"
	"errors"

	"github.com/tokenvault/tokenvault/providers"
	"github.com/tokenvault/tokenvault/vault"
)

// providerAdapter presents a providers.Provider as the vault.Provider the
// vault asks for, translating grants and error classes. It is the only place
// the two packages' types meet.
type providerAdapter struct {
	p providers.Provider
}

// AdaptProvider returns p as a vault.Provider. If p is a
// providers.Validator and its Info says it can validate (the generic
// provider can only with an introspection endpoint), the result is a
// vault.Validator too, so that the vault's scheduler can check long-lived
// grants.
func AdaptProvider(p providers.Provider) vault.Provider {
	base := providerAdapter{p}
	v, validates := p.(providers.Validator)
	validates = validates && p.Info().Validation
	x, exchanges := p.(legacyExchanger)
	switch {
	case validates && exchanges:
		return validatingExchanger{validatingAdapter{base, v}, exchangePart{x}}
	case validates:
		return validatingAdapter{base, v}
	case exchanges:
		return exchangingAdapter{base, exchangePart{x}}
	}
	return base
}

// legacyExchanger is a provider that trades non-expiring tokens for
// rotating ones (providers.Slack); the vault sees it as a
// vault.LegacyExchanger.
type legacyExchanger interface {
	ExchangeLegacy(ctx context.Context, g providers.Grant) (providers.Grant, error)
}

type exchangePart struct{ x legacyExchanger }

func (a exchangePart) ExchangeLegacy(ctx context.Context, g vault.Grant) (vault.Grant, error) {
	out, err := a.x.ExchangeLegacy(ctx, toProviderGrant(g))
	if errors.Is(err, providers.ErrNothingToExchange) {
		return vault.Grant{}, vault.ErrNothingToExchange
	}
	if err != nil {
		return vault.Grant{}, classify(err)
	}
	return toVaultGrant(out), nil
}

type exchangingAdapter struct {
	providerAdapter
	exchangePart
}

type validatingExchanger struct {
	validatingAdapter
	exchangePart
}

// validatingAdapter is a providerAdapter whose provider can validate.
type validatingAdapter struct {
	providerAdapter
	v providers.Validator
}

func (a validatingAdapter) Validate(ctx context.Context, g vault.Grant) error {
	return classify(a.v.Validate(ctx, toProviderGrant(g)))
}

func (a providerAdapter) PKCE() bool { return a.p.Info().PKCE }

func (a providerAdapter) AuthURL(r vault.AuthRequest) (string, error) {
	return a.p.AuthURL(providers.AuthRequest{State: r.State, Verifier: r.Verifier, Scopes: r.Scopes, Options: r.Options})
}

func (a providerAdapter) Exchange(ctx context.Context, r vault.ExchangeRequest) (vault.Grant, error) {
	g, err := a.p.Exchange(ctx, providers.ExchangeRequest{Code: r.Code, Verifier: r.Verifier, Scopes: r.Scopes, Options: r.Options})
	if err != nil {
		return vault.Grant{}, classify(err)
	}
	return toVaultGrant(g), nil
}

func (a providerAdapter) Refresh(ctx context.Context, g vault.Grant, credential string) (vault.Grant, error) {
	out, err := a.p.Refresh(ctx, toProviderGrant(g), credential)
	if err != nil {
		return vault.Grant{}, classify(err)
	}
	return toVaultGrant(out), nil
}

func (a providerAdapter) Revoke(ctx context.Context, g vault.Grant) error {
	return classify(a.p.Revoke(ctx, toProviderGrant(g)))
}

// classify turns a provider failure into the vault's vocabulary.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var pe *providers.Error
	if !errors.As(err, &pe) {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return &vault.ProviderError{Kind: vault.ErrUnavailable, Code: "timeout"}
		}
		return &vault.ProviderError{Kind: vault.ErrUnavailable, Code: "network"}
	}
	out := &vault.ProviderError{Code: pe.Code, RetryAfter: pe.RetryAfter}
	switch pe.Class {
	case providers.ClassReauth:
		out.Kind = vault.ErrReauthRequired
	case providers.ClassConfig:
		out.Kind = vault.ErrMisconfigured
	case providers.ClassInvalidRequest:
		out.Kind = vault.ErrExchangeFailed
	default:
		out.Kind = vault.ErrUnavailable
	}
	return out
}

func toVaultGrant(g providers.Grant) vault.Grant {
	out := vault.Grant{Scopes: g.Scopes, Account: g.Account, Metadata: g.Metadata, Secrets: g.Secrets}
	for _, t := range g.Tokens {
		out.Tokens = append(out.Tokens, vault.Token{
			Name: t.Name, AccessToken: t.AccessToken, RefreshToken: t.RefreshToken, TokenType: t.TokenType,
			Expiry: t.Expiry, RefreshExpiry: t.RefreshExpiry, Scopes: t.Scopes,
		})
	}
	return out
}

func toProviderGrant(g vault.Grant) providers.Grant {
	out := providers.Grant{Scopes: g.Scopes, Account: g.Account, Metadata: g.Metadata, Secrets: g.Secrets}
	for _, t := range g.Tokens {
		out.Tokens = append(out.Tokens, providers.Token{
			Name: t.Name, AccessToken: t.AccessToken, RefreshToken: t.RefreshToken, TokenType: t.TokenType,
			Expiry: t.Expiry, RefreshExpiry: t.RefreshExpiry, Scopes: t.Scopes,
		})
	}
	return out
}
