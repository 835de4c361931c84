package server_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/server"
)

// listening is a Server served by Serve on four loopback listeners.
type listening struct {
	api, public, health, metrics string // host:port
	stop                         func()
}

func serveSplit(t *testing.T, cfg server.Config) *listening {
	t.Helper()
	ls := make([]net.Listener, 4)
	for i := range ls {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls[i] = l
	}
	srv := server.New(cfg)
	srv.AddHealthListener(ls[2])
	srv.AddMetricsListener(ls[3])
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ls[0], ls[1], 5*time.Second) }()
	stop := func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve = %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
	}
	t.Cleanup(func() {
		select {
		case <-ctx.Done():
		default:
			stop()
		}
	})
	return &listening{api: ls[0].Addr().String(), public: ls[1].Addr().String(),
		health: ls[2].Addr().String(), metrics: ls[3].Addr().String(), stop: stop}
}

func fetchPath(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

// Each listener serves its audience's routes and nothing else: the public
// one (which an ingress reaches) has no health, readiness or metrics, and
// neither the health nor the metrics listener has the callback.
func TestListeners_SplitByAudience(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	l := serveSplit(t, server.Config{Vault: e.v, Auth: testAuth(t), Metrics: server.NewMetrics(),
		Ready: []server.ReadyCheck{{Name: "store", Check: func(context.Context) error { return nil }}}})

	rows := []struct {
		addr, path string
		want       int
		body       string // a substring of the body, if set
	}{
		// An unknown state: the callback answers, with its error page.
		{l.public, "/oauth/callback/acme?state=x&code=y", http.StatusBadRequest, "no longer valid"},
		{l.public, "/healthz", http.StatusNotFound, ""},
		{l.public, "/readyz", http.StatusNotFound, ""},
		{l.public, "/metrics", http.StatusNotFound, ""},
		{l.health, "/healthz", http.StatusOK, "ok"},
		{l.health, "/readyz", http.StatusOK, "ok store"},
		{l.health, "/metrics", http.StatusNotFound, ""},
		{l.health, "/oauth/callback/acme?state=x&code=y", http.StatusNotFound, ""},
		{l.metrics, "/metrics", http.StatusOK, "tokenvault_token_reads_total"},
		{l.metrics, "/healthz", http.StatusNotFound, ""},
		{l.metrics, "/oauth/callback/acme?state=x&code=y", http.StatusNotFound, ""},
	}
	for _, r := range rows {
		code, body := fetchPath(t, "http://"+r.addr+r.path)
		if code != r.want || !strings.Contains(body, r.body) {
			t.Errorf("GET %s on %s = %d %.80q; want %d with %q", r.path, listenerName(l, r.addr), code, body, r.want, r.body)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// gRPC health on the health port, over cleartext HTTP/2 as the
	// kubelet's grpc probe sends it; the token API is not there.
	hc, err := grpc.NewClient(l.health, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	h, err := healthpb.NewHealthClient(hc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health port: Check = %v, %v; want SERVING", h, err)
	}
	_, err = tvv1.NewTokenVaultServiceClient(hc).ListProviders(ctx, &tvv1.ListProvidersRequest{})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("health port: ListProviders = %v; want Unimplemented (no token API there)", err)
	}
	// The API listener serves the API (and refuses without a credential).
	ac, err := grpc.NewClient(l.api, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	_, err = tvv1.NewTokenVaultServiceClient(ac).ListProviders(ctx, &tvv1.ListProvidersRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("API port: ListProviders without a key = %v; want Unauthenticated", err)
	}
}

func listenerName(l *listening, addr string) string {
	switch addr {
	case l.public:
		return "public"
	case l.health:
		return "health"
	case l.metrics:
		return "metrics"
	}
	return addr
}

// /readyz fails with 503, naming the failed check, while any check fails,
// and recovers when it passes; /healthz (liveness) runs no check.
func TestListeners_ReadyzRunsChecks(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	var storeErr error
	l := serveSplit(t, server.Config{Vault: e.v, Auth: testAuth(t), Ready: []server.ReadyCheck{
		{Name: "store", Check: func(context.Context) error { return storeErr }},
		{Name: "keyring", Check: func(context.Context) error { return nil }},
	}})
	if code, body := fetchPath(t, "http://"+l.health+"/readyz"); code != http.StatusOK || !strings.Contains(body, "ok keyring") {
		t.Errorf("/readyz = %d %q; want 200", code, body)
	}
	storeErr = errors.New("database not open")
	if code, body := fetchPath(t, "http://"+l.health+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "fail store: database not open") || !strings.Contains(body, "ok keyring") {
		t.Errorf("/readyz with the store down = %d %q; want 503 naming the store", code, body)
	}
	if code, _ := fetchPath(t, "http://"+l.health+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with the store down = %d; want 200 (liveness checks nothing)", code)
	}
	storeErr = nil
	if code, _ := fetchPath(t, "http://"+l.health+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after recovery = %d; want 200", code)
	}
}

// A check that hangs is cut at the probe's bound instead of holding the
// probe past the kubelet's timeout.
func TestListeners_ReadyzBoundsChecks(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	l := serveSplit(t, server.Config{Vault: e.v, Auth: testAuth(t), Ready: []server.ReadyCheck{
		{Name: "store", Check: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }},
	}})
	code, body := fetchPath(t, "http://"+l.health+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "fail store: context deadline exceeded") {
		t.Errorf("/readyz with a hanging check = %d %q; want 503", code, body)
	}
}
