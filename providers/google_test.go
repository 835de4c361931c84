package providers_test

import (
	"context"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/providers"
)

const gcal = "https://www.googleapis.com/auth/calendar.readonly"

func newGoogle(t *testing.T, base string, opts map[string]string) *providers.Google {
	t.Helper()
	o := map[string]string{"auth_base": base, "api_base": base}
	for k, v := range opts {
		o[k] = v
	}
	p, err := providers.NewGoogle(svcConfig("google", o, "openid", "email", gcal))
	if err != nil {
		t.Fatalf("NewGoogle: %v", err)
	}
	return p
}

func TestGoogle_AuthURL(t *testing.T) {
	p := newGoogle(t, "https://accounts.example.test", nil)
	raw, err := p.AuthURL(providers.AuthRequest{State: "st", Options: map[string]string{"login_hint": "alice@example.test"}})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(raw)
	q := u.Query()
	for k, want := range map[string]string{
		"access_type": "offline", "prompt": "consent", "include_granted_scopes": "true", "response_type": "code",
		"scope": "email " + gcal + " openid", "login_hint": "alice@example.test",
	} {
		if q.Get(k) != want {
			t.Errorf("AuthURL %s = %q; want %q", k, q.Get(k), want)
		}
	}
	if u.Path != "/o/oauth2/v2/auth" {
		t.Errorf("AuthURL path = %q", u.Path)
	}
	p2 := newGoogle(t, "https://accounts.example.test", map[string]string{"include_granted_scopes": "false", "prompt": "select_account consent"})
	raw, _ = p2.AuthURL(providers.AuthRequest{State: "st"})
	if q, _ := url.ParseQuery(raw[len("https://accounts.example.test/o/oauth2/v2/auth?"):]); q.Has("include_granted_scopes") || q.Get("prompt") != "select_account consent" {
		t.Errorf("AuthURL with options = %s", raw)
	}
}

func TestGoogle_Exchange_IDToken(t *testing.T) {
	rs := newReplay(t)
	p := newGoogle(t, rs.URL, nil)
	rs.on("/token", answer(t, "google", 200, "exchange.json"))
	g, err := p.Exchange(context.Background(), providers.ExchangeRequest{Code: "c", Scopes: []string{"openid", "email", gcal}})
	if err != nil {
		t.Fatalf("Exchange = %v", err)
	}
	if f := rs.requests("/token")[0].Form(); f.Get("client_secret") != fakeClientSecret {
		t.Errorf("token request: want the client credentials in the body")
	}
	if g.Metadata["sub"] != "110000000000000000001" || g.Metadata["email"] != "alice@example.test" ||
		g.Metadata["email_verified"] != "true" || g.Metadata["hd"] != "example.test" || g.Account != "alice@example.test" {
		t.Errorf("Account = %q, Metadata = %v", g.Account, g.Metadata)
	}
	if g.Secrets["id_token"] == "" {
		t.Errorf("the id token was not kept as a secret")
	}
	// "email" was asked for; Google answers with its URL. Both count.
	for _, sc := range []string{"email", "https://www.googleapis.com/auth/userinfo.email", "openid", gcal} {
		if !slices.Contains(g.Scopes, sc) {
			t.Errorf("Scopes = %q; want %q", g.Scopes, sc)
		}
	}
}

// TestGoogle_Exchange_GranularConsent: the user unchecked a scope; the
// grant says what was granted, not what was asked.
func TestGoogle_Exchange_GranularConsent(t *testing.T) {
	rs := newReplay(t)
	p := newGoogle(t, rs.URL, nil)
	rs.on("/token", answer(t, "google", 200, "exchange_partial.json"))
	g, err := p.Exchange(context.Background(), providers.ExchangeRequest{Code: "c", Scopes: []string{"openid", "email", gcal}})
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(g.Scopes, gcal) || !slices.Contains(g.Scopes, "email") {
		t.Errorf("Scopes = %q; want email granted and calendar not", g.Scopes)
	}
}

// TestGoogle_Refresh_KeepsRefreshToken: Google's refresh answer has no
// refresh_token; the stored one stays.
func TestGoogle_Refresh_KeepsRefreshToken(t *testing.T) {
	rs := newReplay(t)
	p := newGoogle(t, rs.URL, nil)
	rs.on("/token", answer(t, "google", 200, "refresh.json"))
	old := providers.Grant{
		Tokens:   []providers.Token{{AccessToken: "ya29.old", RefreshToken: "1//FAKE-refresh-0", RefreshExpiry: fixedNow.Add(7 * 24 * time.Hour)}},
		Metadata: map[string]string{"sub": "1"}, Secrets: map[string]string{"id_token": "x.y.z"},
	}
	g, err := p.Refresh(context.Background(), old, "")
	if err != nil {
		t.Fatal(err)
	}
	tok := mustToken(t, g, "")
	if tok.AccessToken != "ya29.FAKE-access-2" || tok.RefreshToken != "1//FAKE-refresh-0" || !tok.RefreshExpiry.Equal(old.Tokens[0].RefreshExpiry) {
		t.Errorf("token = %+v; want the new access token and the old refresh token", tok)
	}
	if !tok.Expiry.Equal(fixedNow.Add(3599*time.Second)) || g.Metadata["sub"] != "1" || g.Secrets["id_token"] != "x.y.z" {
		t.Errorf("Refresh lost the expiry, metadata or secrets: %+v", g)
	}
}

func TestGoogle_Errors(t *testing.T) {
	ctx := context.Background()
	g := providers.Grant{Tokens: []providers.Token{{AccessToken: "a", RefreshToken: "r"}}}
	for _, tc := range []struct {
		status int
		body   string
		class  providers.Class
		code   string
	}{
		{400, string(fixture(t, "google", "refresh_rejected.json")), providers.ClassReauth, "invalid_grant"},
		{400, string(fixture(t, "google", "refresh_rapt.json")), providers.ClassReauth, "invalid_grant"},
		{400, string(fixture(t, "google", "admin_policy.json")), providers.ClassReauth, "admin_policy_enforced"},
		{401, string(fixture(t, "google", "config_error.json")), providers.ClassConfig, "invalid_client"},
		{400, `{"error":"unauthorized_client"}`, providers.ClassConfig, "unauthorized_client"},
		{400, `{"error":"deleted_client"}`, providers.ClassConfig, "deleted_client"},
		{503, `{"error":"temporarily_unavailable"}`, providers.ClassTransient, "temporarily_unavailable"},
	} {
		rs := newReplay(t)
		p := newGoogle(t, rs.URL, nil)
		rs.on("/token", replayed{status: tc.status, body: []byte(tc.body)})
		_, err := p.Refresh(ctx, g, "")
		wantClass(t, "Refresh("+tc.body+")", err, tc.class, tc.code)
	}
}

func TestGoogle_Revoke(t *testing.T) {
	rs := newReplay(t)
	p := newGoogle(t, rs.URL, nil)
	rs.on("/revoke", answer(t, "google", 400, "revoke_invalid.json"))
	g := providers.Grant{Tokens: []providers.Token{{AccessToken: "ya29.a", RefreshToken: "1//r"}}}
	if err := p.Revoke(context.Background(), g); err != nil {
		t.Errorf("Revoke(already revoked) = %v; want nil", err)
	}
	if r := rs.requests("/revoke"); len(r) != 1 || r[0].Form().Get("token") != "1//r" {
		t.Errorf("revocation = %v; want the refresh token posted", r)
	}
}

func TestGoogle_Validate_Audience(t *testing.T) {
	rs := newReplay(t)
	p := newGoogle(t, rs.URL, nil)
	rs.on("/tokeninfo", replayed{status: 200, body: []byte(`{"aud":"someone-else","azp":"someone-else","expires_in":"100"}`)})
	err := p.Validate(context.Background(), providers.Grant{Tokens: []providers.Token{{AccessToken: "ya29.a"}}})
	wantClass(t, "Validate", err, providers.ClassConfig, "audience_mismatch")
	if r := rs.requests("/tokeninfo"); len(r) != 1 || r[0].Method != "POST" || r[0].Query.Has("access_token") {
		t.Errorf("tokeninfo request = %v; want the token in a POST body, not the URL", r)
	}
}

func TestGoogle_Exchange_MalformedIDToken(t *testing.T) {
	rs := newReplay(t)
	p := newGoogle(t, rs.URL, nil)
	rs.on("/token", replayed{status: 200, body: []byte(`{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer","id_token":"not-a-jwt"}`)})
	g, err := p.Exchange(context.Background(), providers.ExchangeRequest{Code: "c"})
	if err != nil {
		t.Fatalf("Exchange = %v; a bad id token costs the identity, not the grant", err)
	}
	if g.Account != "" || g.Metadata["sub"] != "" {
		t.Errorf("identity from a malformed id token: %q %v", g.Account, g.Metadata)
	}
}
