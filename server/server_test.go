package server_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/server"
	"github.com/tokenvault/tokenvault/server/connectpage"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/audit"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// env is a real sidecar in-process: the strict fake authorization server on
// 127.0.0.1, a bbolt vault in a temp dir, the gRPC API on bufconn and the
// HTTP callback on 127.0.0.1.
//
// Every call needs a credential: api and admin use the operator key; dial
// makes clients with the others (testKeys).
type env struct {
	t       testing.TB
	clock   *clock
	fake    *providertest.Server
	api     tvv1.TokenVaultServiceClient
	admin   tvv1.AdminServiceClient
	conn    *grpc.ClientConn
	http    *httptest.Server // the public listener
	srv     *server.Server
	v       *vault.Vault
	store   vault.Store
	audit   *audit.Log
	metrics *server.Metrics
	lis     *bufconn.Listener
	// browser is the end user's browser: it keeps cookies (the start URL
	// binds each flow to it) and follows redirects.
	browser *http.Client
}

// testKeys are the env's API keys, by name.
var testKeys = map[string]string{
	"ops":       "tvk_test_operator_0000000000000",
	"app":       "tvk_test_application_000000000",
	"app-acme":  "tvk_test_app_limited_acme_00000",
	"app-other": "tvk_test_app_limited_other_0000",
	"app-slow":  "tvk_test_app_rate_limited_00000",
	"ops-other": "tvk_test_ops_limited_other_0000",
	"not-a-key": "tvk_test_unknown_key_000000000",
}

func testAuth(t testing.TB) *server.Auth {
	t.Helper()
	a, err := server.NewAuth([]server.APIKey{
		{Name: "ops", Key: testKeys["ops"], Access: server.Access{Role: server.RoleOperator}},
		{Name: "app", Key: testKeys["app"], Access: server.Access{Role: server.RoleApplication}},
		{Name: "app-acme", Key: testKeys["app-acme"], Access: server.Access{Role: server.RoleApplication, Providers: []string{"acme"}}},
		{Name: "app-other", Key: testKeys["app-other"], Access: server.Access{Role: server.RoleApplication, Providers: []string{"other"}}},
		{Name: "app-slow", Key: testKeys["app-slow"], Access: server.Access{Role: server.RoleApplication, RateLimit: server.RateLimit{RPS: 1, Burst: 2}}},
		{Name: "ops-other", Key: testKeys["ops-other"], Access: server.Access{Role: server.RoleOperator, Providers: []string{"other"}}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// bearerCreds sends an API key with every call.
type bearerCreds string

func (k bearerCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(k)}, nil
}

func (bearerCreds) RequireTransportSecurity() bool { return false }

// dial returns a client connection that presents the named key ("" for
// none).
func (e *env) dial(name string) *grpc.ClientConn {
	e.t.Helper()
	opts := []grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return e.lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}
	if name != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearerCreds(testKeys[name])))
	}
	conn, err := grpc.NewClient("passthrough:///bufnet", opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return conn
}

func newEnv(t testing.TB, fo providertest.Options) *env {
	t.Helper()
	return newEnvWith(t, fo, nil)
}

// newEnvWith is newEnv with the provider's configuration edited.
func newEnvWith(t testing.TB, fo providertest.Options, edit func(*providers.OAuth2Config)) *env {
	t.Helper()
	e := &env{t: t, clock: &clock{t: time.Now()}, metrics: server.NewMetrics(), browser: newBrowser(t)}
	fo.Now = e.clock.Now
	// The callback URL must be known before the fake is configured.
	e.http = httptest.NewUnstartedServer(nil)
	publicURL := "http://" + e.http.Listener.Addr().String()
	fo.RedirectURIs = []string{publicURL + "/oauth/callback/acme"}
	e.fake = providertest.Start(fo)
	t.Cleanup(e.fake.Close)
	pc := e.fake.Config()
	pc.Name = "acme"
	if edit != nil {
		edit(&pc)
	}
	p, err := providers.NewOAuth2(pc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := bolt.Open(filepath.Join(t.TempDir(), "tv.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e.store = st
	mk, _ := seal.GenerateMasterKey()
	kr, err := vault.OpenKeyring(context.Background(), st, mk)
	if err != nil {
		t.Fatal(err)
	}
	e.v, err = vault.Open(context.Background(), vault.Config{
		Store: st, Keyring: kr,
		Providers: map[string]vault.Provider{"acme": server.AdaptProvider(p)},
		ReturnTo:  []string{"https://app.example/done"},
		Now:       e.clock.Now,
		OnRefresh: e.metrics.ObserveRefresh,
		StartURL:  server.StartURL(publicURL),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.audit = audit.New(audit.Config{Store: st, Now: e.clock.Now})
	t.Cleanup(e.audit.Close)
	srv := server.New(server.Config{Vault: e.v, Providers: []providers.Info{p.Info()}, PublicURL: publicURL,
		// Tests run hundreds of flows from one address in seconds.
		ConnectPage: connectpage.Config{Limits: connectpage.Limits{PerAddress: 1e6, AddressBurst: 1e6}},
		Auth:        testAuth(t), Audit: e.audit, Metrics: e.metrics, Now: e.clock.Now})
	e.srv = srv
	e.http.Config.Handler = srv.PublicHandler()
	e.http.Start()
	t.Cleanup(e.http.Close)

	e.lis = bufconn.Listen(1 << 20)
	go srv.GRPC().Serve(e.lis)
	t.Cleanup(srv.GRPC().Stop)
	e.conn = e.dial("ops")
	e.api = tvv1.NewTokenVaultServiceClient(e.conn)
	e.admin = tvv1.NewAdminServiceClient(e.conn)
	return e
}

// connect runs the browser's part of the flow and returns the connection id.
func (e *env) connect(owner string) string {
	e.t.Helper()
	sc, err := e.api.StartConnect(context.Background(), &tvv1.StartConnectRequest{Owner: owner, Provider: "acme"})
	if err != nil {
		e.t.Fatalf("StartConnect = %v", err)
	}
	resp, err := e.browser.Get(sc.AuthorizationUrl)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("callback answered %d", resp.StatusCode)
	}
	list, err := e.api.ListConnections(context.Background(), &tvv1.ListConnectionsRequest{Owner: owner})
	if err != nil || len(list.Connections) != 1 {
		e.t.Fatalf("ListConnections(%q) = %v, %v", owner, list, err)
	}
	return list.Connections[0].ConnectionId
}

// newBrowser is an end user's browser: a cookie jar, redirects followed.
func newBrowser(t testing.TB) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar}
}

// providerURL opens a start URL in the env's browser and returns where it
// sends the browser: the provider's authorization URL.
func (e *env) providerURL(startURL string) *url.URL {
	e.t.Helper()
	c := &http.Client{Jar: e.browser.Jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(startURL)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	u, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || resp.StatusCode != http.StatusSeeOther || !u.IsAbs() {
		e.t.Fatalf("start URL answered %d to %q; want a redirect to the provider", resp.StatusCode, resp.Header.Get("Location"))
	}
	return u
}

func reason(err error) string {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.Reason
		}
	}
	return ""
}

func TestServer_Errors(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	ctx := context.Background()
	for _, tc := range []struct {
		name       string
		call       func() error
		wantCode   codes.Code
		wantReason string
	}{
		{"GetAccessToken no id", func() error {
			_, err := e.api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{})
			return err
		}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"GetAccessToken unknown", func() error {
			_, err := e.api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: "conn_nope"})
			return err
		}, codes.NotFound, "NOT_CONNECTED"},
		{"GetAccessToken negative min_valid", func() error {
			_, err := e.api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: "x", MinValidFor: durationpb.New(-time.Second)})
			return err
		}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"StartConnect unknown provider", func() error {
			_, err := e.api.StartConnect(ctx, &tvv1.StartConnectRequest{Owner: "a", Provider: "nope"})
			return err
		}, codes.NotFound, "UNKNOWN_PROVIDER"},
		{"StartConnect no owner", func() error {
			_, err := e.api.StartConnect(ctx, &tvv1.StartConnectRequest{Provider: "acme"})
			return err
		}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"StartConnect return_to not allowed", func() error {
			_, err := e.api.StartConnect(ctx, &tvv1.StartConnectRequest{Owner: "a", Provider: "acme", ReturnTo: "https://evil.example/"})
			return err
		}, codes.InvalidArgument, "RETURN_TO_NOT_ALLOWED"},
		{"StartConnect unknown option", func() error {
			_, err := e.api.StartConnect(ctx, &tvv1.StartConnectRequest{Owner: "a", Provider: "acme", Options: map[string]string{"bogus": "1"}})
			return err
		}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"GetConnection unknown", func() error {
			_, err := e.api.GetConnection(ctx, &tvv1.GetConnectionRequest{ConnectionId: "conn_nope"})
			return err
		}, codes.NotFound, "NOT_CONNECTED"},
		{"ListConnections bad page token", func() error {
			_, err := e.api.ListConnections(ctx, &tvv1.ListConnectionsRequest{PageToken: "!!"})
			return err
		}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"ListConnections negative page size", func() error {
			_, err := e.api.ListConnections(ctx, &tvv1.ListConnectionsRequest{PageSize: -1})
			return err
		}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"RevokeConnection unknown", func() error {
			_, err := e.api.RevokeConnection(ctx, &tvv1.RevokeConnectionRequest{ConnectionId: "conn_nope"})
			return err
		}, codes.NotFound, "NOT_CONNECTED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if status.Code(err) != tc.wantCode || reason(err) != tc.wantReason {
				t.Errorf("= %v (reason %q); want %v/%s", err, reason(err), tc.wantCode, tc.wantReason)
			}
		})
	}
}

// clock is the settable clock the fake provider and the vault share.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestServer_GetAccessToken_ConcurrentAtExpiry_OneRefresh(t *testing.T) {
	e := newEnv(t, providertest.Options{AccessTokenTTL: time.Hour})
	id := e.connect("alice")
	first, err := e.api.GetAccessToken(context.Background(), &tvv1.GetAccessTokenRequest{ConnectionId: id})
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Add(time.Hour + time.Second) // expired, at the fake and at the vault
	const callers = 200
	var wg sync.WaitGroup
	got := make([]string, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := e.api.GetAccessToken(context.Background(), &tvv1.GetAccessTokenRequest{ConnectionId: id})
			errs[i] = err
			if err == nil {
				got[i] = r.AccessToken
			}
		}()
	}
	wg.Wait()
	if n := e.fake.Stats().Token["refresh_token"]; n != 1 {
		t.Errorf("200 concurrent callers caused %d provider refreshes; want 1", n)
	}
	for i := range callers {
		if errs[i] != nil || got[i] != got[0] || got[i] == first.AccessToken {
			t.Fatalf("caller %d: %q, %v; want the one new token %q", i, got[i], errs[i], got[0])
		}
	}
	if !e.fake.IsActive(got[0]) {
		t.Error("the new token is not active at the provider")
	}
	if n := e.fake.Stats().ReuseDetections; n != 0 {
		t.Errorf("reuse detections = %d; want 0", n)
	}
}

func TestServer_Revoke_AtProviderAndIdempotent(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	id := e.connect("alice")
	tok, err := e.api.GetAccessToken(context.Background(), &tvv1.GetAccessTokenRequest{ConnectionId: id})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		resp, err := e.api.RevokeConnection(context.Background(), &tvv1.RevokeConnectionRequest{ConnectionId: id})
		if err != nil || !resp.ProviderRevoked || resp.Connection.Status != tvv1.ConnectionStatus_CONNECTION_STATUS_REVOKED {
			t.Fatalf("RevokeConnection #%d = %v, %v", i+1, resp, err)
		}
	}
	if e.fake.IsActive(tok.AccessToken) {
		t.Error("the provider still accepts the access token")
	}
	if n := e.fake.Stats().Revoke; n != 1 {
		t.Errorf("provider revocations = %d; want 1", n)
	}
}

func TestServer_Revoke_ProviderDown_DestroysLocally(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	id := e.connect("alice")
	e.fake.FailNext(providertest.Revoke, 1, providertest.ServerError(503))
	resp, err := e.api.RevokeConnection(context.Background(), &tvv1.RevokeConnectionRequest{ConnectionId: id})
	if err != nil {
		t.Fatal(err)
	}
	if resp.ProviderRevoked || resp.ProviderError == "" || resp.Connection.Status != tvv1.ConnectionStatus_CONNECTION_STATUS_REVOKED {
		t.Errorf("RevokeConnection = %v; want revoked locally with the provider failure reported", resp)
	}
	_, err = e.api.GetAccessToken(context.Background(), &tvv1.GetAccessTokenRequest{ConnectionId: id})
	if status.Code(err) != codes.FailedPrecondition || reason(err) != "NOT_CONNECTED" {
		t.Errorf("GetAccessToken after revoke = %v", err)
	}
}

func TestServer_ReuseDetected_NeedsReauth(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	id := e.connect("alice")
	// The provider revokes the whole grant (as on reuse detection).
	for _, g := range e.fake.Grants() {
		e.fake.RevokeGrant(g.ID)
	}
	e.clock.Add(time.Minute) // past the debounce of forced refreshes
	_, err := e.api.GetAccessToken(context.Background(), &tvv1.GetAccessTokenRequest{ConnectionId: id, ForceRefresh: true})
	if status.Code(err) != codes.FailedPrecondition || reason(err) != "NEEDS_REAUTHORIZATION" {
		t.Fatalf("GetAccessToken = %v (%s); want FailedPrecondition/NEEDS_REAUTHORIZATION", err, reason(err))
	}
	c, _ := e.api.GetConnection(context.Background(), &tvv1.GetConnectionRequest{ConnectionId: id})
	if c.Connection.Status != tvv1.ConnectionStatus_CONNECTION_STATUS_NEEDS_REAUTH || c.Connection.StatusReason != "invalid_grant" {
		t.Errorf("connection = %s/%s; want NEEDS_REAUTH/invalid_grant", c.Connection.Status, c.Connection.StatusReason)
	}
	// Reconnecting keeps the id and makes it active again.
	if again := e.connect("alice"); again != id {
		t.Errorf("reconnect id = %s; want %s", again, id)
	}
}

func TestServer_Transient_Unavailable(t *testing.T) {
	e := newEnv(t, providertest.Options{AccessTokenTTL: time.Minute})
	id := e.connect("alice")
	e.fake.FailNext(providertest.Token, 1, providertest.RateLimited("7"))
	// min_valid 2m > lifetime: a refresh is needed; the token is still
	// valid, so it is served while the provider is rate limiting.
	r, err := e.api.GetAccessToken(context.Background(), &tvv1.GetAccessTokenRequest{ConnectionId: id, MinValidFor: durationpb.New(2 * time.Minute)})
	if err != nil || r.AccessToken == "" {
		t.Fatalf("GetAccessToken during 429 = %v; want the still-valid token", err)
	}
	c, _ := e.api.GetConnection(context.Background(), &tvv1.GetConnectionRequest{ConnectionId: id})
	if c.Connection.Status != tvv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE {
		t.Errorf("status = %s; want ACTIVE", c.Connection.Status)
	}
}

func TestServer_Callback_Pages(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	base := e.http.URL + "/oauth/callback/acme"
	for _, tc := range []struct {
		name  string
		query string
		want  int
		text  string
	}{
		{"forged state", "?state=forged&code=x", 400, "no longer valid"},
		{"no state", "?code=x", 400, "no longer valid"},
		{"html in params is escaped", "?state=%3Cscript%3E&code=x", 400, "no longer valid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := http.Get(base + tc.query)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var b strings.Builder
			buf := make([]byte, 4096)
			n, _ := resp.Body.Read(buf)
			b.Write(buf[:n])
			if resp.StatusCode != tc.want || !strings.Contains(b.String(), tc.text) || strings.Contains(b.String(), "<script>") {
				t.Errorf("GET %s = %d %q; want %d containing %q", tc.query, resp.StatusCode, b.String(), tc.want, tc.text)
			}
		})
	}
	// access_denied with a real state: 400, and no token request.
	e.fake.DenyNext()
	sc, err := e.api.StartConnect(context.Background(), &tvv1.StartConnectRequest{Owner: "a", Provider: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.browser.Get(sc.AuthorizationUrl)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("denied consent: callback = %d; want 400", resp.StatusCode)
	}
	if n := e.fake.Stats().Token["authorization_code"]; n != 0 {
		t.Errorf("token requests after a denied consent = %d; want 0", n)
	}
}

func TestServer_ReturnTo_Redirect(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	sc, err := e.api.StartConnect(context.Background(), &tvv1.StartConnectRequest{Owner: "a", Provider: "acme", ReturnTo: "https://app.example/done?tab=1"})
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Jar: e.browser.Jar, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if req.URL.Host == "app.example" {
			return http.ErrUseLastResponse
		}
		return nil
	}}
	resp, err := c.Get(sc.AuthorizationUrl)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusSeeOther || loc.Host != "app.example" || loc.Query().Get("tab") != "1" || loc.Query().Get("connection_id") == "" {
		t.Errorf("callback = %d %s; want 303 to return_to with connection_id", resp.StatusCode, loc)
	}
}

func TestServer_HealthAndRotateKeys(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	id := e.connect("alice")
	h, err := healthpb.NewHealthClient(e.conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
	// Serve() sets SERVING; this env serves GRPC() directly, so the status
	// is the health server's default for "" (SERVING).
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health = %v, %v", h, err)
	}
	r, err := e.admin.RotateKeys(context.Background(), &tvv1.RotateKeysRequest{})
	if err != nil || r.Term != 2 || r.Rewrapped < 1 {
		t.Fatalf("RotateKeys = %v, %v", r, err)
	}
	if _, err := e.api.GetAccessToken(context.Background(), &tvv1.GetAccessTokenRequest{ConnectionId: id}); err != nil {
		t.Errorf("GetAccessToken after rotation = %v", err)
	}
}

func TestServer_RecoversFromPanic(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	_ = e
	// A nil vault makes the handler panic; the client sees Internal with
	// no panic text.
	srv := server.New(server.Config{Auth: testAuth(t)})
	lis := bufconn.Listen(1 << 16)
	go srv.GRPC().Serve(lis)
	defer srv.GRPC().Stop()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearerCreds(testKeys["ops"])))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = tvv1.NewTokenVaultServiceClient(conn).GetAccessToken(context.Background(), &tvv1.GetAccessTokenRequest{ConnectionId: "x"})
	st, _ := status.FromError(err)
	if st.Code() != codes.Internal || strings.Contains(st.Message(), "nil") || strings.Contains(st.Message(), "panic") {
		t.Errorf("after panic: %v; want Internal without the panic value", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Error("unexpected cancel")
	}
}

// TestIntrospection_EndToEnd: a generic provider that sends no expires_in
// but has an RFC 7662 endpoint: the token is served with the expiry the
// provider reports, the provider is listed as able to validate, and a grant
// revoked at the provider is found by ValidateConnection and needs
// reauthorization.
func TestIntrospection_EndToEnd(t *testing.T) {
	e := newEnv(t, providertest.Options{OmitExpiresIn: true, AccessTokenTTL: 2 * time.Hour})
	ctx := context.Background()
	id := e.connect("alice")
	tok, err := e.api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id})
	if err != nil {
		t.Fatal(err)
	}
	if want := e.clock.Now().Add(2 * time.Hour).Truncate(time.Second); !tok.GetExpireTime().AsTime().Equal(want) {
		t.Errorf("expire_time = %v; want %v, from introspection", tok.GetExpireTime().AsTime(), want)
	}
	lp, err := e.api.ListProviders(ctx, &tvv1.ListProvidersRequest{})
	if err != nil || len(lp.Providers) != 1 || !lp.Providers[0].SupportsValidation {
		t.Errorf("ListProviders = %v, %v; want acme, able to validate", lp, err)
	}
	e.clock.Add(time.Minute)
	vr, err := e.api.ValidateConnection(ctx, &tvv1.ValidateConnectionRequest{ConnectionId: id})
	if err != nil || !vr.Live || !vr.Connection.GetLastValidatedTime().AsTime().Equal(e.clock.Now()) ||
		vr.Connection.Status != tvv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE {
		t.Fatalf("ValidateConnection(live) = %v, %v; want live, validated now, active", vr, err)
	}
	e.fake.RevokeGrant(e.fake.Grants()[0].ID)
	before := e.fake.Stats().Introspect
	for range 2 { // the second answers from the record, without asking
		vr, err = e.api.ValidateConnection(ctx, &tvv1.ValidateConnectionRequest{ConnectionId: id})
		if err != nil || vr.Live || vr.Connection.Status != tvv1.ConnectionStatus_CONNECTION_STATUS_NEEDS_REAUTH || vr.Connection.StatusReason != "inactive" {
			t.Fatalf("ValidateConnection(revoked at the provider) = %v, %v; want not live, needs_reauth, reason inactive", vr, err)
		}
	}
	if n := e.fake.Stats().Introspect - before; n != 1 {
		t.Errorf("%d introspections for two validations of a dead grant; want 1", n)
	}
	_, err = e.api.ValidateConnection(ctx, &tvv1.ValidateConnectionRequest{})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("ValidateConnection without an id = %v; want InvalidArgument", err)
	}
	if _, err := e.api.RevokeConnection(ctx, &tvv1.RevokeConnectionRequest{ConnectionId: id}); err != nil {
		t.Fatal(err)
	}
	_, err = e.api.ValidateConnection(ctx, &tvv1.ValidateConnectionRequest{ConnectionId: id})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("ValidateConnection of a revoked connection = %v; want FailedPrecondition", err)
	}

	// A provider without an introspection endpoint cannot validate.
	plain := newEnvWith(t, providertest.Options{}, func(c *providers.OAuth2Config) { c.IntrospectURL = "" })
	pid := plain.connect("bob")
	_, err = plain.api.ValidateConnection(ctx, &tvv1.ValidateConnectionRequest{ConnectionId: pid})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("ValidateConnection at a provider that cannot validate = %v; want InvalidArgument", err)
	}
	lp, err = plain.api.ListProviders(ctx, &tvv1.ListProvidersRequest{})
	if err != nil || lp.Providers[0].SupportsValidation {
		t.Errorf("ListProviders = %v, %v; want acme, unable to validate", lp, err)
	}
}
