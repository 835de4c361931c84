package server_test

import (
	"context"
	"errors"
	"testing"

	"github.com/tokenvault/tokenvault/providers"
	"github.com/tokenvault/tokenvault/server"
	"github.com/tokenvault/tokenvault/vault"
)

// stubProvider is a providers.Provider that does nothing.
type stubProvider struct{}

func (stubProvider) Info() providers.Info                          { return providers.Info{Name: "stub"} }
func (stubProvider) AuthURL(providers.AuthRequest) (string, error) { return "", nil }
func (stubProvider) Revoke(context.Context, providers.Grant) error { return nil }
func (stubProvider) Exchange(context.Context, providers.ExchangeRequest) (providers.Grant, error) {
	return providers.Grant{}, nil
}
func (stubProvider) Refresh(context.Context, providers.Grant, string) (providers.Grant, error) {
	return providers.Grant{}, nil
}

// stubValidator can validate; it answers err and records the grant.
type stubValidator struct {
	stubProvider
	err  error
	seen *providers.Grant
}

func (s stubValidator) Validate(ctx context.Context, g providers.Grant) error {
	*s.seen = g
	return s.err
}

func (stubValidator) Info() providers.Info { return providers.Info{Name: "stub", Validation: true} }

// unconfiguredValidator has a Validate method but says it cannot validate,
// as the generic provider without an introspection endpoint does.
type unconfiguredValidator struct{ stubValidator }

func (unconfiguredValidator) Info() providers.Info { return providers.Info{Name: "stub"} }

func TestAdaptProvider_Validator(t *testing.T) {
	if _, ok := server.AdaptProvider(stubProvider{}).(vault.Validator); ok {
		t.Error("a provider without Validate became a vault.Validator")
	}
	if _, ok := server.AdaptProvider(unconfiguredValidator{}).(vault.Validator); ok {
		t.Error("a provider whose Info says it cannot validate became a vault.Validator")
	}
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"live", nil, nil},
		{"dead", &providers.Error{Class: providers.ClassReauth, Code: "token_revoked"}, vault.ErrReauthRequired},
		{"transient", &providers.Error{Class: providers.ClassTransient, Code: "http_503"}, vault.ErrUnavailable},
		{"config", &providers.Error{Class: providers.ClassConfig, Code: "invalid_client"}, vault.ErrMisconfigured},
		{"network", errors.New("dial tcp: refused"), vault.ErrUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var seen providers.Grant
			v, ok := server.AdaptProvider(stubValidator{err: tc.err, seen: &seen}).(vault.Validator)
			if !ok {
				t.Fatal("a providers.Validator did not become a vault.Validator")
			}
			err := v.Validate(context.Background(), vault.Grant{Tokens: []vault.Token{{AccessToken: "at"}}})
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Errorf("Validate = %v; want %v", err, tc.want)
			}
			if len(seen.Tokens) != 1 || seen.Tokens[0].AccessToken != "at" {
				t.Errorf("the provider saw %+v; want the grant's token", seen)
			}
		})
	}
}
