package providers_test

import (
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/providers"
)

func newLinear(t *testing.T, base string, opts map[string]string, scopes ...string) *providers.Linear {
	t.Helper()
	o := map[string]string{"auth_base": base, "api_base": base}
	for k, v := range opts {
		o[k] = v
	}
	p, err := providers.NewLinear(svcConfig("linear", o, scopes...))
	if err != nil {
		t.Fatalf("NewLinear: %v", err)
	}
	return p
}

func TestLinear_AuthURL(t *testing.T) {
	p := newLinear(t, "https://linear.example.test", map[string]string{"prompt": "consent"}, "read", "write", "issues:create")
	for _, tc := range []struct {
		opts  map[string]string
		actor string
	}{
		{nil, "user"},
		{map[string]string{"actor": "app"}, "app"},
	} {
		raw, err := p.AuthURL(providers.AuthRequest{State: "st", Options: tc.opts})
		if err != nil {
			t.Fatal(err)
		}
		u, _ := url.Parse(raw)
		q := u.Query()
		if u.Path != "/oauth/authorize" || q.Get("scope") != "issues:create,read,write" || q.Get("actor") != tc.actor ||
			q.Get("response_type") != "code" || q.Get("prompt") != "consent" {
			t.Errorf("AuthURL(%v) = %s", tc.opts, raw)
		}
	}
	_, err := p.AuthURL(providers.AuthRequest{State: "st", Options: map[string]string{"actor": "robot"}})
	wantClass(t, "AuthURL(actor=robot)", err, providers.ClassInvalidRequest, "invalid_option")
	if _, err := providers.NewLinear(svcConfig("linear", map[string]string{"actor": "robot"})); err == nil {
		t.Errorf("NewLinear(actor=robot) = nil error")
	}
}

// TestLinear_Exchange_ArrayScope: apps created before 2023-12-01 get the
// granted scope as a JSON array. The request must be form-encoded, and the
// workspace comes from the viewer query.
func TestLinear_Exchange_ArrayScope(t *testing.T) {
	rs := newReplay(t)
	p := newLinear(t, rs.URL, nil, "read", "write", "issues:create")
	rs.on("/oauth/token", answer(t, "linear", 200, "exchange_array_scope.json"))
	rs.on("POST /graphql", answer(t, "linear", 200, "viewer.json"))
	g, err := p.Exchange(context.Background(), providers.ExchangeRequest{Code: "c", Options: map[string]string{"actor": "app"}})
	if err != nil {
		t.Fatalf("Exchange = %v", err)
	}
	req := rs.requests("/oauth/token")[0]
	if ct := req.Header.Get("Content-Type"); ct != "application/x-www-form-urlencoded" {
		t.Errorf("token request Content-Type = %q; Linear requires a form", ct)
	}
	if f := req.Form(); f.Get("redirect_uri") == "" || f.Get("client_secret") != fakeClientSecret {
		t.Errorf("token request form = %v", f)
	}
	if want := []string{"issues:create", "read", "write"}; !slices.Equal(g.Scopes, want) {
		t.Errorf("Scopes = %q; want %q", g.Scopes, want)
	}
	gq := rs.requests("/graphql")
	var body struct{ Query string }
	if len(gq) != 1 || json.Unmarshal(gq[0].Body, &body) != nil || !strings.Contains(body.Query, "organization { id") ||
		gq[0].Header.Get("Authorization") != "Bearer lin_oauth_FAKEaccess0003" {
		t.Errorf("viewer query = %v", gq)
	}
	want := map[string]string{"actor": "app", "user_id": "00000000-fake-user-0000-000000000001",
		"organization_id": "00000000-fake-org0-0000-000000000001", "organization_url_key": "fake-org", "organization_name": "Fake Org"}
	for k, v := range want {
		if g.Metadata[k] != v {
			t.Errorf("Metadata[%q] = %q; want %q", k, g.Metadata[k], v)
		}
	}
	if g.Account != "fake-org" {
		t.Errorf("Account = %q; want the workspace's urlKey", g.Account)
	}
	if tok := mustToken(t, g, ""); !tok.Expiry.Equal(fixedNow.Add(86399 * time.Second)) {
		t.Errorf("Expiry = %v", tok.Expiry)
	}
}

func TestLinear_Exchange_ViewerRejected(t *testing.T) {
	rs := newReplay(t)
	p := newLinear(t, rs.URL, nil, "read")
	rs.on("/oauth/token", answer(t, "linear", 200, "exchange.json"))
	rs.on("POST /graphql", answer(t, "linear", 401, "viewer_unauthenticated.json"))
	rs.on("/oauth/revoke", replayed{status: 200})
	_, err := p.Exchange(context.Background(), providers.ExchangeRequest{Code: "c"})
	wantClass(t, "Exchange", err, providers.ClassInvalidRequest, "authentication_error")
	if r := rs.requests("/oauth/revoke"); len(r) != 2 || r[0].Form().Get("refresh_token") != "lin_refresh_FAKE0001" ||
		r[1].Header.Get("Authorization") != "Bearer lin_oauth_FAKEaccess0001" {
		t.Errorf("the token of a failed exchange was not revoked: %v", r)
	}
}

func TestLinear_Errors(t *testing.T) {
	ctx := context.Background()
	g := providers.Grant{Tokens: []providers.Token{{AccessToken: "a", RefreshToken: "r"}}}
	for _, tc := range []struct {
		status int
		name   string
		class  providers.Class
	}{
		{400, "refresh_rejected.json", providers.ClassReauth},
		{401, "config_error.json", providers.ClassConfig},
		{400, "config_error_nonstandard.json", providers.ClassConfig},
	} {
		rs := newReplay(t)
		p := newLinear(t, rs.URL, nil)
		rs.on("/oauth/token", answer(t, "linear", tc.status, tc.name))
		_, err := p.Refresh(ctx, g, "")
		wantClass(t, "Refresh("+tc.name+")", err, tc.class, "")
	}
	// GraphQL rate limiting comes as a 400 with a code in extensions.
	rs := newReplay(t)
	p := newLinear(t, rs.URL, nil)
	rs.on("POST /graphql", replayed{status: 400, body: []byte(`{"errors":[{"message":"Rate limit exceeded","extensions":{"code":"RATELIMITED"}}]}`)})
	wantClass(t, "Validate(ratelimited)", p.Validate(ctx, g), providers.ClassTransient, "ratelimited")
}

// TestLinear_Revoke revokes the refresh token (form field) and then the
// access token (bearer); "could not revoke" (400) counts as done.
func TestLinear_Revoke(t *testing.T) {
	rs := newReplay(t)
	p := newLinear(t, rs.URL, nil)
	rs.on("/oauth/revoke", replayed{status: 200}, replayed{status: 400})
	g := providers.Grant{Tokens: []providers.Token{{AccessToken: "lin_oauth_a", RefreshToken: "lin_refresh_r", Expiry: fixedNow.Add(time.Hour)}}}
	if err := p.Revoke(context.Background(), g); err != nil {
		t.Fatalf("Revoke = %v", err)
	}
	r := rs.requests("/oauth/revoke")
	if len(r) != 2 || r[0].Form().Get("refresh_token") != "lin_refresh_r" || r[1].Header.Get("Authorization") != "Bearer lin_oauth_a" {
		t.Errorf("revocation requests = %v", r)
	}
}
