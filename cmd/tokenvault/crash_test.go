package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// TestCrash_KilledMidRefresh builds the real sidecar, connects a user
// through a strict fake authorization server (rotation, reuse detection),
// and has the sidecar kill itself with SIGKILL (TOKENVAULT_FAILPOINT) at
// each point of a refresh: before the provider call, after the provider's
// answer and before the commit, after the commit. It restarts it and
// checks that the refresh token is reused at most once (the documented
// retry of an interrupted refresh), that nothing loops, that no expired
// token is served, and that the store opens with every record intact.
func TestCrash_KilledMidRefresh(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the sidecar")
	}
	bin := buildSidecar(t)
	for _, tc := range []struct {
		name     string
		point    string
		ttl      time.Duration // of the fake's access tokens
		expire   bool          // let the token expire before the restart
		reqs     int           // refresh requests the fake sees in all
		reuse    int           // of which presented a rotated refresh token
		status   tvv1.ConnectionStatus
		reason   string
		newToken bool // a fresh token is served after the restart
	}{
		// The marker is durable, the provider never saw the token: the
		// retry at restart is the first use and succeeds.
		{"before provider call", vault.FailpointBeforeProviderCall, time.Hour, false, 1, 0,
			tvv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE, "", true},
		// The provider rotated, the answer died with the process: the one
		// retry presents the rotated token, the provider revokes the grant,
		// the connection needs re-authorization. Once; never a loop.
		{"after provider answer", vault.FailpointAfterProviderAnswer, time.Hour, false, 2, 1,
			tvv1.ConnectionStatus_CONNECTION_STATUS_NEEDS_REAUTH, vault.ReasonRefreshInterrupted, false},
		// The new grant was committed before anyone saw it: nothing to
		// recover.
		{"after commit", vault.FailpointAfterCommit, time.Hour, false, 1, 0,
			tvv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE, "", true},
		// The same with a token that expired while the sidecar was down:
		// the first call after the restart must not get it.
		{"after provider answer, token expired", vault.FailpointAfterProviderAnswer, 4 * time.Second, true, 2, 1,
			tvv1.ConnectionStatus_CONNECTION_STATUS_NEEDS_REAUTH, vault.ReasonRefreshInterrupted, false},
		{"before provider call, token expired", vault.FailpointBeforeProviderCall, 4 * time.Second, true, 1, 0,
			tvv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sc := newCrashScenario(t, bin, tc.ttl)
			p := sc.start(tc.point)
			id, tok0 := sc.connect(p)

			// Trigger a refresh: a forced one, once the token is older
			// than the 2 s within which forced refreshes share the last
			// one (asking for more validity than the token has no longer
			// refreshes: the margin fits the token). The sidecar dies
			// inside it.
			time.Sleep(2*time.Second + 100*time.Millisecond)
			_, err := p.api.GetAccessToken(sc.ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, ForceRefresh: true})
			if err == nil {
				t.Fatalf("GetAccessToken returned; want the sidecar killed at %s", tc.point)
			}
			p.waitKilled()
			if tc.expire {
				time.Sleep(tc.ttl + time.Second)
			}

			p = sc.start("")
			// At once, before recovery is known to be done: whatever is
			// served is live, never the expired token.
			// (min_valid_for 1s: the short-lived tokens are not refreshed
			// again just for asking.)
			oneSec := durationpb.New(time.Second)
			res, err := p.api.GetAccessToken(sc.ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, MinValidFor: oneSec})
			sc.checkServed(res, err, tok0)
			// Recovery ends with the expected number of refresh requests,
			// and stays there: no loop.
			sc.waitRefreshRequests(tc.reqs)
			time.Sleep(time.Second)
			st := sc.fake.Stats()
			if st.Token["refresh_token"] != tc.reqs || st.ReuseDetections != tc.reuse {
				t.Errorf("fake saw %d refresh requests, %d reuses; want %d, %d", st.Token["refresh_token"], st.ReuseDetections, tc.reqs, tc.reuse)
			}
			got, err := p.api.GetConnection(sc.ctx, &tvv1.GetConnectionRequest{ConnectionId: id})
			if err != nil {
				t.Fatal(err)
			}
			if got.Connection.Status != tc.status || got.Connection.StatusReason != tc.reason {
				t.Errorf("after restart: %s/%q; want %s/%q", got.Connection.Status, got.Connection.StatusReason, tc.status, tc.reason)
			}
			res, err = p.api.GetAccessToken(sc.ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, MinValidFor: oneSec})
			sc.checkServed(res, err, tok0)
			switch {
			case tc.newToken && (err != nil || res.AccessToken == tok0):
				t.Errorf("GetAccessToken after recovery = %v; want a new token", err)
			case !tc.newToken && (status.Code(err) != codes.FailedPrecondition || reasonOf(err) != "NEEDS_REAUTHORIZATION"):
				t.Errorf("GetAccessToken after recovery = %v; want FailedPrecondition/NEEDS_REAUTHORIZATION", err)
			}
			p.stop()

			// The store opens, every record decodes, nothing is left in
			// flight, and the move to needs_reauth is recorded once.
			c := sc.openStore(id)
			if c.InFlight != nil {
				t.Errorf("in-flight marker left in the store: %+v", c.InFlight)
			}
			n := 0
			for _, tr := range c.Transitions {
				if tr.To == vault.StatusNeedsReauth {
					n++
				}
			}
			if want := map[bool]int{true: 0, false: 1}[tc.newToken]; n != want {
				t.Errorf("%d transitions to needs_reauth recorded; want %d: %+v", n, want, c.Transitions)
			}
			// No token, code, verifier, state or key in any log line of
			// either process.
			secrets := newSecretSet()
			secrets.add("fake's secret", sc.fake.Secrets()...)
			secrets.add("master key", sc.mk)
			assertNoSecretLogged(t, sc.logs.String(), secrets)
			if t.Failed() {
				t.Logf("sidecar logs:\n%s", sc.logs.String())
			}
		})
	}
}

// buildSidecar builds this package's binary into a temporary directory,
// with the failpoint tag: TOKENVAULT_FAILPOINT works only in such a build.
func buildSidecar(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tokenvault")
	cmd := exec.Command("go", "build", "-tags", "failpoint", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// crashScenario is one fake authorization server and the sidecar's data
// directory and configuration, shared by its successive processes.
type crashScenario struct {
	t        *testing.T
	ctx      context.Context
	bin, dir string
	httpAddr string // fixed: the fake knows the callback URL
	fake     *providertest.Server
	mk       string
	logs     *syncBuffer
}

func newCrashScenario(t *testing.T, bin string, ttl time.Duration) *crashScenario {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	t.Cleanup(cancel)
	sc := &crashScenario{t: t, ctx: ctx, bin: bin, dir: t.TempDir(), httpAddr: freeAddr(t), logs: &syncBuffer{}}
	key := make([]byte, 32)
	rand.Read(key)
	sc.mk = base64.StdEncoding.EncodeToString(key)
	sc.fake = providertest.Start(providertest.Options{
		RedirectURIs:   []string{"http://" + sc.httpAddr + "/oauth/callback/acme"},
		AccessTokenTTL: ttl,
	})
	t.Cleanup(sc.fake.Close)
	cfg := fmt.Sprintf(`data_dir: %q
providers:
  acme:
    kind: oauth2
    client_id: %q
    client_secret_env: ACME_CLIENT_SECRET
    auth_url: %q
    token_url: %q
    revoke_url: %q
    auth_style: header
    pkce: true
    scopes: [read]
auth:
  api_keys:
    - {name: crash-test, key_env: CRASH_API_KEY, role: operator}
`, filepath.Join(sc.dir, "data"), providertest.DefaultClientID,
		sc.fake.URL(providertest.Authorize), sc.fake.URL(providertest.Token), sc.fake.URL(providertest.Revoke))
	if err := os.WriteFile(filepath.Join(sc.dir, "config.yaml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return sc
}

// crashAPIKey is the operator key the crash test's sidecar is configured
// with (auth.api_keys) and its client presents.
const crashAPIKey = "tvk_crash_test_operator_key_000"

// freeAddr returns a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type sidecarProc struct {
	sc   *crashScenario
	cmd  *exec.Cmd
	done chan error
	api  tvv1.TokenVaultServiceClient
}

// start runs the sidecar, armed with failpoint if not empty, and waits for
// it to serve.
func (sc *crashScenario) start(failpoint string) *sidecarProc {
	t := sc.t
	t.Helper()
	readyFile := filepath.Join(sc.dir, "ready.json")
	os.Remove(readyFile)
	cmd := exec.Command(sc.bin, "serve", "--config", filepath.Join(sc.dir, "config.yaml"),
		"--grpc-addr", "127.0.0.1:0", "--public-addr", sc.httpAddr, "--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
		"--ready-file", readyFile, "--log-level", "debug")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TOKENVAULT_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "TOKENVAULT_MASTER_KEY="+sc.mk, "ACME_CLIENT_SECRET="+providertest.DefaultClientSecret,
		"CRASH_API_KEY="+crashAPIKey)
	if failpoint != "" {
		cmd.Env = append(cmd.Env, failpointEnv+"="+failpoint)
	}
	fmt.Fprintf(sc.logs, "--- start (failpoint %q)\n", failpoint)
	cmd.Stderr, cmd.Stdout = sc.logs, sc.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &sidecarProc{sc: sc, cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
	})
	var r ready
	for deadline := time.Now().Add(20 * time.Second); ; {
		if b, err := os.ReadFile(readyFile); err == nil && json.Unmarshal(b, &r) == nil && r.GRPCAddr != "" {
			break
		}
		select {
		case err := <-p.done:
			t.Fatalf("sidecar exited before ready: %v\n%s", err, sc.logs)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar not ready after 20s\n%s", sc.logs)
		}
	}
	conn, err := grpc.NewClient(r.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(testBearer(crashAPIKey)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	p.api = tvv1.NewTokenVaultServiceClient(conn)
	return p
}

// connect runs a connect flow as a browser would, following the redirects
// from the authorization URL through the fake's authorize endpoint to the
// sidecar's callback, and returns the connection id and its first token.
func (sc *crashScenario) connect(p *sidecarProc) (string, string) {
	t := sc.t
	t.Helper()
	start, err := p.api.StartConnect(sc.ctx, &tvv1.StartConnectRequest{Owner: "alice", Provider: "acme"})
	if err != nil {
		t.Fatalf("StartConnect = %v", err)
	}
	resp, err := newBrowser(t).Get(start.AuthorizationUrl)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Host != sc.httpAddr {
		t.Fatalf("connect flow ended at %s with %d; want 200 from the sidecar's callback", resp.Request.URL, resp.StatusCode)
	}
	list, err := p.api.ListConnections(sc.ctx, &tvv1.ListConnectionsRequest{Owner: "alice"})
	if err != nil || len(list.Connections) != 1 {
		t.Fatalf("ListConnections = %v, %v; want one connection", list, err)
	}
	id := list.Connections[0].ConnectionId
	tok, err := p.api.GetAccessToken(sc.ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, MinValidFor: durationpb.New(time.Second)})
	if err != nil {
		t.Fatalf("GetAccessToken = %v", err)
	}
	if n := sc.fake.Stats().Token["refresh_token"]; n != 0 {
		t.Fatalf("%d refreshes before the crash; want 0", n)
	}
	return id, tok.AccessToken
}

// checkServed fails the test if a token was served that is not live at the
// provider or expires already.
func (sc *crashScenario) checkServed(res *tvv1.GetAccessTokenResponse, err error, tok0 string) {
	sc.t.Helper()
	if err != nil {
		return
	}
	if !res.GetExpireTime().AsTime().After(time.Now()) {
		sc.t.Errorf("served a token that expired at %v", res.GetExpireTime().AsTime())
	}
	if res.AccessToken != tok0 && !sc.fake.IsActive(res.AccessToken) {
		sc.t.Errorf("served a token the provider does not know as active")
	}
}

// waitRefreshRequests waits (bounded) for the fake to have seen n refresh
// requests.
func (sc *crashScenario) waitRefreshRequests(n int) {
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if sc.fake.Stats().Token["refresh_token"] >= n {
			return
		}
	}
	sc.t.Errorf("fake saw %d refresh requests after 15s; want %d", sc.fake.Stats().Token["refresh_token"], n)
}

// waitKilled waits for the process to die of SIGKILL.
func (p *sidecarProc) waitKilled() {
	t := p.sc.t
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("sidecar ended with %v; want killed by SIGKILL\n%s", err, p.sc.logs)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("sidecar still running 15s after the failpoint\n%s", p.sc.logs)
	}
}

// stop stops the process with SIGTERM and waits for a clean exit.
func (p *sidecarProc) stop() {
	t := p.sc.t
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Errorf("sidecar exited with %v after SIGTERM", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("sidecar still running 20s after SIGTERM")
	}
}

// openStore opens the stopped sidecar's data file (which fails if any
// record does not decode) and returns connection id's record.
func (sc *crashScenario) openStore(id string) *vault.Connection {
	t := sc.t
	t.Helper()
	st, err := bolt.Open(filepath.Join(sc.dir, "data", "tokenvault.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	mk, err := seal.ParseMasterKey([]byte(sc.mk))
	if err != nil {
		t.Fatal(err)
	}
	kr, err := vault.OpenKeyring(sc.ctx, st, mk)
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Open(sc.ctx, vault.Config{Store: st, Keyring: kr})
	if err != nil {
		t.Fatalf("the store does not open: %v", err)
	}
	if v.Len() != 1 {
		t.Errorf("store holds %d connections; want 1", v.Len())
	}
	c, err := v.Get(sc.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
