package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenvault/tokenvault/providers"
)

// TestBuildProviders_Kinds builds every named kind from YAML, as an
// operator would declare them.
func TestBuildProviders_Kinds(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte("file-secret-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "tokenvault.yaml")
	yaml := `
public_url: https://tv.example.test
providers:
  slack:
    kind: slack
    client_id: slack-id
    client_secret_env: SLACK_SECRET
    scopes: [chat:write, channels:read]
    options: {user_scopes: "search:read", api_base: "https://slack.example.test/api"}
  github:
    kind: github
    client_id: gh-id
    client_secret_file: ` + secretFile + `
    scopes: [repo]
  linear:
    kind: linear
    client_id: lin-id
    client_secret_env: LINEAR_SECRET
    scopes: [read, write]
    options: {actor: app}
  google:
    kind: google
    client_id: g-id
    client_secret_env: GOOGLE_SECRET
    scopes: [openid, email]
    pkce: true
  salesforce:
    kind: salesforce
    client_id: sf-id
    client_secret_env: SF_SECRET
    scopes: [refresh_token, api, id]
    options: {host: acme.my.salesforce.com, session_timeout: 1h}
`
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"SLACK_SECRET": "slack-secret-value", "LINEAR_SECRET": "linear-secret-value",
		"GOOGLE_SECRET": "google-secret-value", "SF_SECRET": "sf-secret-value"}
	provs, err := buildProviders(cfg, func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("buildProviders = %v", err)
	}
	for _, kind := range []string{"slack", "github", "linear", "google", "salesforce"} {
		p, ok := provs[kind]
		if !ok {
			t.Fatalf("no provider %q", kind)
		}
		in := p.Info()
		if in.Kind != kind || in.Name != kind || in.RedirectURL != "https://tv.example.test/oauth/callback/"+kind {
			t.Errorf("Info(%s) = %+v", kind, in)
		}
		if _, ok := p.(providers.Validator); !ok {
			t.Errorf("%s is not a Validator", kind)
		}
		if s := strings.ToLower(strings.Join(append([]string{in.Name, in.DisplayName, in.ClientID, in.RedirectURL}, in.DefaultScopes...), " ")); strings.Contains(s, "secret-value") {
			t.Errorf("Info(%s) reveals a secret", kind)
		}
	}
	if got := provs["slack"].Info().DefaultScopes; strings.Join(got, " ") != "channels:read chat:write user:search:read" {
		t.Errorf("slack DefaultScopes = %q", got)
	}
}

func TestBuildProvider_KindErrors(t *testing.T) {
	cfg := &Config{PublicURL: "https://tv.example.test"}
	env := func(string) string { return "s3cr3t" }
	for name, pc := range map[string]ProviderConfig{
		"generic field":  {Kind: "slack", ClientID: "id", ClientSecretEnv: "X", TokenURL: "https://x/token"},
		"auth style":     {Kind: "github", ClientID: "id", ClientSecretEnv: "X", AuthStyle: "header"},
		"unknown option": {Kind: "linear", ClientID: "id", ClientSecretEnv: "X", Options: map[string]string{"colour": "red"}},
		"bad host":       {Kind: "salesforce", ClientID: "id", ClientSecretEnv: "X", Options: map[string]string{"host": "not a host"}},
		"no secret":      {Kind: "google", ClientID: "id"},
		"no client id":   {Kind: "github", ClientSecretEnv: "X"},
		"unknown kind":   {Kind: "myspace", ClientID: "id", ClientSecretEnv: "X"},
		"bad base":       {Kind: "slack", ClientID: "id", ClientSecretEnv: "X", Options: map[string]string{"api_base": "ftp://x"}},
		"bad session":    {Kind: "salesforce", ClientID: "id", ClientSecretEnv: "X", Options: map[string]string{"session_timeout": "soon"}},
		"bad actor":      {Kind: "linear", ClientID: "id", ClientSecretEnv: "X", Options: map[string]string{"actor": "bot"}},
	} {
		_, err := buildProvider(strings.ReplaceAll(name, " ", "-"), pc, cfg, env)
		if err == nil {
			t.Errorf("buildProvider(%s) = nil error", name)
		} else if strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("buildProvider(%s) error reveals the secret", name)
		}
	}
}
