package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tokenvault/tokenvault/server"
)

// Config is the YAML configuration of `tokenvault serve`. Secrets are never
// in it: they are named by file or environment variable.
type Config struct {
	// GRPCAddr is where the gRPC API listens: a loopback host:port or
	// unix:///path, never anything else.
	GRPCAddr string `yaml:"grpc_addr"`
	// PublicAddr is the public HTTP listener: the OAuth callback and what
	// else browsers reach through the application's ingress.
	PublicAddr string `yaml:"public_addr"`
	// HealthAddr serves /healthz, /readyz and gRPC health (the kubelet's
	// probes); MetricsAddr serves /metrics.
	HealthAddr  string `yaml:"health_addr"`
	MetricsAddr string `yaml:"metrics_addr"`
	// HTTPAddr is the deprecated name of PublicAddr, from when one HTTP
	// listener served the callback, /healthz and /metrics.
	HTTPAddr string `yaml:"http_addr"`
	// PublicURL is the public listener's address as browsers see it
	// (through the application's ingress); redirect URLs are built on it.
	PublicURL string `yaml:"public_url"`
	// AllowNonLoopback permits the public, health and metrics listeners to
	// listen on addresses other than loopback (a pod's IP). The API never
	// does.
	AllowNonLoopback bool `yaml:"allow_non_loopback"`
	// DataDir holds the bbolt file (tokenvault.db).
	DataDir string `yaml:"data_dir"`
	// Store, if set, chooses the store (store.go): several replicas share
	// one etcd cluster. Without it, the bbolt file in DataDir.
	Store *StoreConfig `yaml:"store"`
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
	// Events configures the event outbox; Webhooks deliver its events
	// (webhooks.go).
	Events   EventsConfig    `yaml:"events"`
	Webhooks []WebhookConfig `yaml:"webhooks"`
	// LogLevel: debug, info, warn, error.
	LogLevel  string                    `yaml:"log_level"`
	Providers map[string]ProviderConfig `yaml:"providers"`
	// ConnectPage is how the connect page (/connect/ on the public
	// listener) presents the application.
	ConnectPage ConnectPageConfig `yaml:"connect_page"`
	// Auth lists the credentials callers present. Without any, every call
	// but health checks is refused.
	Auth AuthConfig `yaml:"auth"`
	// Audit configures the audit log.
	Audit AuditConfig `yaml:"audit"`
}

// AuthConfig lists the sidecar's callers.
type AuthConfig struct {
	// APIKeys are presented as "authorization: Bearer <key>".
	APIKeys []APIKeyConfig `yaml:"api_keys"`
	// UnixSocket is an extra gRPC listener whose callers are identified by
	// their uid (SO_PEERCRED, Linux), no key needed.
	UnixSocket *UnixSocketConfig `yaml:"unix_socket"`
}

// APIKeyConfig is one API key. The key itself is read from KeyFile or the
// environment variable KeyEnv, never from the YAML.
type APIKeyConfig struct {
	// Name identifies the caller in the audit and metrics.
	Name         string `yaml:"name"`
	KeyFile      string `yaml:"key_file"`
	KeyEnv       string `yaml:"key_env"`
	AccessConfig `yaml:",inline"`
}

// AccessConfig is what a credential may do.
type AccessConfig struct {
	// Role: application (tokens, connect, its own reads) or operator
	// (everything, including revoke, audit and keys).
	Role string `yaml:"role"`
	// Providers, if set, limits the credential to these providers'
	// connections and connect flows.
	Providers []string `yaml:"providers"`
	// RateLimit bounds the credential's calls; unset: no limit.
	RateLimit *RateLimitConfig `yaml:"rate_limit"`
}

// RateLimitConfig is a token bucket.
type RateLimitConfig struct {
	RPS   float64 `yaml:"rps"`
	Burst int     `yaml:"burst"`
}

// UnixSocketConfig is the unix-socket listener and the uids it admits.
type UnixSocketConfig struct {
	Path string `yaml:"path"`
	// Mode is the socket file's permissions, octal; default "0660". Use
	// "0666" when the application runs under another uid with no shared
	// group: who may call is still decided by Peers.
	Mode  string       `yaml:"mode"`
	Peers []PeerConfig `yaml:"peers"`
}

// PeerConfig admits the processes of one uid on the unix socket.
type PeerConfig struct {
	UID          *uint32 `yaml:"uid"`
	AccessConfig `yaml:",inline"`
}

// AuditConfig configures the audit log.
type AuditConfig struct {
	// Retention is how long audit records are kept; default 720h.
	Retention time.Duration `yaml:"retention"`
}

// ProviderConfig declares one provider.
// ConnectPageConfig configures the connect page.
type ConnectPageConfig struct {
	// AppName is the application's name as the end user knows it.
	AppName string `yaml:"app_name"`
	// LogoFile is an SVG or PNG shown in the page's header.
	LogoFile string `yaml:"logo_file"`
	// ThemeColor (#rrggbb) colours buttons and links; darkened as needed
	// to keep WCAG AA contrast.
	ThemeColor string `yaml:"theme_color"`
	// PopupOrigins are the application's origins (scheme://host[:port])
	// the page in a popup posts its result to; none: no message.
	PopupOrigins []string `yaml:"popup_origins"`
	// FrameAncestors are the origins allowed to show the page in an
	// iframe; none: framing is refused.
	FrameAncestors []string `yaml:"frame_ancestors"`
}

type ProviderConfig struct {
	// Kind is the adapter: oauth2 (generic), or a named one.
	Kind        string `yaml:"kind"`
	DisplayName string `yaml:"display_name"`
	// Purpose says on the connect page why the application asks for
	// this provider, in the application's words.
	Purpose string `yaml:"purpose"`
	// ScopeWords says what each requested scope allows, in words the end
	// user reads on the connect page ("chat:write": "Post messages").
	ScopeWords map[string]string `yaml:"scope_words"`
	// IconFile is an SVG or PNG icon for the connect page; none: the
	// display name's initial on Color (#rrggbb, default the theme's).
	IconFile         string `yaml:"icon_file"`
	Color            string `yaml:"color"`
	ClientID         string `yaml:"client_id"`
	ClientSecretFile string `yaml:"client_secret_file"`
	ClientSecretEnv  string `yaml:"client_secret_env"`
	AuthURL          string `yaml:"auth_url"`
	TokenURL         string `yaml:"token_url"`
	RevokeURL        string `yaml:"revoke_url"`
	// IntrospectURL is an RFC 7662 endpoint (kind oauth2 only): it gives
	// tokens issued without expires_in their expiry, and lets the sidecar
	// validate grants.
	IntrospectURL string `yaml:"introspect_url"`
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

// checkAPIAddr refuses an API address that is neither loopback nor a unix
// socket, whatever allow_non_loopback says: the token API is for the
// containers of the pod, and nothing else may reach it.
func checkAPIAddr(addr string) error {
	if err := checkLoopback(addr, false); err != nil {
		return fmt.Errorf("grpc_addr %q: the token API listens only on loopback or a unix socket (allow_non_loopback opens the public, health and metrics listeners, never the API)", addr)
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

// buildAuth reads the configured credentials, plus extra (dev mode's
// keys), and checks them against the configured providers. Errors name
// credentials, never keys.
func buildAuth(ac AuthConfig, extra []server.APIKey, providers map[string]bool, env func(string) string) (*server.Auth, error) {
	access := func(who string, c AccessConfig) (server.Access, error) {
		role, err := server.ParseRole(c.Role)
		if err != nil {
			return server.Access{}, fmt.Errorf("auth: %s: %w", who, err)
		}
		for _, p := range c.Providers {
			if !providers[p] {
				return server.Access{}, fmt.Errorf("auth: %s: unknown provider %q", who, p)
			}
		}
		a := server.Access{Role: role, Providers: c.Providers}
		if c.RateLimit != nil {
			a.RateLimit = server.RateLimit{RPS: c.RateLimit.RPS, Burst: c.RateLimit.Burst}
		}
		return a, nil
	}
	keys := slices.Clone(extra)
	for _, k := range ac.APIKeys {
		who := fmt.Sprintf("api key %q", k.Name)
		if (k.KeyFile == "") == (k.KeyEnv == "") {
			return nil, fmt.Errorf("auth: %s: set exactly one of key_file and key_env", who)
		}
		key, err := readSecret(k.KeyFile, k.KeyEnv, env)
		if err != nil {
			return nil, fmt.Errorf("auth: %s: %w", who, err)
		}
		a, err := access(who, k.AccessConfig)
		if err != nil {
			return nil, err
		}
		keys = append(keys, server.APIKey{Name: k.Name, Key: key, Access: a})
	}
	var peers []server.Peer
	if us := ac.UnixSocket; us != nil {
		for i, p := range us.Peers {
			if p.UID == nil {
				return nil, fmt.Errorf("auth: unix_socket peer %d: uid is required", i+1)
			}
			a, err := access(fmt.Sprintf("peer uid %d", *p.UID), p.AccessConfig)
			if err != nil {
				return nil, err
			}
			peers = append(peers, server.Peer{UID: *p.UID, Access: a})
		}
	}
	return server.NewAuth(keys, peers)
}

// devKeyFiles are dev mode's generated API keys in the data dir, by role.
var devKeyFiles = [...]struct{ name, file, role string }{
	{"dev-application", "application.key", "application"},
	{"dev-operator", "operator.key", "operator"},
}

// devAPIKeys returns dev mode's application and operator keys, generating
// them into the data dir (0600) the first time.
func devAPIKeys(dataDir string) ([]server.APIKey, []string, error) {
	var keys []server.APIKey
	var paths []string
	for _, d := range devKeyFiles {
		path := filepath.Join(dataDir, d.file)
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			b = []byte("tvk_" + strings.ToLower(rand.Text()) + "\n")
			err = os.WriteFile(path, b, 0o600)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("dev API key: %w", err)
		}
		role, _ := server.ParseRole(d.role)
		keys = append(keys, server.APIKey{Name: d.name, Key: strings.TrimSpace(string(b)), Access: server.Access{Role: role}})
		paths = append(paths, path)
	}
	return keys, paths, nil
}

// unixSocketMode parses the socket's octal mode; default 0660.
func unixSocketMode(s string) (os.FileMode, error) {
	if s == "" {
		return 0o660, nil
	}
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("auth: unix_socket mode %q: want octal permissions like 0660", s)
	}
	return os.FileMode(m), nil
}
