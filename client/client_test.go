package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenvault/tokenvault/client"
	tokenvaultv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
)

// tokenExpiry is when every token the fake hands out expires.
var tokenExpiry = time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC)

// fakeVault is an in-memory TokenVaultServiceServer with counters. Its tokens
// are "tok-1", "tok-2", ...: a forced refresh moves to the next one.
type fakeVault struct {
	tokenvaultv1.UnimplementedTokenVaultServiceServer

	mu sync.Mutex
	// Behaviour, set before use.
	static      bool  // a forced refresh keeps the same token
	tokenErr    error // every GetAccessToken fails with it
	forceErr    error // a forced GetAccessToken fails with it
	conns       []*tokenvaultv1.Connection
	listErrPage int  // ListConnections fails on this call (1-based); 0: never
	repeatToken bool // ListConnections hands back the page token it got
	// State and counters.
	gen        int
	gets       int // GetAccessToken calls
	forced     int // of which with force_refresh
	lastGet    *tokenvaultv1.GetAccessTokenRequest
	auth       []string // "authorization" metadata of the last call
	pageTokens []string // page_token of each ListConnections call
}

func newFakeVault() *fakeVault { return &fakeVault{gen: 1} }

func (f *fakeVault) record(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.auth = md.Get("authorization")
}

func (f *fakeVault) GetAccessToken(ctx context.Context, req *tokenvaultv1.GetAccessTokenRequest) (*tokenvaultv1.GetAccessTokenResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(ctx)
	f.gets++
	f.lastGet = req
	if f.tokenErr != nil {
		return nil, f.tokenErr
	}
	if req.GetForceRefresh() {
		f.forced++
		if f.forceErr != nil {
			return nil, f.forceErr
		}
		if !f.static {
			f.gen++
		}
	}
	return &tokenvaultv1.GetAccessTokenResponse{
		AccessToken:   fmt.Sprintf("tok-%d", f.gen),
		TokenType:     "Bearer",
		ExpireTime:    timestamppb.New(tokenExpiry),
		GrantedScopes: []string{"chat:write", "channels:read"},
		MissingScopes: []string{"users:read"},
		Metadata:      map[string]string{"team_id": "T123"},
		ConnectionId:  req.GetConnectionId(),
		Provider:      "slack",
	}, nil
}

func (f *fakeVault) ListConnections(ctx context.Context, req *tokenvaultv1.ListConnectionsRequest) (*tokenvaultv1.ListConnectionsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(ctx)
	f.pageTokens = append(f.pageTokens, req.GetPageToken())
	if len(f.pageTokens) == f.listErrPage {
		return nil, status.Error(codes.Internal, "list failed")
	}
	size := int(req.GetPageSize())
	if size == 0 {
		size = 100
	}
	start := 0
	if tok := req.GetPageToken(); tok != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(tok, "p"))
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, "bad page token")
		}
		start = n
	}
	var page []*tokenvaultv1.Connection
	for _, c := range f.conns[start:] {
		if len(page) == size {
			break
		}
		if req.GetOwner() == "" || c.GetOwner() == req.GetOwner() {
			page = append(page, c)
		}
	}
	resp := &tokenvaultv1.ListConnectionsResponse{Connections: page}
	if end := start + len(page); end < len(f.conns) {
		resp.NextPageToken = fmt.Sprintf("p%d", end)
	}
	if f.repeatToken && req.GetPageToken() != "" {
		resp.NextPageToken = req.GetPageToken()
	}
	return resp, nil
}

func (f *fakeVault) StartConnect(ctx context.Context, req *tokenvaultv1.StartConnectRequest) (*tokenvaultv1.StartConnectResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(ctx)
	return &tokenvaultv1.StartConnectResponse{
		AuthorizationUrl: "https://slack.com/oauth/v2/authorize?state=s&owner=" + req.GetOwner(),
	}, nil
}

func (f *fakeVault) CreateConnectSession(ctx context.Context, req *tokenvaultv1.CreateConnectSessionRequest) (*tokenvaultv1.CreateConnectSessionResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(ctx)
	return &tokenvaultv1.CreateConnectSessionResponse{
		Url:        "https://tv.example/connect/s/tok-" + req.GetOwner(),
		ExpireTime: timestamppb.New(time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)),
	}, nil
}

func (f *fakeVault) GetConnection(ctx context.Context, req *tokenvaultv1.GetConnectionRequest) (*tokenvaultv1.GetConnectionResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(ctx)
	if req.GetConnectionId() != "conn_1" {
		return nil, reasonErr(codes.NotFound, client.ReasonNotConnected, client.ErrorDomain)
	}
	return &tokenvaultv1.GetConnectionResponse{Connection: &tokenvaultv1.Connection{
		ConnectionId: "conn_1",
		Provider:     "slack",
		Status:       tokenvaultv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE,
	}}, nil
}

func (f *fakeVault) RevokeConnection(ctx context.Context, req *tokenvaultv1.RevokeConnectionRequest) (*tokenvaultv1.RevokeConnectionResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(ctx)
	return &tokenvaultv1.RevokeConnectionResponse{
		Connection: &tokenvaultv1.Connection{
			ConnectionId: req.GetConnectionId(),
			Status:       tokenvaultv1.ConnectionStatus_CONNECTION_STATUS_REVOKED,
			StatusReason: req.GetReason(),
		},
		ProviderRevoked: true,
	}, nil
}

func (f *fakeVault) ValidateConnection(ctx context.Context, req *tokenvaultv1.ValidateConnectionRequest) (*tokenvaultv1.ValidateConnectionResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(ctx)
	if req.GetConnectionId() != "conn_1" {
		return nil, reasonErr(codes.NotFound, client.ReasonNotConnected, client.ErrorDomain)
	}
	return &tokenvaultv1.ValidateConnectionResponse{
		Connection: &tokenvaultv1.Connection{ConnectionId: "conn_1", Status: tokenvaultv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE},
		Live:       true,
	}, nil
}

func (f *fakeVault) ListProviders(ctx context.Context, _ *tokenvaultv1.ListProvidersRequest) (*tokenvaultv1.ListProvidersResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(ctx)
	return &tokenvaultv1.ListProvidersResponse{Providers: []*tokenvaultv1.Provider{
		{Name: "github", Kind: "github"},
		{Name: "slack", Kind: "slack"},
	}}, nil
}

// counts returns the GetAccessToken counters.
func (f *fakeVault) counts() (gets, forced int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gets, f.forced
}

func (f *fakeVault) lastAuth() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.auth
}

// reasonErr returns a status error carrying an ErrorInfo, the way the sidecar
// builds them.
func reasonErr(code codes.Code, reason, domain string) error {
	st, err := status.New(code, strings.ToLower(reason)).WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: domain})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

// serveFake serves srv with a real gRPC server on an in-memory listener. It
// returns the dial option that reaches it and a function that stops it.
func serveFake(srv tokenvaultv1.TokenVaultServiceServer) (grpc.DialOption, func()) {
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer()
	tokenvaultv1.RegisterTokenVaultServiceServer(s, srv)
	go s.Serve(lis)
	dialer := grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return lis.DialContext(ctx)
	})
	return dialer, s.Stop
}

// bufTarget is a target for Dial that skips name resolution: serveFake's
// dialer ignores the address.
const bufTarget = "passthrough:///bufconn"

func newTestClient(t *testing.T, fv *fakeVault, opts ...client.Option) *client.Client {
	t.Helper()
	dialer, stop := serveFake(fv)
	t.Cleanup(stop)
	c, err := client.Dial(bufTarget, append(opts, client.WithDialOptions(dialer))...)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestClient_AccessToken_MapsFields(t *testing.T) {
	fv := newFakeVault()
	c := newTestClient(t, fv)

	got, err := c.AccessToken(t.Context(), "conn_1")
	if err != nil {
		t.Fatalf("AccessToken(%q) = %v", "conn_1", err)
	}
	want := &client.Token{
		AccessToken:   "tok-1",
		TokenType:     "Bearer",
		Expiry:        tokenExpiry,
		GrantedScopes: []string{"chat:write", "channels:read"},
		MissingScopes: []string{"users:read"},
		Metadata:      map[string]string{"team_id": "T123"},
		ConnectionID:  "conn_1",
		Provider:      "slack",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("AccessToken(%q) = %+v; want %+v", "conn_1", got, want)
	}
}

func TestClient_AccessTokenFor_SendsSelector(t *testing.T) {
	fv := newFakeVault()
	c := newTestClient(t, fv)
	tests := []struct {
		name string
		call func() error
		want string // selector as owner/provider/label
	}{
		{"AccessTokenFor", func() error {
			_, err := c.AccessTokenFor(t.Context(), "user-17", "slack")
			return err
		}, "user-17/slack/"},
		{"with a label", func() error {
			_, err := c.AccessTokenFor(t.Context(), "user-17", "slack", client.Label("work"), client.ForceRefresh())
			return err
		}, "user-17/slack/work"},
		{"ByOwner with an empty id", func() error {
			_, err := c.AccessToken(t.Context(), "", client.ByOwner("user-18", "github"))
			return err
		}, "user-18/github/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); err != nil {
				t.Fatal(err)
			}
			fv.mu.Lock()
			req := fv.lastGet
			fv.mu.Unlock()
			sel := req.GetSelector()
			if got := sel.GetOwner() + "/" + sel.GetProvider() + "/" + sel.GetLabel(); got != tt.want || req.GetConnectionId() != "" {
				t.Errorf("request = {connection_id: %q, selector: %s}; want {\"\", %s}", req.GetConnectionId(), got, tt.want)
			}
		})
	}
	// Errors name the selector, as they name an id.
	fv.tokenErr = reasonErr(codes.NotFound, client.ReasonNotConnected, "tokenvault.dev")
	_, err := c.AccessTokenFor(t.Context(), "user-17", "slack", client.Label("work"))
	if !client.IsNotConnected(err) || !strings.Contains(err.Error(), "user-17 at slack (work)") {
		t.Errorf("AccessTokenFor error = %v; want NOT_CONNECTED naming user-17 at slack (work)", err)
	}
}

func TestClient_AccessToken_Options(t *testing.T) {
	tests := []struct {
		name      string
		opts      []client.TokenOption
		wantMin   time.Duration // 0: unset
		wantForce bool
		wantCred  string
	}{
		{name: "none"},
		{name: "MinValid", opts: []client.TokenOption{client.MinValid(2 * time.Minute)}, wantMin: 2 * time.Minute},
		{name: "MinValid zero is default", opts: []client.TokenOption{client.MinValid(0)}},
		{name: "ForceRefresh", opts: []client.TokenOption{client.ForceRefresh()}, wantForce: true},
		{name: "Credential", opts: []client.TokenOption{client.Credential("user")}, wantCred: "user"},
		{
			name:    "all",
			opts:    []client.TokenOption{client.MinValid(time.Hour), client.ForceRefresh(), client.Credential("user")},
			wantMin: time.Hour, wantForce: true, wantCred: "user",
		},
	}
	fv := newFakeVault()
	c := newTestClient(t, fv)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := c.AccessToken(t.Context(), "conn_1", tt.opts...); err != nil {
				t.Fatalf("AccessToken: %v", err)
			}
			fv.mu.Lock()
			req := fv.lastGet
			fv.mu.Unlock()
			var gotMin time.Duration
			if req.GetMinValidFor() != nil {
				gotMin = req.GetMinValidFor().AsDuration()
			}
			if gotMin != tt.wantMin || req.GetForceRefresh() != tt.wantForce || req.GetCredential() != tt.wantCred || req.GetConnectionId() != "conn_1" {
				t.Errorf("request = {min_valid_for: %v, force_refresh: %v, credential: %q, connection_id: %q}; want {%v, %v, %q, %q}",
					gotMin, req.GetForceRefresh(), req.GetCredential(), req.GetConnectionId(),
					tt.wantMin, tt.wantForce, tt.wantCred, "conn_1")
			}
		})
	}
}

func TestClient_APIKey_SentAsMetadata(t *testing.T) {
	tests := []struct {
		name    string
		connect func(t *testing.T, dialer grpc.DialOption) *client.Client
		want    []string
	}{
		{
			name: "Dial with key",
			connect: func(t *testing.T, dialer grpc.DialOption) *client.Client {
				c, err := client.Dial(bufTarget, client.WithAPIKey("k-123"), client.WithDialOptions(dialer))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				return c
			},
			want: []string{"Bearer k-123"},
		},
		{
			name: "New with key",
			connect: func(t *testing.T, dialer grpc.DialOption) *client.Client {
				conn, err := grpc.NewClient(bufTarget, dialer, grpc.WithTransportCredentials(insecure.NewCredentials()))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { conn.Close() })
				return client.New(conn, client.WithAPIKey("k-456"))
			},
			want: []string{"Bearer k-456"},
		},
		{
			name: "no key",
			connect: func(t *testing.T, dialer grpc.DialOption) *client.Client {
				c, err := client.Dial(bufTarget, client.WithDialOptions(dialer))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				return c
			},
			want: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fv := newFakeVault()
			dialer, stop := serveFake(fv)
			t.Cleanup(stop)
			c := tt.connect(t, dialer)

			if _, err := c.AccessToken(t.Context(), "conn_1"); err != nil {
				t.Fatalf("AccessToken: %v", err)
			}
			if got := fv.lastAuth(); !slices.Equal(got, tt.want) {
				t.Errorf("AccessToken sent authorization %q; want %q", got, tt.want)
			}
			// The raw stub carries the key too.
			if _, err := c.API().ListProviders(t.Context(), &tokenvaultv1.ListProvidersRequest{}); err != nil {
				t.Fatalf("API().ListProviders: %v", err)
			}
			if got := fv.lastAuth(); !slices.Equal(got, tt.want) {
				t.Errorf("API().ListProviders sent authorization %q; want %q", got, tt.want)
			}
		})
	}
}

func TestReason(t *testing.T) {
	reauth := reasonErr(codes.FailedPrecondition, "NEEDS_REAUTHORIZATION", "tokenvault.dev")
	tests := []struct {
		name                          string
		err                           error
		want                          string
		reauth, notConnected, unavail bool
	}{
		{name: "nil"},
		{name: "plain error", err: errors.New("boom")},
		{name: "status without details", err: status.Error(codes.FailedPrecondition, "no")},
		{name: "NEEDS_REAUTHORIZATION", err: reauth, want: client.ReasonNeedsReauthorization, reauth: true},
		{name: "wrapped", err: fmt.Errorf("sync: %w", reauth), want: client.ReasonNeedsReauthorization, reauth: true},
		{
			name: "in url.Error",
			err:  &url.Error{Op: "Post", URL: "https://slack.com/api/chat.postMessage", Err: fmt.Errorf("client: %w", reauth)},
			want: client.ReasonNeedsReauthorization, reauth: true,
		},
		{name: "other domain", err: reasonErr(codes.FailedPrecondition, "NEEDS_REAUTHORIZATION", "example.com")},
		{name: "NOT_CONNECTED", err: reasonErr(codes.NotFound, "NOT_CONNECTED", client.ErrorDomain), want: client.ReasonNotConnected, notConnected: true},
		{name: "PROVIDER_UNAVAILABLE", err: reasonErr(codes.Unavailable, "PROVIDER_UNAVAILABLE", client.ErrorDomain), want: client.ReasonProviderUnavailable, unavail: true},
		{name: "sidecar unreachable", err: status.Error(codes.Unavailable, "connection refused"), unavail: true},
		{name: "PROVIDER_MISCONFIGURED", err: reasonErr(codes.FailedPrecondition, "PROVIDER_MISCONFIGURED", client.ErrorDomain), want: client.ReasonProviderMisconfigured},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := client.Reason(tt.err); got != tt.want {
				t.Errorf("Reason(%v) = %q; want %q", tt.err, got, tt.want)
			}
			if got := client.IsReauthRequired(tt.err); got != tt.reauth {
				t.Errorf("IsReauthRequired(%v) = %v; want %v", tt.err, got, tt.reauth)
			}
			if got := client.IsNotConnected(tt.err); got != tt.notConnected {
				t.Errorf("IsNotConnected(%v) = %v; want %v", tt.err, got, tt.notConnected)
			}
			if got := client.IsUnavailable(tt.err); got != tt.unavail {
				t.Errorf("IsUnavailable(%v) = %v; want %v", tt.err, got, tt.unavail)
			}
		})
	}
}

func TestClient_AccessToken_ReasonOverTheWire(t *testing.T) {
	fv := newFakeVault()
	fv.tokenErr = reasonErr(codes.FailedPrecondition, client.ReasonNeedsReauthorization, client.ErrorDomain)
	c := newTestClient(t, fv)

	_, err := c.AccessToken(t.Context(), "conn_1")
	if !client.IsReauthRequired(err) {
		t.Errorf("IsReauthRequired(%v) = false; want true", err)
	}
	if got := status.Code(err); got != codes.FailedPrecondition {
		t.Errorf("status.Code(%v) = %v; want %v", err, got, codes.FailedPrecondition)
	}
}

func TestClient_TokenSource(t *testing.T) {
	fv := newFakeVault()
	c := newTestClient(t, fv)

	ts := c.TokenSource(t.Context(), "conn_1", client.MinValid(time.Minute))
	tok, err := ts.Token()
	if err != nil {
		t.Fatalf("Token() = %v", err)
	}
	if tok.AccessToken != "tok-1" || tok.TokenType != "Bearer" || !tok.Expiry.Equal(tokenExpiry) {
		t.Errorf("Token() = {%q, %q, %v}; want {%q, %q, %v}", tok.AccessToken, tok.TokenType, tok.Expiry, "tok-1", "Bearer", tokenExpiry)
	}
	if got := tok.Extra("team_id"); got != "T123" {
		t.Errorf("Token().Extra(%q) = %v; want %q", "team_id", got, "T123")
	}
	fv.mu.Lock()
	minValid := fv.lastGet.GetMinValidFor().AsDuration()
	fv.mu.Unlock()
	if minValid != time.Minute {
		t.Errorf("min_valid_for = %v; want %v", minValid, time.Minute)
	}

	// Each Token call asks the sidecar; ReuseTokenSource saves the calls.
	reuse := oauth2.ReuseTokenSource(nil, ts)
	for range 3 {
		if _, err := reuse.Token(); err != nil {
			t.Fatalf("ReuseTokenSource.Token() = %v", err)
		}
	}
	if gets, _ := fv.counts(); gets != 2 {
		t.Errorf("GetAccessToken calls = %d; want 2 (one direct, one for the reusing source)", gets)
	}
}

func TestClient_TokenSource_Error(t *testing.T) {
	fv := newFakeVault()
	fv.tokenErr = reasonErr(codes.NotFound, client.ReasonNotConnected, client.ErrorDomain)
	c := newTestClient(t, fv)

	_, err := c.TokenSource(t.Context(), "conn_gone").Token()
	if !client.IsNotConnected(err) {
		t.Errorf("Token() = %v; want a NOT_CONNECTED error", err)
	}
}

// providerAPI is an httptest server standing in for a provider's API. It
// records every request and answers with respond's status code and the
// body "attempt <n>", or redirects.
type providerAPI struct {
	*httptest.Server
	respond   func(n int, r *http.Request) int
	redirects map[string]string // path -> Location; set before use

	mu   sync.Mutex
	reqs []seenRequest
}

type seenRequest struct {
	method, path, auth, body string
}

func newProviderAPI(t *testing.T, respond func(n int, r *http.Request) int) *providerAPI {
	p := &providerAPI{respond: respond}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		p.mu.Lock()
		p.reqs = append(p.reqs, seenRequest{r.Method, r.URL.Path, r.Header.Get("Authorization"), string(body)})
		n := len(p.reqs)
		p.mu.Unlock()
		if loc, ok := p.redirects[r.URL.Path]; ok {
			http.Redirect(w, r, loc, http.StatusFound)
			return
		}
		w.WriteHeader(p.respond(n, r))
		fmt.Fprintf(w, "attempt %d", n)
	}))
	t.Cleanup(p.Close)
	return p
}

func (p *providerAPI) requests() []seenRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.reqs)
}

// acceptOnly answers 200 to a request with the given bearer token and 401 to
// any other.
func acceptOnly(token string) func(int, *http.Request) int {
	return func(_ int, r *http.Request) int {
		if r.Header.Get("Authorization") == "Bearer "+token {
			return http.StatusOK
		}
		return http.StatusUnauthorized
	}
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	return string(b)
}

func TestHTTPClient_OK(t *testing.T) {
	fv := newFakeVault()
	c := newTestClient(t, fv)
	api := newProviderAPI(t, acceptOnly("tok-1"))

	resp, err := c.HTTPClient("conn_1").Get(api.URL + "/api/auth.test")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status = %d; want 200", resp.StatusCode)
	}
	readAll(t, resp)
	reqs := api.requests()
	if len(reqs) != 1 || reqs[0].auth != "Bearer tok-1" {
		t.Errorf("provider saw %+v; want one request with %q", reqs, "Bearer tok-1")
	}
	if gets, forced := fv.counts(); gets != 1 || forced != 0 {
		t.Errorf("GetAccessToken calls = %d, forced = %d; want 1, 0", gets, forced)
	}
}

func TestHTTPClient_Unauthorized_RefreshesAndRetriesOnce(t *testing.T) {
	const payload = `{"channel":"C1","text":"hi"}`
	bodies := []struct {
		name string
		body func() io.Reader // nil: no body
	}{
		{name: "bytes body", body: func() io.Reader { return bytes.NewReader([]byte(payload)) }},
		{name: "strings body", body: func() io.Reader { return strings.NewReader(payload) }},
		{name: "no body"},
	}
	// net/http itself resends a request that failed on a reused connection,
	// using GetBody, which would hide a retry that forgot to replay the body;
	// a base transport without keep-alives does not.
	clients := []struct {
		name string
		http func(*client.Client) *http.Client
	}{
		{"HTTPClient", func(c *client.Client) *http.Client { return c.HTTPClient("conn_1") }},
		{"Transport without keep-alives", func(c *client.Client) *http.Client {
			return &http.Client{Transport: &client.Transport{
				Client:       c,
				ConnectionID: "conn_1",
				Base:         &http.Transport{DisableKeepAlives: true},
			}}
		}},
	}
	for _, hc := range clients {
		for _, tt := range bodies {
			t.Run(hc.name+"/"+tt.name, func(t *testing.T) {
				fv := newFakeVault()
				c := newTestClient(t, fv)
				api := newProviderAPI(t, acceptOnly("tok-2")) // tok-1 is stale

				var body io.Reader
				wantBody := ""
				if tt.body != nil {
					body, wantBody = tt.body(), payload
				}
				req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, api.URL+"/api/chat.postMessage", body)
				if err != nil {
					t.Fatal(err)
				}
				resp, err := hc.http(c).Do(req)
				if err != nil {
					t.Fatalf("Do: %v", err)
				}
				if got := readAll(t, resp); resp.StatusCode != http.StatusOK || got != "attempt 2" {
					t.Errorf("response = %d %q; want 200 %q", resp.StatusCode, got, "attempt 2")
				}
				want := []seenRequest{
					{"POST", "/api/chat.postMessage", "Bearer tok-1", wantBody},
					{"POST", "/api/chat.postMessage", "Bearer tok-2", wantBody},
				}
				if got := api.requests(); !reflect.DeepEqual(got, want) {
					t.Errorf("provider saw %+v; want %+v", got, want)
				}
				if gets, forced := fv.counts(); gets != 2 || forced != 1 {
					t.Errorf("GetAccessToken calls = %d, forced = %d; want 2, 1", gets, forced)
				}
			})
		}
	}
}

func TestHTTPClient_UnauthorizedTwice_ReturnsSecond401(t *testing.T) {
	fv := newFakeVault()
	c := newTestClient(t, fv)
	api := newProviderAPI(t, func(int, *http.Request) int { return http.StatusUnauthorized })

	resp, err := c.HTTPClient("conn_1").Post(api.URL+"/api", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatalf("Post: %v", err)
	}
	if got := readAll(t, resp); resp.StatusCode != http.StatusUnauthorized || got != "attempt 2" {
		t.Errorf("response = %d %q; want 401 %q", resp.StatusCode, got, "attempt 2")
	}
	if got := len(api.requests()); got != 2 {
		t.Errorf("provider saw %d requests; want 2", got)
	}
	if gets, forced := fv.counts(); gets != 2 || forced != 1 {
		t.Errorf("GetAccessToken calls = %d, forced = %d; want 2, 1", gets, forced)
	}
}

// closeTracker is a request body that cannot be replayed and records whether
// it was closed.
type closeTracker struct {
	io.Reader
	mu     sync.Mutex
	closed bool
}

func (c *closeTracker) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

func (c *closeTracker) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

func TestHTTPClient_Unauthorized_NonReplayableBody_NotRetried(t *testing.T) {
	fv := newFakeVault()
	c := newTestClient(t, fv)
	api := newProviderAPI(t, acceptOnly("tok-2"))

	body := &closeTracker{Reader: strings.NewReader("streamed")}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, api.URL+"/upload", body)
	if err != nil {
		t.Fatal(err)
	}
	if req.GetBody != nil {
		t.Fatal("GetBody is set; the test needs a body that cannot be replayed")
	}
	resp, err := c.HTTPClient("conn_1").Do(req)
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	if got := readAll(t, resp); resp.StatusCode != http.StatusUnauthorized || got != "attempt 1" {
		t.Errorf("response = %d %q; want 401 %q", resp.StatusCode, got, "attempt 1")
	}
	if got := api.requests(); len(got) != 1 || got[0].body != "streamed" {
		t.Errorf("provider saw %+v; want one request with body %q", got, "streamed")
	}
	if gets, forced := fv.counts(); gets != 1 || forced != 0 {
		t.Errorf("GetAccessToken calls = %d, forced = %d; want 1, 0", gets, forced)
	}
}

func TestHTTPClient_Unauthorized_RefreshFails(t *testing.T) {
	fv := newFakeVault()
	fv.forceErr = reasonErr(codes.FailedPrecondition, client.ReasonNeedsReauthorization, client.ErrorDomain)
	c := newTestClient(t, fv)
	api := newProviderAPI(t, acceptOnly("tok-2"))

	resp, err := c.HTTPClient("conn_1").Get(api.URL)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("Get = %d; want an error", resp.StatusCode)
	}
	if !client.IsReauthRequired(err) {
		t.Errorf("IsReauthRequired(%v) = false; want true", err)
	}
	if got := len(api.requests()); got != 1 {
		t.Errorf("provider saw %d requests; want 1", got)
	}
}

func TestHTTPClient_Unauthorized_SameTokenAfterRefresh_NotRetried(t *testing.T) {
	fv := newFakeVault()
	fv.static = true
	c := newTestClient(t, fv)
	api := newProviderAPI(t, acceptOnly("tok-2"))

	resp, err := c.HTTPClient("conn_1").Get(api.URL)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if got := readAll(t, resp); resp.StatusCode != http.StatusUnauthorized || got != "attempt 1" {
		t.Errorf("response = %d %q; want 401 %q", resp.StatusCode, got, "attempt 1")
	}
	if _, forced := fv.counts(); forced != 1 {
		t.Errorf("forced refreshes = %d; want 1", forced)
	}
}

func TestHTTPClient_TokenError(t *testing.T) {
	fv := newFakeVault()
	fv.tokenErr = reasonErr(codes.NotFound, client.ReasonNotConnected, client.ErrorDomain)
	c := newTestClient(t, fv)
	api := newProviderAPI(t, acceptOnly("tok-1"))

	body := &closeTracker{Reader: strings.NewReader("x")}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, api.URL, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.HTTPClient("conn_gone").Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("Do = %d; want an error", resp.StatusCode)
	}
	if !client.IsNotConnected(err) {
		t.Errorf("IsNotConnected(%v) = false; want true", err)
	}
	if got := len(api.requests()); got != 0 {
		t.Errorf("provider saw %d requests; want 0", got)
	}
	if !body.isClosed() {
		t.Error("request body not closed")
	}
}

func TestHTTPClient_Redirect(t *testing.T) {
	fv := newFakeVault()
	c := newTestClient(t, fv)
	other := newProviderAPI(t, acceptOnly("tok-1"))
	api := newProviderAPI(t, acceptOnly("tok-1"))
	api.redirects = map[string]string{
		"/same":      "/landing",
		"/elsewhere": other.URL + "/landing",
	}

	tests := []struct {
		path       string
		wantAPI    []string // Authorization headers api saw
		wantOther  []string // and other
		wantStatus int
	}{
		{path: "/same", wantAPI: []string{"Bearer tok-1", "Bearer tok-1"}, wantStatus: http.StatusOK},
		// No token for another host, and its 401 is not retried.
		{path: "/elsewhere", wantAPI: []string{"Bearer tok-1"}, wantOther: []string{""}, wantStatus: http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			nAPI, nOther := len(api.requests()), len(other.requests())
			resp, err := c.HTTPClient("conn_1").Get(api.URL + tt.path)
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			readAll(t, resp)
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status = %d; want %d", resp.StatusCode, tt.wantStatus)
			}
			if got := auths(api.requests()[nAPI:]); !slices.Equal(got, tt.wantAPI) {
				t.Errorf("origin saw Authorization %q; want %q", got, tt.wantAPI)
			}
			if got := auths(other.requests()[nOther:]); !slices.Equal(got, tt.wantOther) {
				t.Errorf("other host saw Authorization %q; want %q", got, tt.wantOther)
			}
		})
	}
	if _, forced := fv.counts(); forced != 0 {
		t.Errorf("forced refreshes = %d; want 0", forced)
	}
}

func auths(reqs []seenRequest) []string {
	var out []string
	for _, r := range reqs {
		out = append(out, r.auth)
	}
	return out
}

func testConnections(n int) []*tokenvaultv1.Connection {
	var cs []*tokenvaultv1.Connection
	for i := range n {
		cs = append(cs, &tokenvaultv1.Connection{ConnectionId: fmt.Sprintf("conn_%d", i), Owner: "u1"})
	}
	return cs
}

func TestClient_ListConnections_WalksPages(t *testing.T) {
	fv := newFakeVault()
	fv.conns = testConnections(7)
	c := newTestClient(t, fv)

	filter := &tokenvaultv1.ListConnectionsRequest{Owner: "u1", PageSize: 3}
	var got []string
	for conn, err := range c.ListConnections(t.Context(), filter) {
		if err != nil {
			t.Fatalf("ListConnections: %v", err)
		}
		got = append(got, conn.GetConnectionId())
	}
	want := []string{"conn_0", "conn_1", "conn_2", "conn_3", "conn_4", "conn_5", "conn_6"}
	if !slices.Equal(got, want) {
		t.Errorf("ListConnections yielded %q; want %q", got, want)
	}
	if want := []string{"", "p3", "p6"}; !slices.Equal(fv.pageTokens, want) {
		t.Errorf("page tokens sent = %q; want %q", fv.pageTokens, want)
	}
	if filter.GetPageToken() != "" {
		t.Errorf("filter.page_token = %q after the loop; want it untouched", filter.GetPageToken())
	}
}

func TestClient_ListConnections_BreakStopsFetching(t *testing.T) {
	fv := newFakeVault()
	fv.conns = testConnections(7)
	c := newTestClient(t, fv)

	for range c.ListConnections(t.Context(), &tokenvaultv1.ListConnectionsRequest{PageSize: 3}) {
		break
	}
	if got := len(fv.pageTokens); got != 1 {
		t.Errorf("ListConnections calls = %d; want 1", got)
	}
}

func TestClient_ListConnections_Errors(t *testing.T) {
	tests := []struct {
		name        string
		setup       func(*fakeVault)
		wantYielded int
	}{
		{name: "second page fails", setup: func(f *fakeVault) { f.listErrPage = 2 }, wantYielded: 3},
		{name: "repeated page token", setup: func(f *fakeVault) { f.repeatToken = true }, wantYielded: 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fv := newFakeVault()
			fv.conns = testConnections(7)
			tt.setup(fv)
			c := newTestClient(t, fv)

			var yielded, errs int
			for conn, err := range c.ListConnections(t.Context(), &tokenvaultv1.ListConnectionsRequest{PageSize: 3}) {
				if err != nil {
					if conn != nil {
						t.Errorf("yielded (%v, %v); want a nil connection with the error", conn, err)
					}
					errs++
					continue
				}
				yielded++
			}
			if yielded != tt.wantYielded || errs != 1 {
				t.Errorf("yielded %d connections and %d errors; want %d and 1", yielded, errs, tt.wantYielded)
			}
		})
	}
}

func TestClient_Wrappers(t *testing.T) {
	fv := newFakeVault()
	c := newTestClient(t, fv)
	ctx := t.Context()

	u, err := c.StartConnect(ctx, &tokenvaultv1.StartConnectRequest{Owner: "u1", Provider: "slack"})
	if want := "https://slack.com/oauth/v2/authorize?state=s&owner=u1"; err != nil || u != want {
		t.Errorf("StartConnect = %q, %v; want %q, nil", u, err, want)
	}

	su, exp, err := c.CreateConnectSession(ctx, &tokenvaultv1.CreateConnectSessionRequest{Owner: "u1"})
	if err != nil || su != "https://tv.example/connect/s/tok-u1" || exp.Hour() != 12 {
		t.Errorf("CreateConnectSession = %q, %v, %v; want the page link and its expiry", su, exp, err)
	}

	conn, err := c.GetConnection(ctx, "conn_1")
	if err != nil || conn.GetConnectionId() != "conn_1" {
		t.Errorf("GetConnection(%q) = %v, %v; want conn_1", "conn_1", conn, err)
	}
	if _, err := c.GetConnection(ctx, "conn_x"); !client.IsNotConnected(err) {
		t.Errorf("GetConnection(%q) = %v; want NOT_CONNECTED", "conn_x", err)
	}

	rev, err := c.RevokeConnection(ctx, "conn_1", "user left")
	if err != nil || !rev.GetProviderRevoked() || rev.GetConnection().GetStatusReason() != "user left" {
		t.Errorf("RevokeConnection = %v, %v; want provider_revoked with reason %q", rev, err, "user left")
	}

	val, err := c.ValidateConnection(ctx, "conn_1")
	if err != nil || !val.GetLive() || val.GetConnection().GetConnectionId() != "conn_1" {
		t.Errorf("ValidateConnection(%q) = %v, %v; want live", "conn_1", val, err)
	}
	if _, err := c.ValidateConnection(ctx, "conn_x"); !client.IsNotConnected(err) {
		t.Errorf("ValidateConnection(%q) = %v; want NOT_CONNECTED", "conn_x", err)
	}

	ps, err := c.ListProviders(ctx)
	var names []string
	for _, p := range ps {
		names = append(names, p.GetName())
	}
	if want := []string{"github", "slack"}; err != nil || !slices.Equal(names, want) {
		t.Errorf("ListProviders = %q, %v; want %q, nil", names, err, want)
	}
}

func TestClient_Close(t *testing.T) {
	fv := newFakeVault()
	dialer, stop := serveFake(fv)
	t.Cleanup(stop)

	// New: the caller keeps owning the connection.
	conn, err := grpc.NewClient(bufTarget, dialer, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := client.New(conn).Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
	if _, err := client.New(conn).AccessToken(t.Context(), "conn_1"); err != nil {
		t.Errorf("AccessToken after closing a New client = %v; want the conn still open", err)
	}

	// Dial: Close closes the connection.
	c, err := client.Dial(bufTarget, client.WithDialOptions(dialer))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
	if _, err := c.AccessToken(t.Context(), "conn_1"); status.Code(err) != codes.Canceled {
		t.Errorf("AccessToken after Close = %v; want code Canceled", err)
	}
}
