package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
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
	"github.com/tokenvault/tokenvault/vault/seal"
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
	GRPCAddr    string `json:"grpc_addr"`
	PublicAddr  string `json:"public_addr"`
	HealthAddr  string `json:"health_addr"`
	MetricsAddr string `json:"metrics_addr"`
	PublicURL   string `json:"public_url"`
	// The dev mode's API keys, read from its data dir (not from the ready
	// file, which holds no secret).
	AppKey, OperatorKey string      `json:"-"`
	DataDir             string      `json:"-"`
	Stdout              *syncBuffer `json:"-"`
	// Stop stops the sidecar and waits for it; it is also done when the
	// test ends. Safe to call more than once.
	Stop func() `json:"-"`
}

// devKeys remembers the API keys of each sidecar startDev started, by gRPC
// address, for dialTest and runCLI.
var devKeys sync.Map // string -> ready

// startDev runs `tokenvault serve --dev` in-process on 127.0.0.1:0 and
// returns its addresses and keys; the server stops when the test ends.
func startDev(t *testing.T, extra ...string) (ready, *syncBuffer) {
	t.Helper()
	dir := t.TempDir()
	readyFile := filepath.Join(dir, "ready.json")
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan int, 1)
	dataDir := filepath.Join(dir, "data")
	for i, a := range extra {
		if a == "--data-dir" && i+1 < len(extra) {
			dataDir = extra[i+1] // a later flag wins
		}
	}
	stdout := &syncBuffer{}
	args := append([]string{"serve", "--dev", "--data-dir", dataDir,
		"--grpc-addr", "127.0.0.1:0", "--public-addr", "127.0.0.1:0",
		"--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--ready-file", readyFile}, extra...)
	go func() { done <- Main(ctx, args, func(string) string { return "" }, stdout, logs) }()
	var stopOnce sync.Once
	stop := func() {
		stopOnce.Do(func() {
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
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(readyFile); err == nil && len(b) > 0 {
			var r ready
			if err := json.Unmarshal(b, &r); err != nil {
				t.Fatal(err)
			}
			r.DataDir, r.Stdout, r.Stop = dataDir, stdout, stop
			r.AppKey = readKey(t, filepath.Join(dataDir, "application.key"))
			r.OperatorKey = readKey(t, filepath.Join(dataDir, "operator.key"))
			devKeys.Store(r.GRPCAddr, r)
			t.Cleanup(func() { devKeys.Delete(r.GRPCAddr) })
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

func readKey(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v; want 0600", path, fi.Mode().Perm())
	}
	return strings.TrimSpace(string(b))
}

// dialTest returns a client of the sidecar at addr that presents its
// application key (an application's view).
func dialTest(t *testing.T, addr string) tvv1.TokenVaultServiceClient {
	t.Helper()
	r, _ := devKeys.Load(addr)
	return tvv1.NewTokenVaultServiceClient(dialKey(t, addr, r.(ready).AppKey))
}

// dialKey returns a connection to addr that presents key ("" for none).
func dialKey(t *testing.T, addr, key string) *grpc.ClientConn {
	t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if key != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(testBearer(key)))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

type testBearer string

func (k testBearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(k)}, nil
}

func (testBearer) RequireTransportSecurity() bool { return false }

func reasonOf(err error) string {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.Reason
		}
	}
	return ""
}

// runCLI runs an operator command against addr, with the operator key of
// the sidecar there in $TOKENVAULT_API_KEY, and returns its stdout.
func runCLI(t *testing.T, addr string, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	var key string
	if r, ok := devKeys.Load(addr); ok {
		key = r.(ready).OperatorKey
	}
	env := func(k string) string {
		switch k {
		case "TOKENVAULT_ADDR":
			return addr
		case "TOKENVAULT_API_KEY":
			return key
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
	secrets := newSecretSet()
	au, _ := url.Parse(sc.AuthorizationUrl)
	secrets.addURL(au)
	var callbackURL string
	browser := secrets.browser(func(req *http.Request, via []*http.Request) error {
		if strings.Contains(req.URL.Path, "/oauth/callback/") {
			callbackURL = req.URL.String()
		}
		if req.URL.Host == "127.0.0.1" { // the app's return_to: stop there
			return http.ErrUseLastResponse
		}
		return nil
	})
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

	// Replaying the callback (same state, same browser) is refused with a
	// clear 400.
	cbResp, err := browser.Get(callbackURL)
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
	if got := strings.TrimSpace(runCLI(t, r.GRPCAddr, "token", "--owner", "alice", "--provider", "sandbox", "--min-valid", "1s")); got != tok1.AccessToken {
		t.Errorf("tokenvault token --owner alice --provider sandbox = %q; want %q", got, tok1.AccessToken)
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
	if !userinfoOK(t, r.PublicAddr, tok2.AccessToken) {
		t.Error("the sandbox does not accept the refreshed token")
	}

	// The sandbox introspects: the operator can check the grant now.
	if out := runCLI(t, r.GRPCAddr, "connections", "validate", id); !strings.Contains(out, "live: "+id) {
		t.Errorf("connections validate printed %q; want it live", out)
	}

	// Revoke through the operator CLI; the record stays, revoked.
	if out := runCLI(t, r.GRPCAddr, "connections", "revoke", id, "--reason", "e2e"); !strings.Contains(out, "revoked "+id) {
		t.Errorf("revoke printed %q", out)
	}
	if userinfoOK(t, r.PublicAddr, tok2.AccessToken) {
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
	// The table shows the inventory columns.
	table := runCLI(t, r.GRPCAddr, "connections", "list")
	for _, col := range []string{"TENANT", "PURPOSE", "LAST REFRESHED", "LAST USED", "LAST VALIDATED", "MISSING SCOPES", id} {
		if !strings.Contains(table, col) {
			t.Errorf("connections list lacks %q:\n%s", col, table)
		}
	}

	// Access control: no key, or the application key for an operator call.
	if _, err := tvv1.NewTokenVaultServiceClient(dialKey(t, r.GRPCAddr, "")).ListProviders(ctx, &tvv1.ListProvidersRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("ListProviders without a key = %v; want Unauthenticated", err)
	}
	if _, err := api.RevokeConnection(ctx, &tvv1.RevokeConnectionRequest{ConnectionId: id}); status.Code(err) != codes.PermissionDenied || reasonOf(err) != "PERMISSION_DENIED" {
		t.Errorf("RevokeConnection with the application key = %v; want PermissionDenied", err)
	}

	// The audit has the reads, the revoke, the denied revoke and the
	// callback, newest first.
	var audit struct {
		Events []struct {
			Caller, Method, Outcome, Reason string
		} `json:"events"`
	}
	if err := json.Unmarshal([]byte(runCLI(t, r.GRPCAddr, "audit", "--connection", id, "-o", "json")), &audit); err != nil {
		t.Fatal(err)
	}
	var trail []string
	for _, ev := range audit.Events {
		trail = append(trail, ev.Caller+" "+strings.TrimPrefix(ev.Method, "/tokenvault.v1.TokenVaultService/")+" "+ev.Outcome)
	}
	want := []string{
		"dev-application RevokeConnection PERMISSION_DENIED", // names its connection too
		"dev-application GetAccessToken FAILED_PRECONDITION",
		"dev-operator RevokeConnection OK",
		"dev-operator ValidateConnection OK",
		"dev-application GetAccessToken OK",
		"dev-operator GetAccessToken OK", // the CLI's token command, by owner and provider
		"dev-operator GetAccessToken OK", // the CLI's token command, by id
		"dev-application GetAccessToken OK",
		" http:callback OK",
	}
	if strings.Join(trail, "\n") != strings.Join(want, "\n") {
		t.Errorf("audit --connection %s:\n%s\nwant:\n%s", id, strings.Join(trail, "\n"), strings.Join(want, "\n"))
	}
	if out := runCLI(t, r.GRPCAddr, "audit", "--caller", "dev-application", "--method", "/tokenvault.v1.TokenVaultService/RevokeConnection"); !strings.Contains(out, "PERMISSION_DENIED") {
		t.Errorf("the denied revoke is not in the audit:\n%s", out)
	}

	// Metrics are served on the metrics listener.
	mresp, err := http.Get("http://" + r.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{`tokenvault_token_reads_total{code="OK",provider="sandbox"} 4`, `tokenvault_refreshes_total{outcome="ok",provider="sandbox"} 1`, `tokenvault_connections{provider="sandbox",status="revoked"} 1`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// Dev mode printed its keys for the person at the terminal.
	if out := r.Stdout.String(); !strings.Contains(out, r.AppKey) || !strings.Contains(out, r.OperatorKey) {
		t.Errorf("dev mode did not print its API keys:\n%s", out)
	}
	// Secrets never reach the logs, the audit or the metrics.
	auditText := runCLI(t, r.GRPCAddr, "audit", "-o", "json", "--limit", "1000")
	secrets.add("access token", tok1.AccessToken, tok2.AccessToken)
	secrets.add("API key", r.AppKey, r.OperatorKey)
	if mk, err := os.ReadFile(filepath.Join(r.DataDir, "master.key")); err != nil {
		t.Error(err)
	} else {
		secrets.add("master key", strings.TrimSpace(string(mk)))
	}
	assertNoSecretLogged(t, logs.String(), secrets)
	for _, secret := range []string{tok1.AccessToken, tok2.AccessToken, r.AppKey, r.OperatorKey} {
		if strings.Contains(auditText, secret) || strings.Contains(string(metrics), secret) {
			t.Errorf("a secret appears in the audit or the metrics")
		}
	}
}

// TestE2E_LastUsed_SurvivesRestart reads a token, stops the sidecar and
// starts it again on the same data: the connection's last use is still
// known.
func TestE2E_LastUsed_SurvivesRestart(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, _ := startDev(t, "--data-dir", dataDir)
	id := connectDev(t, r)
	if _, err := dialTest(t, r.GRPCAddr).GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id}); err != nil {
		t.Fatal(err)
	}
	used := time.Now()
	r.Stop()
	r, _ = startDev(t, "--data-dir", dataDir)
	c, err := dialTest(t, r.GRPCAddr).GetConnection(ctx, &tvv1.GetConnectionRequest{ConnectionId: id})
	if err != nil {
		t.Fatal(err)
	}
	if lu := c.Connection.LastUsedTime; lu == nil || lu.AsTime().After(used) || used.Sub(lu.AsTime()) > 5*time.Second {
		t.Errorf("last used after restart = %v; want about %v", lu.AsTime(), used)
	}
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

// connectDev connects user "bob" to the sandbox of the sidecar r as a
// browser would and returns the connection id.
func connectDev(t *testing.T, r ready) string {
	t.Helper()
	ctx := context.Background()
	api := dialTest(t, r.GRPCAddr)
	sc, err := api.StartConnect(ctx, &tvv1.StartConnectRequest{Owner: "bob", Provider: "sandbox"})
	if err != nil {
		t.Fatalf("StartConnect = %v", err)
	}
	resp, err := newBrowser(t).Get(sc.AuthorizationUrl)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("connect flow ended with %d", resp.StatusCode)
	}
	l, err := api.ListConnections(ctx, &tvv1.ListConnectionsRequest{Owner: "bob"})
	if err != nil || len(l.Connections) != 1 {
		t.Fatalf("ListConnections = %v, %v", l, err)
	}
	return l.Connections[0].ConnectionId
}

// TestE2E_ConfigAuth runs `serve --config` with API keys from a file and an
// environment variable, provider limits, a rate limit and a unix socket
// whose peers are known by uid, and calls it over TCP and the socket.
func TestE2E_ConfigAuth(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("unix-socket peers need SO_PEERCRED")
	}
	dir := t.TempDir()
	sockDir, err := os.MkdirTemp("", "tv") // a socket path must fit in 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "tv.sock")
	const fileKey, envKey = "tvk_from_a_file_0000000000000", "tvk_from_the_env_000000000000"
	if err := os.WriteFile(filepath.Join(dir, "app.key"), []byte(fileKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`data_dir: %q
providers:
  acme:
    kind: oauth2
    client_id: id
    auth_url: https://acme.example/authorize
    token_url: https://acme.example/token
    auth_style: params
    pkce: true
  other:
    kind: oauth2
    client_id: id
    auth_url: https://other.example/authorize
    token_url: https://other.example/token
    auth_style: params
    pkce: true
auth:
  api_keys:
    - {name: app, key_file: %q, role: application, providers: [acme], rate_limit: {rps: 1, burst: 3}}
    - {name: oncall, key_env: ONCALL_KEY, role: operator}
  unix_socket:
    path: %q
    peers:
      - {uid: %d, role: application, providers: [other]}
audit:
  retention: 1h
`, filepath.Join(dir, "data"), filepath.Join(dir, "app.key"), sock, os.Getuid())
	cfgPath := filepath.Join(dir, "tokenvault.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	mk, _ := seal.GenerateMasterKey()
	env := func(k string) string {
		switch k {
		case "TOKENVAULT_MASTER_KEY":
			return mk.Encode()
		case "ONCALL_KEY":
			return envKey
		}
		return ""
	}
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan int, 1)
	readyFile := filepath.Join(dir, "ready.json")
	go func() {
		done <- Main(ctx, []string{"serve", "--config", cfgPath, "--grpc-addr", "127.0.0.1:0", "--public-addr", "127.0.0.1:0",
			"--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--ready-file", readyFile}, env, io.Discard, logs)
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("serve exited %d; logs:\n%s", code, logs)
		}
		if _, err := os.Stat(sock); err == nil {
			t.Log("socket left behind (removed by the next start)")
		}
	}()
	var r ready
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if b, err := os.ReadFile(readyFile); err == nil && json.Unmarshal(b, &r) == nil && r.GRPCAddr != "" {
			break
		}
		select {
		case code := <-done:
			done <- code // for the deferred check
			t.Fatalf("serve exited %d before ready; logs:\n%s", code, logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready; logs:\n%s", logs)
		}
	}
	call := func(conn *grpc.ClientConn) ([]string, error) {
		resp, err := tvv1.NewTokenVaultServiceClient(conn).ListProviders(context.Background(), &tvv1.ListProvidersRequest{})
		var names []string
		for _, p := range resp.GetProviders() {
			names = append(names, p.Name)
		}
		return names, err
	}
	// The file key sees acme only; the env key is an operator.
	if got, err := call(dialKey(t, r.GRPCAddr, fileKey)); err != nil || strings.Join(got, ",") != "acme" {
		t.Errorf("ListProviders with the file key = %v, %v; want [acme]", got, err)
	}
	if _, err := tvv1.NewAdminServiceClient(dialKey(t, r.GRPCAddr, envKey)).ListAuditEvents(context.Background(), &tvv1.ListAuditEventsRequest{}); err != nil {
		t.Errorf("ListAuditEvents with the env key = %v", err)
	}
	// The rate limit: burst 3 (one call spent above).
	app := dialKey(t, r.GRPCAddr, fileKey)
	var limited error
	for range 5 {
		if _, err := call(app); err != nil {
			limited = err
			break
		}
	}
	if status.Code(limited) != codes.ResourceExhausted || reasonOf(limited) != "RATE_LIMITED" {
		t.Errorf("past the burst = %v; want ResourceExhausted/RATE_LIMITED", limited)
	}
	// Over the socket our uid needs no key, and sees "other" only.
	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got, err := call(conn); err != nil || strings.Join(got, ",") != "other" {
		t.Errorf("ListProviders over the socket = %v, %v; want [other]", got, err)
	}
	// Over TCP no key is no access.
	if _, err := call(dialKey(t, r.GRPCAddr, "")); status.Code(err) != codes.Unauthenticated {
		t.Errorf("ListProviders over TCP without a key = %v; want Unauthenticated", err)
	}
	if strings.Contains(logs.String(), fileKey) || strings.Contains(logs.String(), envKey) {
		t.Error("an API key appears in the logs")
	}
}

func TestBuildAuth_Refuses(t *testing.T) {
	dir := t.TempDir()
	known := map[string]bool{"acme": true}
	env := func(string) string { return "" }
	for _, tc := range []struct {
		name string
		ac   AuthConfig
		want string
	}{
		{"no key source", AuthConfig{APIKeys: []APIKeyConfig{{Name: "a", AccessConfig: AccessConfig{Role: "operator"}}}}, "exactly one"},
		{"both key sources", AuthConfig{APIKeys: []APIKeyConfig{{Name: "a", KeyFile: "f", KeyEnv: "E", AccessConfig: AccessConfig{Role: "operator"}}}}, "exactly one"},
		{"missing file", AuthConfig{APIKeys: []APIKeyConfig{{Name: "a", KeyFile: filepath.Join(dir, "nope"), AccessConfig: AccessConfig{Role: "operator"}}}}, "no such file"},
		{"empty env", AuthConfig{APIKeys: []APIKeyConfig{{Name: "a", KeyEnv: "NOPE", AccessConfig: AccessConfig{Role: "operator"}}}}, "empty"},
		{"bad role", AuthConfig{UnixSocket: &UnixSocketConfig{Peers: []PeerConfig{{UID: new(uint32), AccessConfig: AccessConfig{Role: "admin"}}}}}, "unknown role"},
		{"unknown provider", AuthConfig{UnixSocket: &UnixSocketConfig{Peers: []PeerConfig{{UID: new(uint32), AccessConfig: AccessConfig{Role: "application", Providers: []string{"acmee"}}}}}}, "unknown provider"},
		{"no uid", AuthConfig{UnixSocket: &UnixSocketConfig{Peers: []PeerConfig{{AccessConfig: AccessConfig{Role: "application"}}}}}, "uid is required"},
	} {
		if _, err := buildAuth(tc.ac, nil, known, env); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: buildAuth = %v; want an error about %q", tc.name, err, tc.want)
		}
	}
	if _, err := unixSocketMode("999"); err == nil {
		t.Error("unixSocketMode(999) accepted")
	}
}
