package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/client"
	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/seal"
)

func TestConfig_EventsAndWebhooks(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokenvault.yaml")
	yaml := `data_dir: /tmp/x
events:
  retention: 24h
  webhook_disable_after: 12h
webhooks:
  - name: app
    url: https://app.example.com/hooks/tokenvault
    secret_files: [/run/secrets/a]
    secret_envs: [HOOK_SECRET]
    event_types: [connection.revoked]
    allow_private: true
`
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := loadConfig(path)
	if err != nil {
		t.Fatalf("loadConfig = %v", err)
	}
	if c.Events.Retention.Hours() != 24 || c.Events.WebhookDisableAfter.Hours() != 12 || len(c.Webhooks) != 1 {
		t.Fatalf("config = %+v", c)
	}
	w := c.Webhooks[0]
	if w.Name != "app" || w.URL != "https://app.example.com/hooks/tokenvault" || !w.AllowPrivate ||
		len(w.SecretFiles) != 1 || len(w.SecretEnvs) != 1 || len(w.EventTypes) != 1 {
		t.Errorf("webhook = %+v", w)
	}
}

func TestBuildWebhooks(t *testing.T) {
	const secret = "whsec_bmV3LXNlY3JldC1uZXctc2VjcmV0LW5ldw=="
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	bad := filepath.Join(dir, "bad")
	for p, s := range map[string]string{good: secret, bad: "whsec_dG9vc2hvcnQ="} {
		if err := os.WriteFile(p, []byte(s+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	env := func(k string) string {
		return map[string]string{"GOOD": secret, "PLAIN": "hunter2hunter2hunter2"}[k]
	}
	st, err := bolt.Open(filepath.Join(dir, "tv.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	mk, _ := seal.GenerateMasterKey()
	kr, err := vault.OpenKeyring(context.Background(), st, mk)
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Open(context.Background(), vault.Config{Store: st, Keyring: kr})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		hook    WebhookConfig
		wantErr string // "" for success
	}{
		{"file and env", WebhookConfig{Name: "a", URL: "https://hooks.example/", SecretFiles: []string{good}, SecretEnvs: []string{"GOOD"}}, ""},
		{"no secret", WebhookConfig{Name: "a", URL: "https://hooks.example/"}, "set secret_files or secret_envs"},
		{"missing file", WebhookConfig{Name: "a", URL: "https://hooks.example/", SecretFiles: []string{filepath.Join(dir, "nope")}}, "secret file"},
		{"short secret", WebhookConfig{Name: "a", URL: "https://hooks.example/", SecretFiles: []string{bad}}, "want 24 to 64"},
		{"empty env", WebhookConfig{Name: "a", URL: "https://hooks.example/", SecretEnvs: []string{"UNSET"}}, "UNSET is empty"},
		{"not whsec_", WebhookConfig{Name: "a", URL: "https://hooks.example/", SecretEnvs: []string{"PLAIN"}}, "must start with whsec_"},
		{"private target", WebhookConfig{Name: "a", URL: "http://10.0.0.8/", SecretEnvs: []string{"GOOD"}}, "allow_private"},
		{"private target allowed", WebhookConfig{Name: "a", URL: "http://10.0.0.8/", SecretEnvs: []string{"GOOD"}, AllowPrivate: true}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &Config{Webhooks: []WebhookConfig{tc.hook}}
			_, err := buildWebhooks(context.Background(), cfg, v, st, env, slog.New(slog.DiscardHandler))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("buildWebhooks = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("buildWebhooks = %v; want an error containing %q", err, tc.wantErr)
			}
			for _, s := range []string{"bmV3LXNl", "hunter2", "dG9vc2hvcnQ"} {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error repeats a secret: %v", err)
				}
			}
		})
	}
}

// The real sidecar, configured with a webhook: a connect flow through the
// HTTP callback reaches a WatchEvents stream and the webhook, signed, and
// the delivery shows in /metrics.
func TestE2E_WebhookAndWatchEvents(t *testing.T) {
	const secret = "whsec_bmV3LXNlY3JldC1uZXctc2VjcmV0LW5ldw=="
	got := make(chan *http.Request, 10)
	bodies := make(chan []byte, 10)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- r
		bodies <- b
		w.WriteHeader(http.StatusNoContent)
	}))
	defer rcv.Close()
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "hook.secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "tokenvault.yaml")
	cfg := fmt.Sprintf("webhooks:\n  - name: app\n    url: %s/hooks\n    secret_files: [%s]\n    allow_private: true\n", rcv.URL, secretFile)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	r, logs := startDev(t, "--config", cfgFile)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := dialTest(t, r.GRPCAddr).WatchEvents(ctx, &tvv1.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	id := connectDev(t, r)

	ev, err := stream.Recv()
	if err != nil {
		t.Fatalf("Recv = %v", err)
	}
	if e := ev.GetEvent(); e.GetType() != "connection.created" || e.GetConnection().GetConnectionId() != id || e.GetSequence() != 1 {
		t.Errorf("WatchEvents sent %v; want the creation of %s", e, id)
	}
	select {
	case req := <-got:
		body := <-bodies
		v, _ := client.NewWebhookVerifier(secret)
		if err := v.Verify(req.Header, body); err != nil {
			t.Errorf("webhook does not verify: %v", err)
		}
		if req.Header.Get("webhook-id") != ev.GetEvent().GetEventId() || !strings.Contains(string(body), id) {
			t.Errorf("webhook %s (id %s); want event %s", body, req.Header.Get("webhook-id"), ev.GetEvent().GetEventId())
		}
	case <-ctx.Done():
		t.Fatal("no webhook delivery")
	}
	var metrics string
	for range 200 {
		resp, err := http.Get("http://" + r.MetricsAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if metrics = string(b); strings.Contains(metrics, `tokenvault_webhook_deliveries_total{endpoint="app",outcome="delivered"} 1`) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(metrics, `tokenvault_webhook_deliveries_total{endpoint="app",outcome="delivered"} 1`) {
		t.Errorf("/metrics lacks the delivery:\n%s", metrics)
	}
	r.Stop()
	if l := logs.String(); strings.Contains(l, "bmV3LXNl") || strings.Contains(l, rcv.URL) {
		t.Errorf("the logs hold the webhook secret or URL:\n%s", l)
	}
}
