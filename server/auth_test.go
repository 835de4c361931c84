package server_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/emptypb"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/server"
)

func TestNewAuth_Refuses(t *testing.T) {
	op := server.Access{Role: server.RoleOperator}
	long := strings.Repeat("k", 32)
	for _, tc := range []struct {
		name  string
		keys  []server.APIKey
		peers []server.Peer
		want  string
	}{
		{"short key", []server.APIKey{{Name: "a", Key: "hunter2", Access: op}}, nil, "shorter"},
		{"no name", []server.APIKey{{Key: long, Access: op}}, nil, "name"},
		{"uid name", []server.APIKey{{Name: "uid:0", Key: long, Access: op}}, nil, "uid:"},
		{"no role", []server.APIKey{{Name: "a", Key: long}}, nil, "no role"},
		{"same name", []server.APIKey{{Name: "a", Key: long, Access: op}, {Name: "a", Key: long + "x", Access: op}}, nil, "two credentials"},
		{"same key", []server.APIKey{{Name: "a", Key: long, Access: op}, {Name: "b", Key: long, Access: op}}, nil, "same key"},
		{"bad rate", []server.APIKey{{Name: "a", Key: long, Access: server.Access{Role: server.RoleOperator, RateLimit: server.RateLimit{RPS: -1}}}}, nil, "rate_limit"},
		{"same peer", nil, []server.Peer{{UID: 5, Access: op}, {UID: 5, Access: op}}, "twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := server.NewAuth(tc.keys, tc.peers)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewAuth = %v; want an error about %q", err, tc.want)
			}
			if strings.Contains(err.Error(), long) || strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the error %q contains the key", err)
			}
		})
	}
}

// TestAuth_EveryMethodIsGated calls every method the server registers:
// without a credential each fails Unauthenticated before its handler
// (health excepted), and with the operator key none is refused as missing
// from the access table.
func TestAuth_EveryMethodIsGated(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	srv := server.New(server.Config{Vault: e.v, Auth: testAuth(t)})
	anon, ops := e.dial(""), e.dial("ops")
	n := 0
	for svc, info := range srv.GRPC().GetServiceInfo() {
		for _, m := range info.Methods {
			n++
			method := "/" + svc + "/" + m.Name
			call := func(conn *grpc.ClientConn) error {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				if !m.IsClientStream && !m.IsServerStream {
					return conn.Invoke(ctx, method, &emptypb.Empty{}, &emptypb.Empty{})
				}
				st, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: m.IsServerStream, ClientStreams: m.IsClientStream}, method)
				if err != nil {
					return err
				}
				// A server that ends the stream before the message is
				// sent makes SendMsg return io.EOF; the status is
				// then RecvMsg's to report.
				if err := st.SendMsg(&emptypb.Empty{}); err != nil && err != io.EOF {
					return err
				}
				st.CloseSend()
				return st.RecvMsg(&emptypb.Empty{})
			}
			health := svc == "grpc.health.v1.Health"
			if err := call(anon); health == (status.Code(err) == codes.Unauthenticated) {
				t.Errorf("%s without a credential = %v; want Unauthenticated unless health", method, err)
			}
			if err := call(ops); status.Code(err) == codes.PermissionDenied {
				t.Errorf("%s with the operator key = %v; every served method must be in the access table", method, err)
			}
		}
	}
	if n < 12 {
		t.Errorf("only %d methods registered; want the API, admin, health and reflection", n)
	}
}

func TestAuth_Calls(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	id := e.connect("alice")
	ctx := context.Background()
	api := func(name string) tvv1.TokenVaultServiceClient { return tvv1.NewTokenVaultServiceClient(e.dial(name)) }
	admin := func(name string) tvv1.AdminServiceClient { return tvv1.NewAdminServiceClient(e.dial(name)) }
	for _, tc := range []struct {
		name       string
		call       func() error
		wantCode   codes.Code
		wantReason string
	}{
		{"no credential", func() error {
			_, err := api("").GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id})
			return err
		}, codes.Unauthenticated, "UNAUTHENTICATED"},
		{"unknown key", func() error {
			_, err := api("not-a-key").ListProviders(ctx, &tvv1.ListProvidersRequest{})
			return err
		}, codes.Unauthenticated, "UNAUTHENTICATED"},
		{"application reads a token", func() error {
			_, err := api("app").GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id})
			return err
		}, codes.OK, ""},
		{"application may not revoke", func() error {
			_, err := api("app").RevokeConnection(ctx, &tvv1.RevokeConnectionRequest{ConnectionId: id})
			return err
		}, codes.PermissionDenied, "PERMISSION_DENIED"},
		{"application may not validate", func() error {
			_, err := api("app").ValidateConnection(ctx, &tvv1.ValidateConnectionRequest{ConnectionId: id})
			return err
		}, codes.PermissionDenied, "PERMISSION_DENIED"},
		{"application may not read the audit", func() error {
			_, err := admin("app").ListAuditEvents(ctx, &tvv1.ListAuditEventsRequest{})
			return err
		}, codes.PermissionDenied, "PERMISSION_DENIED"},
		{"application may not rotate keys", func() error {
			_, err := admin("app").RotateKeys(ctx, &tvv1.RotateKeysRequest{})
			return err
		}, codes.PermissionDenied, "PERMISSION_DENIED"},
		{"limited to its provider: reads", func() error {
			_, err := api("app-acme").GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id})
			return err
		}, codes.OK, ""},
		{"limited to another provider: the connection does not exist", func() error {
			_, err := api("app-other").GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id})
			return err
		}, codes.NotFound, "NOT_CONNECTED"},
		{"limited to another provider: GetConnection", func() error {
			_, err := api("app-other").GetConnection(ctx, &tvv1.GetConnectionRequest{ConnectionId: id})
			return err
		}, codes.NotFound, "NOT_CONNECTED"},
		{"limited operator may not revoke others' connections", func() error {
			_, err := api("ops-other").RevokeConnection(ctx, &tvv1.RevokeConnectionRequest{ConnectionId: id})
			return err
		}, codes.NotFound, "NOT_CONNECTED"},
		{"limited to another provider: StartConnect", func() error {
			_, err := api("app-other").StartConnect(ctx, &tvv1.StartConnectRequest{Owner: "bob", Provider: "acme"})
			return err
		}, codes.PermissionDenied, "PERMISSION_DENIED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if status.Code(err) != tc.wantCode || reason(err) != tc.wantReason {
				t.Errorf("= %v (reason %q); want %v/%q", err, reason(err), tc.wantCode, tc.wantReason)
			}
		})
	}
	// Health stays open for kubelet probes.
	if _, err := healthpb.NewHealthClient(e.dial("")).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health without a credential = %v; want OK", err)
	}
}

func TestAuth_ProviderLimit_FiltersListings(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	e.connect("alice")
	e.connect("bob")
	ctx := context.Background()
	for _, tc := range []struct {
		key             string
		conns, provs    int
		providerRequest string
	}{
		{"app", 2, 1, ""},
		{"app-acme", 2, 1, ""},
		{"app-other", 0, 0, ""},
		{"app-other", 0, 0, "acme"},
	} {
		api := tvv1.NewTokenVaultServiceClient(e.dial(tc.key))
		l, err := api.ListConnections(ctx, &tvv1.ListConnectionsRequest{Provider: tc.providerRequest})
		if err != nil || len(l.Connections) != tc.conns || l.NextPageToken != "" {
			t.Errorf("%s: ListConnections(provider %q) = %d connections, %v; want %d", tc.key, tc.providerRequest, len(l.GetConnections()), err, tc.conns)
		}
		p, err := api.ListProviders(ctx, &tvv1.ListProvidersRequest{})
		if err != nil || len(p.Providers) != tc.provs {
			t.Errorf("%s: ListProviders = %d providers, %v; want %d", tc.key, len(p.GetProviders()), err, tc.provs)
		}
	}
	// Paging with a limited key still sees everything, one page at a time.
	api := tvv1.NewTokenVaultServiceClient(e.dial("app-acme"))
	seen := 0
	req := &tvv1.ListConnectionsRequest{PageSize: 1}
	for range 5 {
		l, err := api.ListConnections(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		seen += len(l.Connections)
		if l.NextPageToken == "" {
			break
		}
		req.PageToken = l.NextPageToken
	}
	if seen != 2 {
		t.Errorf("paged through %d connections; want 2", seen)
	}
}

func TestAuth_RateLimit(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	api := tvv1.NewTokenVaultServiceClient(e.dial("app-slow")) // 1 rps, burst 2
	ctx := context.Background()
	for i := range 2 {
		if _, err := api.ListProviders(ctx, &tvv1.ListProvidersRequest{}); err != nil {
			t.Fatalf("call %d within the burst = %v", i+1, err)
		}
	}
	_, err := api.ListProviders(ctx, &tvv1.ListProvidersRequest{})
	st, _ := status.FromError(err)
	if st.Code() != codes.ResourceExhausted || reason(err) != "RATE_LIMITED" {
		t.Fatalf("call past the burst = %v; want ResourceExhausted/RATE_LIMITED", err)
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.Metadata["retry_after_seconds"] != "1" {
			t.Errorf("retry_after_seconds = %q; want 1", ei.Metadata["retry_after_seconds"])
		}
	}
	// Other callers are not affected; after a second there is a token again.
	if _, err := tvv1.NewTokenVaultServiceClient(e.dial("app")).ListProviders(ctx, &tvv1.ListProvidersRequest{}); err != nil {
		t.Errorf("another caller = %v", err)
	}
	e.clock.Add(time.Second)
	if _, err := api.ListProviders(ctx, &tvv1.ListProvidersRequest{}); err != nil {
		t.Errorf("after a second = %v; want OK", err)
	}
}

func TestAuth_UnixSocketPeer(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("SO_PEERCRED is Linux-only")
	}
	e := newEnv(t, providertest.Options{})
	id := e.connect("alice")
	uid := uint32(os.Getuid())
	for _, tc := range []struct {
		name     string
		peers    []server.Peer
		wantCode codes.Code
	}{
		{"our uid is an application", []server.Peer{{UID: uid, Access: server.Access{Role: server.RoleApplication}}}, codes.OK},
		{"only another uid is listed", []server.Peer{{UID: uid + 1, Access: server.Access{Role: server.RoleOperator}}}, codes.Unauthenticated},
		{"our uid, limited to another provider", []server.Peer{{UID: uid, Access: server.Access{Role: server.RoleApplication, Providers: []string{"other"}}}}, codes.NotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			auth, err := server.NewAuth(nil, tc.peers)
			if err != nil {
				t.Fatal(err)
			}
			srv := server.New(server.Config{Vault: e.v, Auth: auth})
			sock := filepath.Join(shortTempDir(t), "tv.sock")
			l, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			go srv.GRPC().Serve(l)
			defer srv.GRPC().Stop()
			conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_, err = tvv1.NewTokenVaultServiceClient(conn).GetAccessToken(context.Background(), &tvv1.GetAccessTokenRequest{ConnectionId: id})
			if status.Code(err) != tc.wantCode {
				t.Errorf("GetAccessToken over the socket = %v; want %v", err, tc.wantCode)
			}
		})
	}
}

func TestAudit_RecordsCallsWithoutSecrets(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	id := e.connect("alice")
	ctx := context.Background()
	app := tvv1.NewTokenVaultServiceClient(e.dial("app"))
	tok, err := app.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id})
	if err != nil {
		t.Fatal(err)
	}
	app.RevokeConnection(ctx, &tvv1.RevokeConnectionRequest{ConnectionId: id}) // denied
	if _, err := e.api.RevokeConnection(ctx, &tvv1.RevokeConnectionRequest{ConnectionId: id, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	app.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id}) // now NOT_CONNECTED
	app.ListProviders(ctx, &tvv1.ListProvidersRequest{})                   // an application read: not audited

	resp, err := e.admin.ListAuditEvents(ctx, &tvv1.ListAuditEventsRequest{ConnectionId: id})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range resp.Events {
		got = append(got, strings.Join([]string{ev.Caller, ev.Role, ev.Method, ev.Provider, ev.Outcome, ev.Reason}, " "))
		if ev.ConnectionId != id || ev.AuditId == "" || ev.Time == nil {
			t.Errorf("event %+v: want connection %s, an id and a time", ev, id)
		}
		if strings.Contains(ev.String(), tok.AccessToken) {
			t.Error("an audit event holds the access token")
		}
	}
	want := []string{ // newest first
		"app application /tokenvault.v1.TokenVaultService/GetAccessToken acme FAILED_PRECONDITION NOT_CONNECTED",
		"ops operator /tokenvault.v1.TokenVaultService/RevokeConnection acme OK ",
		"app application /tokenvault.v1.TokenVaultService/RevokeConnection  PERMISSION_DENIED PERMISSION_DENIED",
		"app application /tokenvault.v1.TokenVaultService/GetAccessToken acme OK ",
		"  http:callback acme OK CONNECTED",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("audit of %s:\n%s\nwant:\n%s", id, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The denied revoke names its connection (above), and is found by
	// caller too.
	denied, err := e.admin.ListAuditEvents(ctx, &tvv1.ListAuditEventsRequest{Caller: "app", Method: "/tokenvault.v1.TokenVaultService/RevokeConnection"})
	if err != nil || len(denied.Events) != 1 || denied.Events[0].Outcome != "PERMISSION_DENIED" || denied.Events[0].Reason != "PERMISSION_DENIED" {
		t.Errorf("denied revoke in the audit = %v, %v; want one PERMISSION_DENIED", denied, err)
	}
	// Operator calls are audited, whatever they are; paging works.
	page, err := e.admin.ListAuditEvents(ctx, &tvv1.ListAuditEventsRequest{Caller: "ops", PageSize: 1})
	if err != nil || len(page.Events) != 1 || page.NextPageToken == "" {
		t.Fatalf("first page of ops = %v, %v; want 1 event and a next page", page, err)
	}
	if page.Events[0].Method != "/tokenvault.v1.AdminService/ListAuditEvents" {
		t.Errorf("newest ops event = %s; want the ListAuditEvents call before it", page.Events[0].Method)
	}
}

func TestAudit_CallbackFailuresAndReconnect(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	resp, err := httpGet(e.http.URL + "/oauth/callback/acme?state=forged&code=x")
	if err != nil || resp != 400 {
		t.Fatalf("forged callback = %d, %v", resp, err)
	}
	id := e.connect("alice")
	for _, g := range e.fake.Grants() {
		e.fake.RevokeGrant(g.ID)
	}
	e.clock.Add(time.Minute)
	e.api.GetAccessToken(context.Background(), &tvv1.GetAccessTokenRequest{ConnectionId: id, ForceRefresh: true}) // -> needs_reauth
	e.connect("alice")                                                                                            // reconnect
	r, err := e.admin.ListAuditEvents(context.Background(), &tvv1.ListAuditEventsRequest{Method: "http:callback"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range r.Events {
		got = append(got, ev.Outcome+" "+ev.Reason+" "+ev.ConnectionId)
	}
	want := []string{"OK RECONNECTED " + id, "OK CONNECTED " + id, "INVALID_ARGUMENT INVALID_STATE "}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("callback audit = %q; want %q", got, want)
	}
}

func TestAudit_NotConfigured(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	srv := server.New(server.Config{Vault: e.v, Auth: testAuth(t)})
	lis := bufListen(t, srv)
	_, err := tvv1.NewAdminServiceClient(lis("ops")).ListAuditEvents(context.Background(), &tvv1.ListAuditEventsRequest{})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("ListAuditEvents without an audit log = %v; want FailedPrecondition", err)
	}
}

// bufListen serves srv on a bufconn of its own and returns a dialer that
// presents the named key.
func bufListen(t *testing.T, srv *server.Server) func(key string) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 16)
	go srv.GRPC().Serve(lis)
	t.Cleanup(srv.GRPC().Stop)
	return func(key string) *grpc.ClientConn {
		conn, err := grpc.NewClient("passthrough:///bufnet",
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithPerRPCCredentials(bearerCreds(testKeys[key])))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
}

// browserGet is httpGet in the env's browser (its cookies).
func (e *env) browserGet(url string) (int, error) {
	resp, err := e.browser.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func httpGet(url string) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// shortTempDir is a temporary directory with a short path: a unix socket's
// path must fit in 108 bytes, which t.TempDir's may not.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
