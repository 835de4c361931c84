package main

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/tokenvault/tokenvault/vault"
)

// Defaults of the refresh policy by provider kind, where the provider's
// documentation calls for one (see /work/shared/PROVIDERS.md, docs/providers.md).
const (
	// defaultValidateInterval: the named kinds can check a token without
	// refreshing it; long-lived ones (GitHub OAuth apps, Slack without
	// rotation) are checked daily so that a revoked grant is found before
	// the application needs it.
	defaultValidateInterval = 24 * time.Hour
	// googleRefreshIdleMax: Google refresh tokens die after six months
	// unused.
	googleRefreshIdleMax = 180 * 24 * time.Hour
)

// refreshPolicies returns the vault's refresh policy of every configured
// provider.
func refreshPolicies(cfg *Config) map[string]vault.RefreshPolicy {
	out := make(map[string]vault.RefreshPolicy, len(cfg.Providers))
	for name, pc := range cfg.Providers {
		p := vault.RefreshPolicy{
			TokenLifetime:  pc.TokenLifetime,
			RefreshIdleMax: pc.RefreshIdleMax,
			RateLimit:      pc.RefreshRate,
			Burst:          pc.RefreshBurst,
		}
		kind := cmp.Or(pc.Kind, "oauth2")
		if kind != "oauth2" || pc.IntrospectURL != "" {
			p.ValidateInterval = defaultValidateInterval
		}
		if pc.ValidateInterval != nil {
			p.ValidateInterval = *pc.ValidateInterval
		}
		if kind == "google" && p.RefreshIdleMax == 0 {
			p.RefreshIdleMax = googleRefreshIdleMax
		}
		out[name] = p
	}
	return out
}

// checkRefreshConfig refuses refresh settings that cannot mean anything.
func checkRefreshConfig(pc ProviderConfig) error {
	switch {
	case pc.TokenLifetime < 0, pc.RefreshIdleMax < 0, pc.ValidateInterval != nil && *pc.ValidateInterval < 0:
		return errors.New("token_lifetime, refresh_idle_max and validate_interval must not be negative")
	case pc.TokenLifetime > 0 && pc.TokenLifetime < time.Minute:
		return errors.New("token_lifetime must be at least 1m")
	case pc.ValidateInterval != nil && *pc.ValidateInterval > 0 && *pc.ValidateInterval < time.Minute:
		return errors.New("validate_interval must be at least 1m (or 0s: off)")
	case pc.ValidateInterval != nil && *pc.ValidateInterval > 0 && cmp.Or(pc.Kind, "oauth2") == "oauth2" && pc.IntrospectURL == "":
		return errors.New("validate_interval needs introspect_url: a generic provider validates grants by introspection")
	case pc.RefreshRate < 0, pc.RefreshBurst < 0:
		return errors.New("refresh_rate and refresh_burst must not be negative")
	}
	return nil
}

// runScheduler refreshes connections ahead of expiry until ctx is done,
// then waits for the refreshes under way to commit. With share (replicas
// on etcd) it acts only on the connections this replica owns.
func runScheduler(ctx context.Context, v *vault.Vault, share vault.Share, log *slog.Logger) {
	s := vault.NewScheduler(v, vault.SchedulerConfig{Logger: log, Share: share})
	if err := s.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("refresh scheduler stopped", slog.String("err", err.Error()))
	}
}
