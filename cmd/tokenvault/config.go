package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the YAML configuration of `tokenvault serve`. Secrets are never
// in it: they are named by file or environment variable.
type Config struct {
	// GRPCAddr is where the gRPC API listens: host:port or unix:///path.
	GRPCAddr string `yaml:"grpc_addr"`
	// HTTPAddr is where the OAuth callback (and health) listens.
	HTTPAddr string `yaml:"http_addr"`
	// PublicURL is the HTTP listener's address as browsers see it (through
	// the application's ingress); redirect URLs are built on it.
	PublicURL string `yaml:"public_url"`
	// AllowNonLoopback permits listening on addresses other than loopback.
	AllowNonLoopback bool `yaml:"allow_non_loopback"`
	// DataDir holds the bbolt file (tokenvault.db).
	DataDir string `yaml:"data_dir"`
	// MasterKeyFile or MasterKeyEnv name the master key (32 bytes: raw,
	// base64 or hex). Default env: TOKENVAULT_MASTER_KEY.
	MasterKeyFile string `yaml:"master_key_file"`
	MasterKeyEnv  string `yaml:"master_key_env"`
	// ReturnTo is the allowlist of URLs a connect flow may return to.
	ReturnTo        []string `yaml:"return_to"`
	DefaultReturnTo string   `yaml:"default_return_to"`
	// StateTTL bounds a connect flow (default 10m).
	StateTTL time.Duration `yaml:"state_ttl"`
	// DefaultMinValid is GetAccessToken's default min_valid_for (5m).
	DefaultMinValid time.Duration `yaml:"default_min_valid"`
	// LogLevel: debug, info, warn, error.
	LogLevel  string                    `yaml:"log_level"`
	Providers map[string]ProviderConfig `yaml:"providers"`
}

// ProviderConfig declares one provider.
type ProviderConfig struct {
	// Kind is the adapter: oauth2 (generic), or a named one.
	Kind             string `yaml:"kind"`
	DisplayName      string `yaml:"display_name"`
	ClientID         string `yaml:"client_id"`
	ClientSecretFile string `yaml:"client_secret_file"`
	ClientSecretEnv  string `yaml:"client_secret_env"`
	AuthURL          string `yaml:"auth_url"`
	TokenURL         string `yaml:"token_url"`
	RevokeURL        string `yaml:"revoke_url"`
	// RedirectURL defaults to PublicURL + /oauth/callback/<name>.
	RedirectURL    string            `yaml:"redirect_url"`
	Scopes         []string          `yaml:"scopes"`
	ScopeSeparator string            `yaml:"scope_separator"`
	AuthStyle      string            `yaml:"auth_style"` // "header" (HTTP Basic) or "params"
	PKCE           bool              `yaml:"pkce"`
	AuthParams     map[string]string `yaml:"auth_params"`
	TokenParams    map[string]string `yaml:"token_params"`
	// Options are adapter-specific settings (e.g. Salesforce host).
	Options map[string]string `yaml:"options"`

	// Refresh ahead of expiry and validation (see vault.RefreshPolicy and
	// refreshPolicies for the defaults of each kind).
	//
	// TokenLifetime is the access-token lifetime assumed when the provider
	// sends no expires_in, for tokens that come with a refresh token; zero:
	// such tokens do not expire.
	TokenLifetime time.Duration `yaml:"token_lifetime"`
	// RefreshIdleMax is how long a refresh token lives unused (Google: six
	// months); connections are refreshed before that.
	RefreshIdleMax time.Duration `yaml:"refresh_idle_max"`
	// ValidateInterval is how often a token that is never refreshed (no
	// expiry, or no refresh token) is checked at the provider, if the kind
	// can check; "0s" turns it off.
	ValidateInterval *time.Duration `yaml:"validate_interval"`
	// RefreshRate and RefreshBurst limit the scheduled refreshes and
	// validations per second at this provider (default 100, burst 20).
	RefreshRate  float64 `yaml:"refresh_rate"`
	RefreshBurst int     `yaml:"refresh_burst"`
}

func loadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var c Config
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &c, nil
}

// secret reads a secret from a file (trailing newline trimmed) or an
// environment variable.
func readSecret(file, envName string, env func(string) string) (string, error) {
	switch {
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("read secret file: %w", err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	case envName != "":
		v := env(envName)
		if v == "" {
			return "", fmt.Errorf("environment variable %s is empty", envName)
		}
		return v, nil
	}
	return "", errors.New("no secret file or environment variable named")
}

// checkLoopback refuses a TCP listen address that is not loopback, unless
// allowed. Unix sockets are always allowed.
func checkLoopback(addr string, allow bool) error {
	if allow || strings.HasPrefix(addr, "unix://") {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("listen address %q is not loopback; set allow_non_loopback (or --allow-non-loopback) to serve beyond this host", addr)
	}
	return nil
}

func listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		_ = os.Remove(path)
		l, err := net.Listen("unix", path)
		if err != nil {
			return nil, err
		}
		if err := os.Chmod(path, 0o660); err != nil {
			l.Close()
			return nil, err
		}
		return l, nil
	}
	return net.Listen("tcp", addr)
}
