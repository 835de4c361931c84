package server_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
)

func scrape(t *testing.T, e *env) string {
	t.Helper()
	ms := httptest.NewServer(e.srv.MetricsHandler())
	defer ms.Close()
	resp, err := http.Get(ms.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics = %d", resp.StatusCode)
	}
	return string(b)
}

func TestMetrics_Exposed(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	id := e.connect("alice")
	e.connect("bob")
	ctx := context.Background()
	app := tvv1.NewTokenVaultServiceClient(e.dial("app"))
	tok, err := app.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id})
	if err != nil {
		t.Fatal(err)
	}
	app.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: "conn_nope"})
	e.clock.Add(time.Minute) // past the debounce of forced refreshes
	if _, err := app.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, ForceRefresh: true}); err != nil {
		t.Fatal(err)
	}
	tvv1.NewTokenVaultServiceClient(e.dial("")).ListProviders(ctx, &tvv1.ListProvidersRequest{})
	app.RevokeConnection(ctx, &tvv1.RevokeConnectionRequest{ConnectionId: id})
	if _, err := e.api.RevokeConnection(ctx, &tvv1.RevokeConnectionRequest{ConnectionId: id}); err != nil {
		t.Fatal(err)
	}
	e.audit.Flush(ctx)

	body := scrape(t, e)
	for _, want := range []string{
		`tokenvault_token_reads_total{code="OK",provider="acme"} 2`,
		`tokenvault_token_reads_total{code="NOT_FOUND",provider=""} 1`,
		`tokenvault_refreshes_total{outcome="ok",provider="acme"} 1`,
		`tokenvault_refresh_duration_seconds_count{provider="acme"} 1`,
		`tokenvault_connections{provider="acme",status="active"} 1`,
		`tokenvault_connections{provider="acme",status="revoked"} 1`,
		`tokenvault_connections{provider="acme",status="needs_reauth"} 0`,
		`tokenvault_auth_failures_total{reason="UNAUTHENTICATED"} 1`,
		`tokenvault_auth_failures_total{reason="PERMISSION_DENIED"} 1`,
		`tokenvault_audit_backlog 0`,
		`tokenvault_audit_dropped_total 0`,
		`tokenvault_audit_written_total `,
		`go_goroutines `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, secret := range []string{id, tok.AccessToken, "alice", testKeys["app"], "app-"} {
		if strings.Contains(body, secret) {
			t.Errorf("/metrics contains %q", secret)
		}
	}
}

func TestMetrics_Register(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "tokenvault_webhook_backlog", Help: "test"})
	if err := e.metrics.Register(g); err != nil {
		t.Fatal(err)
	}
	g.Set(3)
	if body := scrape(t, e); !strings.Contains(body, "tokenvault_webhook_backlog 3") {
		t.Error("a registered collector is not served")
	}
	if err := e.metrics.Register(g); err == nil {
		t.Error("registering the same collector twice succeeded")
	}
}
