package main

import (
	"cmp"
	"crypto/rand"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/tokenvault/tokenvault/providers"
	"github.com/tokenvault/tokenvault/providers/providertest"
)

// buildProviders constructs every provider the config declares, by name.
// The map is built here, explicitly: no registries.
func buildProviders(cfg *Config, env func(string) string) (map[string]providers.Provider, error) {
	out := make(map[string]providers.Provider, len(cfg.Providers))
	names := make([]string, 0, len(cfg.Providers))
	for name := range cfg.Providers {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		pc := cfg.Providers[name]
		if err := checkRefreshConfig(pc); err != nil {
			return nil, fmt.Errorf("provider %q: %w", name, err)
		}
		p, err := buildProvider(name, pc, cfg, env)
		if err != nil {
			return nil, fmt.Errorf("provider %q: %w", name, err)
		}
		out[name] = p
	}
	return out, nil
}

func buildProvider(name string, pc ProviderConfig, cfg *Config, env func(string) string) (providers.Provider, error) {
	if name == "" || strings.ContainsAny(name, "/?#% ") {
		return nil, fmt.Errorf("invalid provider name")
	}
	redirect := cmp.Or(pc.RedirectURL, cfg.PublicURL+"/oauth/callback/"+name)
	var secret string
	if pc.ClientSecretFile != "" || pc.ClientSecretEnv != "" {
		s, err := readSecret(pc.ClientSecretFile, pc.ClientSecretEnv, env)
		if err != nil {
			return nil, fmt.Errorf("client secret: %w", err)
		}
		secret = s
	}
	switch cmp.Or(pc.Kind, "oauth2") {
	case "oauth2":
		style, err := parseAuthStyle(pc.AuthStyle)
		if err != nil {
			return nil, err
		}
		return providers.NewOAuth2(providers.OAuth2Config{
			Name: name, DisplayName: pc.DisplayName,
			ClientID: pc.ClientID, ClientSecret: secret,
			AuthURL: pc.AuthURL, TokenURL: pc.TokenURL, RevokeURL: pc.RevokeURL, IntrospectURL: pc.IntrospectURL,
			RedirectURL: redirect, Scopes: pc.Scopes, ScopeSeparator: pc.ScopeSeparator,
			AuthStyle: style, PKCE: pc.PKCE, AuthParams: pc.AuthParams, TokenParams: pc.TokenParams,
		})
	case "slack", "github", "linear", "google", "salesforce":
		return buildService(name, redirect, secret, pc)
	default:
		return nil, fmt.Errorf("unknown kind %q (want oauth2, slack, github, linear, google or salesforce)", pc.Kind)
	}
}

// buildService builds one of the named providers. Their endpoints and
// quirks are known, so the generic provider's fields are refused rather
// than silently ignored; endpoint bases and other settings go in options
// (see docs/providers.md).
func buildService(name, redirect, secret string, pc ProviderConfig) (providers.Provider, error) {
	for _, f := range []struct {
		field string
		set   bool
	}{
		{"auth_url", pc.AuthURL != ""}, {"token_url", pc.TokenURL != ""}, {"revoke_url", pc.RevokeURL != ""},
		{"introspect_url", pc.IntrospectURL != ""},
		{"scope_separator", pc.ScopeSeparator != ""}, {"auth_style", pc.AuthStyle != ""},
		{"auth_params", len(pc.AuthParams) > 0}, {"token_params", len(pc.TokenParams) > 0},
	} {
		if f.set {
			return nil, fmt.Errorf("kind %s does not take %s; endpoint bases and settings are options (see docs/providers.md)", pc.Kind, f.field)
		}
	}
	sc := providers.ServiceConfig{
		Name: name, DisplayName: pc.DisplayName,
		ClientID: pc.ClientID, ClientSecret: secret,
		RedirectURL: redirect, Scopes: pc.Scopes, PKCE: pc.PKCE, Options: pc.Options,
	}
	switch pc.Kind {
	case "slack":
		return providers.NewSlack(sc)
	case "github":
		return providers.NewGitHub(sc)
	case "linear":
		return providers.NewLinear(sc)
	case "google":
		return providers.NewGoogle(sc)
	default: // "salesforce"
		return providers.NewSalesforce(sc)
	}
}

func parseAuthStyle(s string) (providers.AuthStyle, error) {
	switch s {
	case "header", "basic":
		return providers.AuthStyleInHeader, nil
	case "params", "body":
		return providers.AuthStyleInParams, nil
	case "":
		return 0, fmt.Errorf("auth_style must be set to header (HTTP Basic) or params: auto-detection would spend one-time codes twice")
	}
	return 0, fmt.Errorf("unknown auth_style %q (want header or params)", s)
}

// sandboxProvider builds dev mode's built-in provider: the strict fake
// authorization server mounted on the sidecar's own HTTP listener under
// /sandbox/, and the generic provider configured against it. Browsers reach
// its authorize endpoint at publicURL; the sidecar calls its token endpoint
// at httpBase. Its grants live in memory: after a restart, refreshing a
// sandbox connection fails and the connection needs re-authorization.
func sandboxProvider(publicURL, httpBase string, lifetime time.Duration) (providers.Provider, http.Handler, error) {
	redirect := publicURL + "/oauth/callback/sandbox"
	sb := providertest.New(providertest.Options{
		Prefix:         "/sandbox",
		BaseURL:        httpBase,
		ClientSecret:   rand.Text(),
		RedirectURIs:   []string{redirect},
		Scopes:         []string{"read", "write"},
		AccessTokenTTL: lifetime,
	})
	cfg := sb.Config()
	cfg.AuthURL = publicURL + "/sandbox" + string(providertest.Authorize)
	p, err := providers.NewOAuth2(cfg)
	if err != nil {
		return nil, nil, err
	}
	return p, sb, nil
}
