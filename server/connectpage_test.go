package server_test

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/vault/audit"
)

// session creates a connect session as the application and returns its link.
func (e *env) session(req *tvv1.CreateConnectSessionRequest) string {
	e.t.Helper()
	app := tvv1.NewTokenVaultServiceClient(e.dial("app"))
	resp, err := app.CreateConnectSession(context.Background(), req)
	if err != nil {
		e.t.Fatalf("CreateConnectSession = %v", err)
	}
	return resp.Url
}

// page GETs u in browser b and returns the status and the body.
func page(t *testing.T, b *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := b.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// post submits one of the page's forms, as the browser does (same origin).
func post(t *testing.T, b *http.Client, base, path string, form url.Values) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	resp, err := b.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestCreateConnectSession_RPC(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	ctx := context.Background()
	app := tvv1.NewTokenVaultServiceClient(e.dial("app"))
	resp, err := app.CreateConnectSession(ctx, &tvv1.CreateConnectSessionRequest{Owner: "alice", Ttl: durationpb.New(15 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	tok, ok := strings.CutPrefix(resp.Url, e.http.URL+"/connect/s/")
	if !ok || len(tok) < 43 {
		t.Fatalf("url = %q; want %s/connect/s/<token>", resp.Url, e.http.URL)
	}
	if d := time.Until(resp.ExpireTime.AsTime()); d < 14*time.Minute || d > 16*time.Minute {
		t.Errorf("expire_time in %v; want 15m", d)
	}
	for name, req := range map[string]*tvv1.CreateConnectSessionRequest{
		"ttl over an hour":       {Owner: "alice", Ttl: durationpb.New(61 * time.Minute)},
		"return_to elsewhere":    {Owner: "alice", ReturnTo: "https://evil.example/"},
		"return_to dot segments": {Owner: "alice", ReturnTo: "https://app.example/done/%2e%2e/%2e%2e/logout"},
		"no owner":               {},
		"unknown provider":       {Owner: "alice", Providers: []string{"nope"}},
		"bad app_metadata":       {Owner: "alice", AppMetadata: map[string]string{"bad key": "x"}},
	} {
		if _, err := app.CreateConnectSession(ctx, req); status.Code(err) != codes.InvalidArgument && status.Code(err) != codes.NotFound {
			t.Errorf("%s: CreateConnectSession = %v; want refused", name, err)
		}
	}
	// A credential limited to other providers may not open a page for acme.
	other := tvv1.NewTokenVaultServiceClient(e.dial("app-other"))
	if _, err := other.CreateConnectSession(ctx, &tvv1.CreateConnectSessionRequest{Owner: "alice", Providers: []string{"acme"}}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("limited credential, other provider: %v; want PermissionDenied", err)
	}
	// Named none, a limited credential's page offers its providers only;
	// "app-other" may use only "other", which is not configured here.
	if _, err := other.CreateConnectSession(ctx, &tvv1.CreateConnectSessionRequest{Owner: "alice"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("limited credential, no provider configured for it: %v; want PermissionDenied", err)
	}
	acmeOnly := tvv1.NewTokenVaultServiceClient(e.dial("app-acme"))
	r2, err := acmeOnly.CreateConnectSession(ctx, &tvv1.CreateConnectSessionRequest{Owner: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if code, body := page(t, newBrowser(t), r2.Url); code != 200 || !strings.Contains(body, `value="acme"`) {
		t.Errorf("the limited credential's page = %d %q; want acme offered", code, body)
	}
	// Audited, without the token.
	e.audit.Flush(ctx)
	recs, _, err := e.audit.List(ctx, audit.Filter{}, "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if strings.HasSuffix(r.Method, "/CreateConnectSession") {
			n++
		}
		if strings.Contains(r.Caller+r.Method+r.Reason+r.ConnectionID+r.Provider, tok) {
			t.Errorf("audit record %+v holds the session token", r)
		}
	}
	if n == 0 {
		t.Error("CreateConnectSession was not audited")
	}
}

// The page over the vault, as a browser without JavaScript uses it:
// connect, needs reconnecting, reconnect (same id), disconnect (revoked at
// the provider), with the session's application metadata on the
// connection.
func TestConnectPage_OverTheVault(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	ctx := context.Background()
	link := e.session(&tvv1.CreateConnectSessionRequest{Owner: "alice", AllowDisconnect: true,
		AppMetadata: map[string]string{"crm_id": "42"}, ReturnTo: "https://app.example/done"})
	b := newBrowser(t)
	code, body := page(t, b, link)
	if code != 200 || !strings.Contains(body, "Not connected") || strings.Contains(body, link[len(e.http.URL):]) {
		t.Fatalf("page = %d %q; want the providers, not connected, without the token", code, body)
	}
	csrf := csrfRE.FindStringSubmatch(body)[1]
	// Connect: the form goes to the provider, which sends the browser to
	// the callback, which sends it back to the page with the outcome.
	resp, body := post(t, b, e.http.URL, "/connect/connect", url.Values{"csrf": {csrf}, "provider": {"acme"}})
	if resp.StatusCode != 200 || resp.Request.URL.Path != "/connect/" || resp.Request.URL.Query().Get("status") != "connected" ||
		!strings.Contains(body, "Connected</span> as") {
		t.Fatalf("after connecting: %d at %s: %q", resp.StatusCode, resp.Request.URL, body)
	}
	id := resp.Request.URL.Query().Get("connection_id")
	c, err := e.api.GetConnection(ctx, &tvv1.GetConnectionRequest{ConnectionId: id})
	if err != nil || c.Connection.Owner != "alice" || c.Connection.AppMetadata["crm_id"] != "42" || c.Connection.CreatedBy != "app" {
		t.Fatalf("connection = %v, %v; want alice's, crm_id 42 from the session, created by app", c, err)
	}
	// The grant dies at the provider; validation finds out.
	for _, g := range e.fake.Grants() {
		e.fake.RevokeGrant(g.ID)
	}
	if v, err := e.api.ValidateConnection(ctx, &tvv1.ValidateConnectionRequest{ConnectionId: id}); err != nil || v.Live {
		t.Fatalf("ValidateConnection after the grant was revoked = %v, %v; want not live", v, err)
	}
	_, body = page(t, b, e.http.URL+"/connect/")
	if !strings.Contains(body, "Needs reconnecting") {
		t.Fatalf("page after the grant died: %q; want Needs reconnecting", body)
	}
	resp, body = post(t, b, e.http.URL, "/connect/connect", url.Values{"csrf": {csrf}, "provider": {"acme"}, "connection_id": {id}})
	if q := resp.Request.URL.Query(); q.Get("status") != "reconnected" || q.Get("connection_id") != id || !strings.Contains(body, "is reconnected") {
		t.Fatalf("after reconnecting: at %s: %q; want reconnected, same id", resp.Request.URL, body)
	}
	// Disconnect needs the session's CSRF token.
	resp, _ = post(t, b, e.http.URL, "/connect/disconnect", url.Values{"csrf": {"forged"}, "connection_id": {id}})
	if resp.StatusCode != http.StatusForbidden || e.fake.Stats().Revoke != 0 {
		t.Fatalf("disconnect with a forged CSRF token = %d, %d revocations; want 403, none", resp.StatusCode, e.fake.Stats().Revoke)
	}
	resp, body = post(t, b, e.http.URL, "/connect/disconnect", url.Values{"csrf": {csrf}, "connection_id": {id}})
	if resp.Request.URL.Query().Get("status") != "disconnected" || e.fake.Stats().Revoke != 1 {
		t.Fatalf("disconnect: at %s, %d revocations: %q", resp.Request.URL, e.fake.Stats().Revoke, body)
	}
	c, _ = e.api.GetConnection(ctx, &tvv1.GetConnectionRequest{ConnectionId: id})
	if c.GetConnection().GetStatus() != tvv1.ConnectionStatus_CONNECTION_STATUS_REVOKED {
		t.Errorf("after disconnect: %v; want revoked", c)
	}
}

// A tampered, expired or foreign session gets the clear page and never
// another owner's data; a foreign owner's connection cannot be touched.
func TestConnectPage_ForeignExpiredTamperedSessions(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	id := e.connect("alice")
	alice := e.session(&tvv1.CreateConnectSessionRequest{Owner: "alice", AllowDisconnect: true, Ttl: durationpb.New(10 * time.Minute)})
	bob := e.session(&tvv1.CreateConnectSessionRequest{Owner: "bob", AllowDisconnect: true})
	tampered := alice[:len(alice)-2] + "AA"
	if strings.HasSuffix(alice, "AA") {
		tampered = alice[:len(alice)-2] + "BB"
	}
	for name, link := range map[string]string{"tampered": tampered, "unknown": e.http.URL + "/connect/s/nope"} {
		code, body := page(t, newBrowser(t), link)
		if code != http.StatusUnauthorized || !strings.Contains(body, "This link has expired") || strings.Contains(body, id) || strings.Contains(body, "alice") {
			t.Errorf("%s link = %d %q; want the clear 401 page and nothing of alice's", name, code, body)
		}
	}
	// Bob's page shows nothing of alice's and cannot disconnect her.
	bb := newBrowser(t)
	_, body := page(t, bb, bob)
	if strings.Contains(body, id) || strings.Contains(body, "Connected</span> as") {
		t.Errorf("bob's page shows alice's connection: %q", body)
	}
	csrf := csrfRE.FindStringSubmatch(body)[1]
	resp, _ := post(t, bb, e.http.URL, "/connect/disconnect", url.Values{"csrf": {csrf}, "connection_id": {id}})
	if resp.StatusCode != http.StatusNotFound || e.fake.Stats().Revoke != 0 {
		t.Errorf("bob disconnecting alice's connection = %d, %d revocations; want 404, none", resp.StatusCode, e.fake.Stats().Revoke)
	}
	resp, _ = post(t, bb, e.http.URL, "/connect/connect", url.Values{"csrf": {csrf}, "provider": {"acme"}, "connection_id": {id}})
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("bob reconnecting alice's connection = %d; want 403", resp.StatusCode)
	}
	// Expired: the page that worked is refused once the session is over.
	ab := newBrowser(t)
	if code, _ := page(t, ab, alice); code != 200 {
		t.Fatalf("alice's page = %d", code)
	}
	e.clock.Add(11 * time.Minute)
	if code, body := page(t, ab, e.http.URL+"/connect/"); code != http.StatusUnauthorized || strings.Contains(body, id) {
		t.Errorf("expired session = %d %q; want 401 and nothing of alice's", code, body)
	}
}

// A callback from another browser than the one that began the flow is
// refused with a clear page, and the provider's token endpoint is never
// called; the flow's own browser still completes it, once.
func TestCallback_OtherBrowserRefused(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	sc, err := e.api.StartConnect(context.Background(), &tvv1.StartConnectRequest{Owner: "alice", Provider: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	cb := e.authorizeOnly(sc.AuthorizationUrl) // in e.browser
	other := newBrowser(t)
	// That browser has a binding cookie of its own, from a flow it began.
	sc2, err := e.api.StartConnect(context.Background(), &tvv1.StartConnectRequest{Owner: "mallory", Provider: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	nofollow := &http.Client{Jar: other.Jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if resp, err := nofollow.Get(sc2.AuthorizationUrl); err != nil || resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("start URL in the other browser = %v, %v", resp, err)
	}
	for name, b := range map[string]*http.Client{"no cookie": http.DefaultClient, "another browser": other} {
		code, body := page(t, b, cb.String())
		if code != http.StatusForbidden || !strings.Contains(body, "started in another browser") {
			t.Errorf("%s: callback = %d %q; want the 403 page", name, code, body)
		}
	}
	if n := e.fake.Stats().Token["authorization_code"]; n != 0 {
		t.Fatalf("token requests = %d; want 0", n)
	}
	if code, err := e.browserGet(cb.String()); err != nil || code != 200 {
		t.Fatalf("callback in the flow's browser = %d, %v; want 200", code, err)
	}
	if code, _ := e.browserGet(cb.String()); code != http.StatusBadRequest {
		t.Errorf("replayed callback = %d; want 400: state is single-use", code)
	}
	// A start URL opens once.
	if code, _ := page(t, newBrowser(t), sc.AuthorizationUrl); code != http.StatusBadRequest {
		t.Errorf("start URL opened again = %d; want 400", code)
	}
}
