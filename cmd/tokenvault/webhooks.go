package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/webhook"
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

// buildWebhooks reads the webhooks' secrets and returns the Deliverer that
// delivers v's events and sweeps its outbox (with no endpoint, it only
// sweeps; its cursors live in st). Errors name webhooks, files and variables, never a secret
// (neither readSecret's nor webhook.ParseSecret's repeat one).
func buildWebhooks(ctx context.Context, cfg *Config, v *vault.Vault, st vault.Store, env func(string) string, log *slog.Logger) (*webhook.Deliverer, error) {
	eps := make([]webhook.Endpoint, 0, len(cfg.Webhooks))
	for _, wc := range cfg.Webhooks {
		ep := webhook.Endpoint{Name: wc.Name, URL: wc.URL, AllowPrivate: wc.AllowPrivate, EventTypes: wc.EventTypes}
		if len(wc.SecretFiles)+len(wc.SecretEnvs) == 0 {
			return nil, fmt.Errorf("webhook %q: set secret_files or secret_envs", wc.Name)
		}
		add := func(file, envName string) error {
			s, err := readSecret(file, envName, env)
			if err != nil {
				return err
			}
			sec, err := webhook.ParseSecret(s)
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
	return webhook.New(ctx, v, st, webhook.Config{
		Endpoints: eps, Retention: cfg.Events.Retention, DisableAfter: cfg.Events.WebhookDisableAfter, Logger: log,
		// Replicas on etcd deliver an endpoint under its fence, which must
		// outlive each attempt: an attempt gets a third of the lock TTL,
		// like a provider refresh call (0, the default 15s, on bbolt).
		Timeout: fencedCallTimeout(st),
	})
}
