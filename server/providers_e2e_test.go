package server_test

// End to end, for each named provider: the sidecar's own connect flow and
// callback against a strict fake of that service's endpoints
// (providertest.StartSlack, ...), then a token, a refresh, and a
// revocation, all through gRPC.

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/server"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// e2eKey is the operator API key the tests call with.
const e2eKey = "e2e-operator-key-0123456789abcdef"

// e2eService describes one provider's end-to-end run.
type e2eService struct {
	kind   string
	start  func(providertest.ServiceOptions) *providertest.Service
	build  func(providers.ServiceConfig) (providers.Provider, error)
	scopes []string
	// options edits the provider's options (fake's by default); flow are
	// the StartConnect options.
	options func(fake *providertest.Service) map[string]string
	flow    func(fake *providertest.Service) map[string]string
	// credentials are refreshed one after the other.
	credentials []string
	// meta are metadata keys the connection must have.
	meta        []string
	fakeOptions providertest.ServiceOptions
}

var e2eServices = []e2eService{
	{
		kind: "slack", start: providertest.StartSlack,
		build:       func(c providers.ServiceConfig) (providers.Provider, error) { return providers.NewSlack(c) },
		scopes:      []string{"chat:write", "channels:read", "incoming-webhook", "user:search:read"},
		credentials: []string{"", "user"},
		meta:        []string{"team_id", "app_id", "bot_user_id", "authed_user_id", "incoming_webhook_channel_id"},
	},
	{
		kind: "github", start: providertest.StartGitHub,
		build:       func(c providers.ServiceConfig) (providers.Provider, error) { return providers.NewGitHub(c) },
		credentials: []string{""},
		meta:        []string{"login", "user_id"},
	},
	{
		kind: "linear", start: providertest.StartLinear,
		build:       func(c providers.ServiceConfig) (providers.Provider, error) { return providers.NewLinear(c) },
		scopes:      []string{"read", "write"},
		credentials: []string{""},
		meta:        []string{"organization_id", "organization_url_key", "actor"},
	},
	{
		kind: "google", start: providertest.StartGoogle,
		build:       func(c providers.ServiceConfig) (providers.Provider, error) { return providers.NewGoogle(c) },
		scopes:      []string{"openid", "email", "https://www.googleapis.com/auth/calendar.readonly"},
		credentials: []string{""},
		meta:        []string{"sub", "email"},
	},
	{
		kind: "salesforce", start: providertest.StartSalesforce,
		build:  func(c providers.ServiceConfig) (providers.Provider, error) { return providers.NewSalesforce(c) },
		scopes: []string{"refresh_token", "api", "id"},
		// The default host is production; the flow names the fake (a My
		// Domain, say), which must then serve the refresh and the revocation.
		options: func(f *providertest.Service) map[string]string {
			return map[string]string{"host": "login.salesforce.com", "allowed_hosts": f.URL()}
		},
		flow:        func(f *providertest.Service) map[string]string { return map[string]string{"host": f.URL()} },
		credentials: []string{""},
		meta:        []string{"host", "instance_url", "org_id", "user_id"},
		fakeOptions: providertest.ServiceOptions{RotateRefreshTokens: true},
	},
}

// e2eSidecar is a sidecar in-process with one provider: bbolt in a temp
// dir, gRPC on bufconn, the HTTP callback on 127.0.0.1.
type e2eSidecar struct {
	api  tvv1.TokenVaultServiceClient
	http *httptest.Server
	skew *atomic.Int64 // added to the vault's clock
}

func startE2ESidecar(t *testing.T, hs *httptest.Server, p providers.Provider) *e2eSidecar {
	t.Helper()
	ctx := context.Background()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "tv.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	mk, err := seal.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := vault.OpenKeyring(ctx, st, mk)
	if err != nil {
		t.Fatal(err)
	}
	name := p.Info().Name
	skew := new(atomic.Int64)
	v, err := vault.Open(ctx, vault.Config{Store: st, Keyring: kr, Providers: map[string]vault.Provider{name: server.AdaptProvider(p)},
		Now:      func() time.Time { return time.Now().Add(time.Duration(skew.Load())) },
		StartURL: server.StartURL("http://" + hs.Listener.Addr().String())})
	if err != nil {
		t.Fatal(err)
	}
	auth, err := server.NewAuth([]server.APIKey{{Name: "e2e", Key: e2eKey, Access: server.Access{Role: server.RoleOperator}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(server.Config{Vault: v, Providers: []providers.Info{p.Info()}, Auth: auth, PublicURL: "http://" + hs.Listener.Addr().String()})
	hs.Config.Handler = srv.PublicHandler()
	hs.Start()
	t.Cleanup(hs.Close)

	lis := bufconn.Listen(1 << 20)
	go srv.GRPC().Serve(lis)
	t.Cleanup(srv.GRPC().Stop)
	withKey := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+e2eKey), method, req, reply, cc, opts...)
	}
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(withKey))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &e2eSidecar{api: tvv1.NewTokenVaultServiceClient(conn), http: hs, skew: skew}
}

func TestProvidersE2E(t *testing.T) {
	for _, svc := range e2eServices {
		t.Run(svc.kind, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()

			// The callback URL must be known before the fake is configured.
			hs := httptest.NewUnstartedServer(nil)
			redirect := "http://" + hs.Listener.Addr().String() + "/oauth/callback/" + svc.kind
			fo := svc.fakeOptions
			fo.RedirectURI, fo.AccessTokenTTL = redirect, 30*time.Minute
			fake := svc.start(fo)
			t.Cleanup(fake.Close)
			opts := fake.ProviderOptions()
			if svc.options != nil {
				opts = svc.options(fake)
			}
			p, err := svc.build(providers.ServiceConfig{
				Name: svc.kind, ClientID: providertest.DefaultClientID, ClientSecret: providertest.DefaultClientSecret,
				RedirectURL: redirect, Scopes: svc.scopes, PKCE: true, Options: opts,
			})
			if err != nil {
				t.Fatalf("building the provider: %v", err)
			}
			sc := startE2ESidecar(t, hs, p)

			lp, err := sc.api.ListProviders(ctx, &tvv1.ListProvidersRequest{})
			if err != nil || len(lp.Providers) != 1 || lp.Providers[0].Kind != svc.kind || !lp.Providers[0].SupportsRevocation {
				t.Fatalf("ListProviders = %v, %v", lp, err)
			}

			// Connect: StartConnect, then the browser follows the fake's
			// redirect to the callback.
			var flow map[string]string
			if svc.flow != nil {
				flow = svc.flow(fake)
			}
			start, err := sc.api.StartConnect(ctx, &tvv1.StartConnectRequest{Owner: "alice", Provider: svc.kind, Options: flow})
			if err != nil {
				t.Fatalf("StartConnect = %v", err)
			}
			browser := &http.Client{Jar: newBrowser(t).Jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			resp, err := browser.Get(start.AuthorizationUrl) // the start URL: binds the flow to this browser
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusSeeOther {
				t.Fatalf("start URL answered %d", resp.StatusCode)
			}
			resp, err = browser.Get(resp.Header.Get("Location"))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			loc := resp.Header.Get("Location")
			if resp.StatusCode != http.StatusFound || loc == "" {
				t.Fatalf("authorize answered %d, Location %q", resp.StatusCode, loc)
			}
			resp, err = browser.Get(loc)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("callback answered %d", resp.StatusCode)
			}
			if st := fake.Stats(); st.Exchanges != 1 || st.ClientRejections != 0 {
				t.Errorf("fake stats after connect = %+v; want one exchange, no rejection", st)
			}
			list, err := sc.api.ListConnections(ctx, &tvv1.ListConnectionsRequest{Owner: "alice"})
			if err != nil || len(list.Connections) != 1 {
				t.Fatalf("ListConnections = %v, %v", list, err)
			}
			c := list.Connections[0]
			if c.Status != tvv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE || c.Account == "" || len(c.MissingScopes) != 0 {
				t.Errorf("connection = %v; want active, with an account and no missing scopes", c)
			}
			for _, k := range svc.meta {
				if c.Metadata[k] == "" {
					t.Errorf("Metadata[%q] is empty; have %v", k, c.Metadata)
				}
			}
			if svc.kind == "salesforce" && c.Metadata["host"] != fake.URL() {
				t.Errorf("Metadata[host] = %q; want the flow's host %s", c.Metadata["host"], fake.URL())
			}

			// Each credential: a token, then a forced refresh (once the
			// vault's clock is past the 2 s in which forced refreshes share
			// the last one), leaving the others alone.
			tokens := map[string]string{}
			for _, cred := range svc.credentials {
				got, err := sc.api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: c.ConnectionId, Credential: cred})
				if err != nil {
					t.Fatalf("GetAccessToken(%q) = %v", cred, err)
				}
				if !fake.IsActive(got.AccessToken) || got.TokenType != "Bearer" || got.ExpireTime == nil {
					t.Fatalf("GetAccessToken(%q) = %v; want a live Bearer token with an expiry", cred, got)
				}
				tokens[cred] = got.AccessToken
			}
			for i, cred := range svc.credentials {
				sc.skew.Add(int64(3 * time.Second))
				got, err := sc.api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: c.ConnectionId, Credential: cred,
					ForceRefresh: true})
				if err != nil {
					t.Fatalf("GetAccessToken(%q, forced) = %v", cred, err)
				}
				if got.AccessToken == tokens[cred] || !fake.IsActive(got.AccessToken) {
					t.Fatalf("GetAccessToken(%q, forced) gave the old or a dead token; want a refreshed one", cred)
				}
				if st := fake.Stats(); st.Refreshes != i+1 || st.ReuseDetections != 0 {
					t.Errorf("fake stats after refreshing %q = %+v; want %d refreshes, no reuse", cred, st, i+1)
				}
				tokens[cred] = got.AccessToken
				for _, other := range svc.credentials {
					if other == cred {
						continue
					}
					o, err := sc.api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: c.ConnectionId, Credential: other})
					if err != nil || o.AccessToken != tokens[other] {
						t.Errorf("refreshing %q changed credential %q", cred, other)
					}
				}
			}
			if svc.kind == "salesforce" {
				gc, _ := sc.api.GetConnection(ctx, &tvv1.GetConnectionRequest{ConnectionId: c.ConnectionId})
				if gc.GetConnection().GetMetadata()["host"] != c.Metadata["host"] {
					t.Errorf("the host changed on refresh")
				}
			}

			// Revoke: the fake sees it, every token dies, the connection is
			// REVOKED.
			rv, err := sc.api.RevokeConnection(ctx, &tvv1.RevokeConnectionRequest{ConnectionId: c.ConnectionId})
			if err != nil {
				t.Fatalf("RevokeConnection = %v", err)
			}
			if !rv.ProviderRevoked || rv.ProviderError != "" {
				t.Errorf("RevokeConnection = %v; want revoked at the provider", rv)
			}
			if st := fake.Stats(); st.Revocations == 0 {
				t.Errorf("the fake saw no revocation")
			}
			if issued, revoked := fake.Revoked(); revoked != issued || issued != len(svc.credentials) {
				t.Errorf("fake grants: %d issued, %d revoked; want all %d revoked", issued, revoked, len(svc.credentials))
			}
			for cred, tok := range tokens {
				if fake.IsActive(tok) {
					t.Errorf("credential %q is still live at the provider after revocation", cred)
				}
			}
			gc, err := sc.api.GetConnection(ctx, &tvv1.GetConnectionRequest{ConnectionId: c.ConnectionId})
			if err != nil || gc.Connection.Status != tvv1.ConnectionStatus_CONNECTION_STATUS_REVOKED {
				t.Errorf("GetConnection after revoke = %v, %v; want REVOKED", gc, err)
			}
			if _, err := sc.api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: c.ConnectionId}); err == nil {
				t.Errorf("GetAccessToken after revoke succeeded")
			}
		})
	}
}
