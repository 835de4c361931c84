package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
)

// syncBuffer is a bytes.Buffer safe for the server goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type ready struct {
	GRPCAddr  string `json:"grpc_addr"`
	HTTPAddr  string `json:"http_addr"`
	PublicURL string `json:"public_url"`
}

// startDev runs `tokenvault serve --dev` in-process on 127.0.0.1:0 and
// returns its addresses; the server stops when the test ends.
func startDev(t *testing.T, extra ...string) (ready, *syncBuffer) {
	t.Helper()
	dir := t.TempDir()
	readyFile := filepath.Join(dir, "ready.json")
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan int, 1)
	args := append([]string{"serve", "--dev", "--data-dir", filepath.Join(dir, "data"),
		"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--ready-file", readyFile}, extra...)
	go func() { done <- Main(ctx, args, func(string) string { return "" }, io.Discard, logs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("serve exited %d; logs:\n%s", code, logs)
			}
		case <-time.After(15 * time.Second):
			t.Error("serve did not stop within 15s of cancellation")
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(readyFile); err == nil && len(b) > 0 {
			var r ready
			if err := json.Unmarshal(b, &r); err != nil {
				t.Fatal(err)
			}
			return r, logs
		}
		select {
		case code := <-done:
			t.Fatalf("serve exited %d before ready; logs:\n%s", code, logs)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("serve not ready after 10s; logs:\n%s", logs)
	return ready{}, nil
}

func dialTest(t *testing.T, addr string) tvv1.TokenVaultServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return tvv1.NewTokenVaultServiceClient(conn)
}

func reasonOf(err error) string {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.Reason
		}
	}
	return ""
}

// runCLI runs an operator command against addr and returns its stdout.
func runCLI(t *testing.T, addr string, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	env := func(k string) string {
		if k == "TOKENVAULT_ADDR" {
			return addr
		}
		return ""
	}
	if code := Main(context.Background(), args, env, &out, &errb); code != 0 {
		t.Fatalf("tokenvault %v exited %d: %s", args, code, errb.String())
	}
	return out.String()
}

// TestE2E_Dev drives the real sidecar in dev mode: connect through the real
// HTTP callback, fetch a token, let it expire, fetch the refreshed one,
// revoke, and see the revoked state.
func TestE2E_Dev(t *testing.T) {
	const lifetime = 3 * time.Second
	r, logs := startDev(t, "--dev-token-lifetime", lifetime.String())
	api := dialTest(t, r.GRPCAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	provs, err := api.ListProviders(ctx, &tvv1.ListProvidersRequest{})
	if err != nil || len(provs.Providers) != 1 || provs.Providers[0].Name != "sandbox" {
		t.Fatalf("ListProviders = %v, %v; want the sandbox", provs, err)
	}

	// Connect: the browser follows the authorization URL to the sandbox,
	// which approves and redirects to the sidecar's callback.
	sc, err := api.StartConnect(ctx, &tvv1.StartConnectRequest{
		Owner: "alice", Provider: "sandbox", Scopes: []string{"read"},
		ReturnTo: "http://127.0.0.1/app/done",
	})
	if err != nil {
		t.Fatalf("StartConnect = %v", err)
	}
	browser := &http.Client{CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if req.URL.Host == "127.0.0.1" { // the app's return_to: stop there
			return http.ErrUseLastResponse
		}
		return nil
	}}
	resp, err := browser.Get(sc.AuthorizationUrl)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("callback answered %d; want 303 to return_to; logs:\n%s", resp.StatusCode, logs)
	}
	loc, _ := resp.Location()
	id := loc.Query().Get("connection_id")
	if loc.Path != "/app/done" || id == "" || loc.Query().Get("status") != "connected" {
		t.Fatalf("redirected to %s; want /app/done?connection_id=...&status=connected", loc)
	}

	// Replaying the callback (same state) is refused with a clear 400.
	cbResp, err := http.Get(lastCallbackURL(t, sc.AuthorizationUrl))
	if err == nil {
		body, _ := io.ReadAll(cbResp.Body)
		cbResp.Body.Close()
		if cbResp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "no longer valid") {
			t.Errorf("replayed callback = %d %q; want 400 'no longer valid'", cbResp.StatusCode, body)
		}
	}

	minValid := durationpb.New(time.Second)
	tok1, err := api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, MinValidFor: minValid})
	if err != nil {
		t.Fatalf("GetAccessToken = %v", err)
	}
	if !strings.HasPrefix(tok1.AccessToken, "sbx_at_") || tok1.TokenType != "Bearer" || tok1.ExpireTime == nil {
		t.Errorf("GetAccessToken = %q %q %v; want a sandbox bearer token with expiry", tok1.AccessToken, tok1.TokenType, tok1.ExpireTime)
	}
	// The CLI sees the same token.
	if got := strings.TrimSpace(runCLI(t, r.GRPCAddr, "token", id, "--min-valid", "1s")); got != tok1.AccessToken {
		t.Errorf("tokenvault token = %q; want %q", got, tok1.AccessToken)
	}

	// Let it expire; the next fetch refreshes.
	time.Sleep(time.Until(tok1.ExpireTime.AsTime()) + 100*time.Millisecond)
	tok2, err := api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, MinValidFor: minValid})
	if err != nil {
		t.Fatalf("GetAccessToken after expiry = %v", err)
	}
	if tok2.AccessToken == tok1.AccessToken || !tok2.ExpireTime.AsTime().After(time.Now()) {
		t.Errorf("after expiry got %q expiring %v; want a new, unexpired token", tok2.AccessToken, tok2.ExpireTime.AsTime())
	}
	if !userinfoOK(t, r.HTTPAddr, tok2.AccessToken) {
		t.Error("the sandbox does not accept the refreshed token")
	}

	// Revoke through the operator CLI; the record stays, revoked.
	if out := runCLI(t, r.GRPCAddr, "connections", "revoke", id, "--reason", "e2e"); !strings.Contains(out, "revoked "+id) {
		t.Errorf("revoke printed %q", out)
	}
	if userinfoOK(t, r.HTTPAddr, tok2.AccessToken) {
		t.Error("the sandbox still accepts the token after revocation")
	}
	got, err := api.GetConnection(ctx, &tvv1.GetConnectionRequest{ConnectionId: id})
	if err != nil || got.Connection.Status != tvv1.ConnectionStatus_CONNECTION_STATUS_REVOKED || got.Connection.StatusReason != "e2e" {
		t.Fatalf("GetConnection after revoke = %v, %v; want REVOKED/e2e", got, err)
	}
	_, err = api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id})
	if status.Code(err) != codes.FailedPrecondition || reasonOf(err) != "NOT_CONNECTED" {
		t.Errorf("GetAccessToken after revoke = %v; want FailedPrecondition/NOT_CONNECTED", err)
	}
	var listed struct {
		Connections []struct {
			ConnectionID string `json:"connectionId"`
			Status       string `json:"status"`
		} `json:"connections"`
	}
	if err := json.Unmarshal([]byte(runCLI(t, r.GRPCAddr, "connections", "list", "-o", "json", "--status", "revoked")), &listed); err != nil {
		t.Fatal(err)
	}
	if len(listed.Connections) != 1 || listed.Connections[0].ConnectionID != id {
		t.Errorf("connections list --status revoked = %+v; want just %s", listed, id)
	}
	// Secrets never reach the logs.
	for _, secret := range []string{tok1.AccessToken, tok2.AccessToken} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("a token appears in the logs")
		}
	}
}

// lastCallbackURL rebuilds the callback URL the sandbox redirected to, by
// asking the sandbox again without following redirects. The sandbox issues a
// fresh code, but the state is the one already spent.
func lastCallbackURL(t *testing.T, authURL string) string {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil {
		t.Fatalf("sandbox authorize did not redirect: %d", resp.StatusCode)
	}
	return loc.String()
}

func userinfoOK(t *testing.T, httpAddr, token string) bool {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+httpAddr+"/sandbox/userinfo", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func TestMain_Usage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int
	}{
		{nil, 2},
		{[]string{"nope"}, 2},
		{[]string{"help"}, 0},
		{[]string{"serve"}, 1}, // no config and not --dev
		{[]string{"serve", "--dev", "--grpc-addr", "0.0.0.0:0"}, 1},
		{[]string{"serve", "--bogus"}, 2},
	} {
		var out, errb bytes.Buffer
		if got := Main(context.Background(), tc.args, func(string) string { return "" }, &out, &errb); got != tc.want {
			t.Errorf("Main(%q) = %d; want %d (stderr %q)", tc.args, got, tc.want, errb.String())
		}
	}
}
