package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/tokenvault/tokenvault/vault"
)

// EventsConfig configures the event outbox.
type EventsConfig struct {
	// Retention is how long events are kept for WatchEvents replays;
	// default 168h. Events an enabled webhook has not received are kept
	// regardless.
	Retention time.Duration `yaml:"retention"`
	// WebhookDisableAfter: a webhook that fails every attempt at one event
	// for this long is disabled; default 72h.
	WebhookDisableAfter time.Duration `yaml:"webhook_disable_after"`
}

// WebhookConfig is one webhook endpoint. Its secrets ("whsec_<base64>") are
// read from files or environment variables, never from the YAML; with
// several, every request carries one signature per secret (rotation).
type WebhookConfig struct {
	// Name keys the endpoint's delivery cursor: a-z, 0-9, _ . -
	Name        string   `yaml:"name"`
	URL         string   `yaml:"url"`
	SecretFiles []string `yaml:"secret_files"`
	SecretEnvs  []string `yaml:"secret_envs"`
	// AllowPrivate permits loopback, private and link-local targets.
	AllowPrivate bool `yaml:"allow_private"`
	// EventTypes, if set, are the only event types delivered.
	EventTypes []string `yaml:"event_types"`
}

// buildWebhooks reads the webhooks' secrets and returns the Webhooks that
// deliver v's events and sweep its outbox (with no endpoint, it only
// sweeps). Errors name webhooks, files and variables, never a secret
// (neither readSecret's nor ParseWebhookSecret's repeat one).
func buildWebhooks(ctx context.Context, cfg *Config, v *vault.Vault, env func(string) string, log *slog.Logger) (*vault.Webhooks, error) {
	eps := make([]vault.WebhookEndpoint, 0, len(cfg.Webhooks))
	for _, wc := range cfg.Webhooks {
		ep := vault.WebhookEndpoint{Name: wc.Name, URL: wc.URL, AllowPrivate: wc.AllowPrivate, EventTypes: wc.EventTypes}
		if len(wc.SecretFiles)+len(wc.SecretEnvs) == 0 {
			return nil, fmt.Errorf("webhook %q: set secret_files or secret_envs", wc.Name)
		}
		add := func(file, envName string) error {
			s, err := readSecret(file, envName, env)
			if err != nil {
				return err
			}
			sec, err := vault.ParseWebhookSecret(s)
			if err != nil {
				return err
			}
			ep.Secrets = append(ep.Secrets, sec)
			return nil
		}
		for _, f := range wc.SecretFiles {
			if err := add(f, ""); err != nil {
				return nil, fmt.Errorf("webhook %q: secret file %s: %w", wc.Name, f, err)
			}
		}
		for _, e := range wc.SecretEnvs {
			if err := add("", e); err != nil {
				return nil, fmt.Errorf("webhook %q: secret env %s: %w", wc.Name, e, err)
			}
		}
		if wc.AllowPrivate {
			log.Warn("webhook may deliver to private, loopback and link-local addresses", slog.String("webhook", wc.Name))
		}
		eps = append(eps, ep)
	}
	return vault.NewWebhooks(ctx, v, vault.WebhooksConfig{
		Endpoints: eps, Retention: cfg.Events.Retention, DisableAfter: cfg.Events.WebhookDisableAfter, Logger: log,
	})
}
