package server_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/server"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/webhook"
)

// watch opens a WatchEvents stream with the named key.
func (e *env) watch(ctx context.Context, key string, req *tvv1.WatchEventsRequest) tvv1.TokenVaultService_WatchEventsClient {
	e.t.Helper()
	s, err := tvv1.NewTokenVaultServiceClient(e.dial(key)).WatchEvents(ctx, req)
	if err != nil {
		e.t.Fatalf("WatchEvents = %v", err)
	}
	return s
}

// recvN receives n events and describes each as "seq:type:owner".
func recvN(t *testing.T, s tvv1.TokenVaultService_WatchEventsClient, n int) []string {
	t.Helper()
	var out []string
	for range n {
		r, err := s.Recv()
		if err != nil {
			t.Fatalf("Recv after %v = %v", out, err)
		}
		ev := r.GetEvent()
		out = append(out, fmt.Sprintf("%d:%s:%s", ev.GetSequence(), strings.TrimPrefix(ev.GetType(), "connection."), ev.GetConnection().GetOwner()))
	}
	return out
}

func errorMeta(err error) map[string]string {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.GetMetadata()
		}
	}
	return nil
}

func TestWatchEvents_ReplayLiveResume(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	alice := e.connect("alice")
	e.connect("bob")

	s := e.watch(ctx, "app", &tvv1.WatchEventsRequest{})
	if got, want := recvN(t, s, 2), []string{"1:created:alice", "2:created:bob"}; !slices.Equal(got, want) {
		t.Errorf("replay = %v; want %v", got, want)
	}
	if _, err := e.api.RevokeConnection(ctx, &tvv1.RevokeConnectionRequest{ConnectionId: alice, Reason: "user_left"}); err != nil {
		t.Fatal(err)
	}
	r, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	ev := r.GetEvent()
	if ev.GetType() != "connection.revoked" || ev.GetSequence() != 3 || ev.GetConnectionSequence() != 2 || ev.GetReason() != "user_left" ||
		ev.GetConnection().GetConnectionId() != alice || ev.GetConnection().GetStatus() != tvv1.ConnectionStatus_CONNECTION_STATUS_REVOKED ||
		ev.GetEventId() == "" || ev.GetTime() == nil {
		t.Errorf("live event = %v; want alice's revocation, sequence 3, connection sequence 2", ev)
	}

	// Reconnecting after the last sequence seen misses nothing and repeats
	// nothing.
	s2 := e.watch(ctx, "app", &tvv1.WatchEventsRequest{AfterSequence: 2})
	if got, want := recvN(t, s2, 1), []string{"3:revoked:alice"}; !slices.Equal(got, want) {
		t.Errorf("resumed = %v; want %v", got, want)
	}
	e.connect("carol")
	if got, want := recvN(t, s2, 1), []string{"4:created:carol"}; !slices.Equal(got, want) {
		t.Errorf("after resume, live = %v; want %v", got, want)
	}
}

func TestWatchEvents_Filters(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a := e.connect("alice")
	e.connect("bob")
	if _, err := e.api.RevokeConnection(ctx, &tvv1.RevokeConnectionRequest{ConnectionId: a}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		key   string
		types []string
		want  []string
	}{
		{"all", "app", nil, []string{"1:created:alice", "2:created:bob", "3:revoked:alice"}},
		{"revocations only", "app", []string{"connection.revoked"}, []string{"3:revoked:alice"}},
		{"limited to the provider", "app-acme", nil, []string{"1:created:alice", "2:created:bob", "3:revoked:alice"}},
		{"limited to another provider", "app-other", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sctx, scancel := context.WithTimeout(ctx, 1500*time.Millisecond) // ample for the replay on a loaded machine
			defer scancel()
			s := e.watch(sctx, tc.key, &tvv1.WatchEventsRequest{Types: tc.types})
			var got []string
			for {
				r, err := s.Recv()
				if err != nil {
					if status.Code(err) != codes.DeadlineExceeded || reason(err) != "" {
						t.Errorf("Recv = %v (reason %q); want only the caller's DeadlineExceeded when idle", err, reason(err))
					}
					break
				}
				ev := r.GetEvent()
				got = append(got, fmt.Sprintf("%d:%s:%s", ev.GetSequence(), strings.TrimPrefix(ev.GetType(), "connection."), ev.GetConnection().GetOwner()))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v; want %v", got, tc.want)
			}
		})
	}
}

func TestWatchEvents_Errors(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name       string
		key        string
		req        *tvv1.WatchEventsRequest
		wantCode   codes.Code
		wantReason string
	}{
		{"unknown type", "app", &tvv1.WatchEventsRequest{Types: []string{"connection.exploded"}}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"no credential", "", &tvv1.WatchEventsRequest{}, codes.Unauthenticated, "UNAUTHENTICATED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := tvv1.NewTokenVaultServiceClient(e.dial(tc.key)).WatchEvents(ctx, tc.req)
			if err == nil {
				_, err = s.Recv()
			}
			if status.Code(err) != tc.wantCode || reason(err) != tc.wantReason {
				t.Errorf("WatchEvents = %v (reason %q); want %v/%s", err, reason(err), tc.wantCode, tc.wantReason)
			}
		})
	}
}

// A client that stops reading is cut off once its buffer overflows, with
// the sequence to resume from; resuming there misses nothing.
func TestWatchEvents_SlowSubscriberEndsAndResumes(t *testing.T) {
	server.SetWatchBuffer(t, 16) // before any stream starts
	e := newEnv(t, providertest.Options{})
	// Bounds only the wait: making the events takes minutes on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// The smallest windows gRPC allows, so the transport holds few events.
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return e.lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearerCreds(testKeys["app"])),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s, err := tvv1.NewTokenVaultServiceClient(conn).WatchEvents(ctx, &tvv1.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// Not reading: the window and the server's write quota (64 KiB each)
	// and the buffer of 16 events fill up well before this many events.
	// Each event carries its fields at their longest (about 1.7 KiB), so
	// about a hundred do (with short fields it took some 760).
	const total = 300
	long := func(i, n int) string { return fmt.Sprintf("%d-%s", i, strings.Repeat("x", n))[:n] }
	for i := range total {
		e.connectFast(vault.ConnectRequest{Owner: long(i, 256), Tenant: long(i, 256),
			Label: long(i, 128), Purpose: long(i, 1024)})
	}
	var last uint64
	for {
		r, err := s.Recv()
		if err != nil {
			if status.Code(err) != codes.ResourceExhausted || reason(err) != server.ReasonSubscriberTooSlow {
				t.Fatalf("stream ended with %v (reason %q); want RESOURCE_EXHAUSTED/SUBSCRIBER_TOO_SLOW", err, reason(err))
			}
			if got := errorMeta(err)["resume_after_sequence"]; got != strconv.FormatUint(last, 10) {
				t.Errorf("resume_after_sequence = %q; want %d (the last event received)", got, last)
			}
			break
		}
		if seq := r.GetEvent().GetSequence(); seq != last+1 {
			t.Fatalf("got sequence %d after %d", seq, last)
		}
		last++
	}
	t.Logf("cut off after %d events", last)
	if last >= total {
		t.Fatalf("received all %d events; the stream was never cut off", last)
	}
	s2 := e.watch(ctx, "app", &tvv1.WatchEventsRequest{AfterSequence: last})
	for want := last + 1; want <= total; want++ {
		r, err := s2.Recv()
		if err != nil || r.GetEvent().GetSequence() != want {
			t.Fatalf("resumed stream: Recv = %v, %v; want sequence %d", r.GetEvent().GetSequence(), err, want)
		}
	}
}

// connectFast stores a connection to acme through the vault's own flow
// against the fake, without gRPC, to make events quickly.
func (e *env) connectFast(req vault.ConnectRequest) {
	e.t.Helper()
	req.Provider = "acme"
	u, _, err := e.v.StartConnect(context.Background(), req)
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := e.browser.Get(u)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("callback answered %d", resp.StatusCode)
	}
}

// Stopping the server ends open streams at once with UNAVAILABLE and the
// sequence to resume from, instead of holding the graceful stop.
func TestWatchEvents_ServerStopEndsStreams(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	e.connect("alice")
	srv := server.New(server.Config{Vault: e.v, Auth: testAuth(t)})
	gl := bufconn.Listen(1 << 20)
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, gl, hl, 30*time.Second) }()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return gl.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearerCreds(testKeys["app"])))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := tvv1.NewTokenVaultServiceClient(conn).WatchEvents(ctx, &tvv1.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	recvN(t, s, 1)
	start := time.Now()
	stop()
	_, err = s.Recv()
	if status.Code(err) != codes.Unavailable || reason(err) != server.ReasonShuttingDown || errorMeta(err)["resume_after_sequence"] != "1" {
		t.Errorf("Recv during shutdown = %v (reason %q, meta %v); want UNAVAILABLE/SHUTTING_DOWN, resume after 1", err, reason(err), errorMeta(err))
	}
	select {
	case <-served:
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("Serve took %v to stop", d)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return")
	}
}

func TestWebhookMetrics(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	got := make(chan struct{}, 10)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- struct{}{}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer rcv.Close()
	sec, err := webhook.ParseSecret("whsec_bmV3LXNlY3JldC1uZXctc2VjcmV0LW5ldw==")
	if err != nil {
		t.Fatal(err)
	}
	hooks, err := webhook.New(context.Background(), e.v, e.store, webhook.Config{Endpoints: []webhook.Endpoint{
		{Name: "app", URL: rcv.URL + "/hooks?token=sekrit", Secrets: []webhook.Secret{sec}, AllowPrivate: true},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { hooks.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	m := server.NewMetrics()
	srv := server.New(server.Config{Vault: e.v, Auth: testAuth(t), Metrics: m, Webhooks: hooks})
	e.connect("alice")
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery")
	}
	var body string
	for range 500 {
		rec := httptest.NewRecorder()
		srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		b, _ := io.ReadAll(rec.Body)
		if body = string(b); strings.Contains(body, `tokenvault_webhook_deliveries_total{endpoint="app",outcome="delivered"} 1`) &&
			strings.Contains(body, `tokenvault_webhook_backlog{endpoint="app"} 0`) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, want := range []string{
		`tokenvault_webhook_deliveries_total{endpoint="app",outcome="delivered"} 1`,
		`tokenvault_webhook_deliveries_total{endpoint="app",outcome="gone"} 0`,
		`tokenvault_webhook_backlog{endpoint="app"} 0`,
		`tokenvault_webhook_disabled{endpoint="app"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, secret := range []string{"sekrit", "alice", "conn_", rcv.URL} {
		if strings.Contains(body, secret) {
			t.Errorf("/metrics contains %q", secret)
		}
	}
}
