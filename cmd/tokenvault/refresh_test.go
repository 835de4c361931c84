package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
)

func TestRefreshPolicies_FromConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(path, []byte(`
providers:
  acme:
    kind: oauth2
    token_lifetime: 2h
    refresh_rate: 5
    refresh_burst: 2
  acme-introspect:
    kind: oauth2
    introspect_url: https://acme.example/oauth/introspect
  github:
    kind: github
  slack:
    kind: slack
    validate_interval: 0s
  google:
    kind: google
  google-idle:
    kind: google
    refresh_idle_max: 720h
    validate_interval: 6h
`), 0o600)
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	got := refreshPolicies(cfg)
	for name, want := range map[string]vault.RefreshPolicy{
		"acme":            {TokenLifetime: 2 * time.Hour, RateLimit: 5, Burst: 2},
		"acme-introspect": {ValidateInterval: 24 * time.Hour},
		"github":          {ValidateInterval: 24 * time.Hour},
		"slack":           {},
		"google":          {ValidateInterval: 24 * time.Hour, RefreshIdleMax: 180 * 24 * time.Hour},
		"google-idle":     {ValidateInterval: 6 * time.Hour, RefreshIdleMax: 720 * time.Hour},
	} {
		if got[name] != want {
			t.Errorf("policy of %s = %+v; want %+v", name, got[name], want)
		}
	}
}

func TestCheckRefreshConfig(t *testing.T) {
	d := func(s string) *time.Duration { v, _ := time.ParseDuration(s); return &v }
	for _, tc := range []struct {
		name string
		pc   ProviderConfig
		ok   bool
	}{
		{"empty", ProviderConfig{}, true},
		{"all set", ProviderConfig{IntrospectURL: "https://acme.example/i", TokenLifetime: time.Hour, RefreshIdleMax: time.Hour, ValidateInterval: d("1h"), RefreshRate: 1, RefreshBurst: 1}, true},
		{"named kind validates", ProviderConfig{Kind: "github", ValidateInterval: d("1h")}, true},
		{"generic without introspection cannot validate", ProviderConfig{ValidateInterval: d("1h")}, false},
		{"validation off", ProviderConfig{ValidateInterval: d("0s")}, true},
		{"negative lifetime", ProviderConfig{TokenLifetime: -time.Hour}, false},
		{"lifetime of seconds", ProviderConfig{TokenLifetime: time.Second}, false},
		{"validate every second", ProviderConfig{ValidateInterval: d("1s")}, false},
		{"negative rate", ProviderConfig{RefreshRate: -1}, false},
	} {
		if err := checkRefreshConfig(tc.pc); (err == nil) != tc.ok {
			t.Errorf("%s: checkRefreshConfig = %v; want ok %v", tc.name, err, tc.ok)
		}
	}
}
