package providers_test

import (
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/providers"
)

func newGitHub(t *testing.T, base string, scopes ...string) *providers.GitHub {
	t.Helper()
	p, err := providers.NewGitHub(svcConfig("github", map[string]string{"auth_base": base, "api_base": base + "/api"}, scopes...))
	if err != nil {
		t.Fatalf("NewGitHub: %v", err)
	}
	return p
}

const githubToken = "/login/oauth/access_token"

func TestGitHub_AuthURL(t *testing.T) {
	p := newGitHub(t, "https://github.example.test", "repo", "read:org")
	raw, err := p.AuthURL(providers.AuthRequest{State: "st", Options: map[string]string{"login": "octocat-fake", "prompt": "select_account"}})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(raw)
	q := u.Query()
	if u.Path != "/login/oauth/authorize" || q.Get("scope") != "read:org repo" || q.Get("login") != "octocat-fake" ||
		q.Get("prompt") != "select_account" || q.Has("allow_signup") {
		t.Errorf("AuthURL = %s", raw)
	}
}

// TestGitHub_Exchange_App is a GitHub App user token: it expires in 8 h,
// with a 6-month refresh token, scope "" and the identity from /user.
func TestGitHub_Exchange_App(t *testing.T) {
	rs := newReplay(t)
	p := newGitHub(t, rs.URL)
	rs.on(githubToken, answer(t, "github", 200, "exchange.json"))
	rs.on("GET /api/user", answer(t, "github", 200, "user.json"))
	g, err := p.Exchange(context.Background(), providers.ExchangeRequest{Code: "c"})
	if err != nil {
		t.Fatalf("Exchange = %v", err)
	}
	req := rs.requests(githubToken)[0]
	if req.Header.Get("Accept") != "application/json" {
		t.Errorf("token request Accept = %q; want application/json", req.Header.Get("Accept"))
	}
	if f := req.Form(); f.Get("client_id") != fakeClientID || f.Get("client_secret") != fakeClientSecret || req.Header.Get("Authorization") != "" {
		t.Errorf("token request: want client credentials in the body only")
	}
	if u := rs.requests("/api/user"); len(u) != 1 || u[0].Header.Get("Authorization") != "Bearer ghu_FAKEgithubAppUserAccess0001" {
		t.Errorf("GET /user = %v; want one call with the new token", u)
	}
	tok := mustToken(t, g, "")
	if !tok.Expiry.Equal(fixedNow.Add(8*time.Hour)) || !tok.RefreshExpiry.Equal(fixedNow.Add(15811200*time.Second)) ||
		tok.RefreshToken != "ghr_FAKEgithubAppRefresh0001" || tok.TokenType != "Bearer" {
		t.Errorf("token = %+v", tok)
	}
	if g.Account != "octocat-fake" || g.Metadata["user_id"] != "1000001" || g.Metadata["login"] != "octocat-fake" || g.Metadata["app_type"] != "github_app" {
		t.Errorf("Account = %q, Metadata = %v", g.Account, g.Metadata)
	}
	if len(g.Scopes) != 0 {
		t.Errorf("Scopes = %q; a GitHub App token has none", g.Scopes)
	}
}

// TestGitHub_Exchange_Form reads GitHub's default form-encoded answer (an
// OAuth App token: no expiry, comma-separated scopes).
func TestGitHub_Exchange_Form(t *testing.T) {
	rs := newReplay(t)
	p := newGitHub(t, rs.URL, "repo", "gist")
	rs.on(githubToken, replayed{status: 200, header: map[string]string{"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
		body: fixture(t, "github", "exchange_form.txt")})
	rs.on("GET /api/user", answer(t, "github", 200, "user.json"))
	g, err := p.Exchange(context.Background(), providers.ExchangeRequest{Code: "c", Scopes: []string{"repo", "gist"}})
	if err != nil {
		t.Fatalf("Exchange = %v", err)
	}
	tok := mustToken(t, g, "")
	if tok.AccessToken != "gho_FAKEoauthAppAccess0002" || !tok.Expiry.IsZero() || tok.RefreshToken != "" {
		t.Errorf("token = %+v; want a non-expiring OAuth App token", tok)
	}
	if !slices.Equal(g.Scopes, []string{"gist", "repo"}) || g.Metadata["app_type"] != "oauth_app" {
		t.Errorf("Scopes = %q, Metadata = %v", g.Scopes, g.Metadata)
	}
	_, err = p.Refresh(context.Background(), g, "")
	wantClass(t, "Refresh(OAuth App token)", err, providers.ClassReauth, "no_refresh_token")
}

// TestGitHub_Errors: GitHub answers token-endpoint errors with HTTP 200,
// as JSON or (without Accept) as a form.
func TestGitHub_Errors(t *testing.T) {
	ctx := context.Background()
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	for _, tc := range []struct {
		name   string
		op     string
		status int
		header map[string]string
		body   string
		class  providers.Class
		code   string
	}{
		{"bad code json", "exchange", 200, nil, `{"error":"bad_verification_code"}`, providers.ClassInvalidRequest, "bad_verification_code"},
		{"bad code form", "exchange", 200, form, `error=bad_verification_code&error_description=The+code+passed+is+incorrect`, providers.ClassInvalidRequest, "bad_verification_code"},
		{"bad refresh json", "refresh", 200, nil, `{"error":"bad_refresh_token"}`, providers.ClassReauth, "bad_refresh_token"},
		{"bad refresh form", "refresh", 200, form, string(fixture(t, "github", "refresh_rejected_form.txt")), providers.ClassReauth, "bad_refresh_token"},
		{"client creds", "refresh", 200, nil, `{"error":"incorrect_client_credentials"}`, providers.ClassConfig, "incorrect_client_credentials"},
		{"redirect mismatch", "exchange", 200, nil, `{"error":"redirect_uri_mismatch"}`, providers.ClassConfig, "redirect_uri_mismatch"},
		{"unverified email", "exchange", 200, nil, `{"error":"unverified_user_email"}`, providers.ClassInvalidRequest, "unverified_user_email"},
		{"unverified email refresh", "refresh", 200, nil, `{"error":"unverified_user_email"}`, providers.ClassReauth, "unverified_user_email"},
		{"secondary rate limit", "refresh", 403, map[string]string{"Retry-After": "60"}, string(fixture(t, "github", "rate_limited.json")), providers.ClassTransient, "rate_limited"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := newReplay(t)
			p := newGitHub(t, rs.URL)
			rs.on(githubToken, replayed{status: tc.status, header: tc.header, body: []byte(tc.body)})
			var err error
			if tc.op == "exchange" {
				_, err = p.Exchange(ctx, providers.ExchangeRequest{Code: "c"})
			} else {
				_, err = p.Refresh(ctx, providers.Grant{Tokens: []providers.Token{{AccessToken: "ghu_a", RefreshToken: "ghr_r"}}}, "")
			}
			wantClass(t, tc.op, err, tc.class, tc.code)
			if len(rs.requests("/api/user")) != 0 {
				t.Errorf("a failed exchange asked for the user")
			}
		})
	}
}

func TestGitHub_RateLimitReset(t *testing.T) {
	rs := newReplay(t)
	p := newGitHub(t, rs.URL)
	reset := strconv.FormatInt(fixedNow.Add(90*time.Second).Unix(), 10)
	rs.on("POST /api/applications/fake-client-id/token", replayed{status: 403,
		header: map[string]string{"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}, body: fixture(t, "github", "rate_limited.json")})
	err := p.Validate(context.Background(), providers.Grant{Tokens: []providers.Token{{AccessToken: "gho_a"}}})
	if pe := wantClass(t, "Validate", err, providers.ClassTransient, "rate_limited"); pe.RetryAfter != 90*time.Second {
		t.Errorf("RetryAfter = %v; want 90s (x-ratelimit-reset)", pe.RetryAfter)
	}
}

func TestGitHub_Revoke(t *testing.T) {
	ctx := context.Background()
	g := providers.Grant{Tokens: []providers.Token{{AccessToken: "gho_FAKEoauthAppAccess0001"}}}
	for _, tc := range []struct {
		status int
		class  providers.Class // -1: success
	}{
		{204, -1},
		{404, -1}, // unknown token: already revoked
		{401, providers.ClassConfig},
		{500, providers.ClassTransient},
	} {
		rs := newReplay(t)
		p := newGitHub(t, rs.URL)
		rs.on("DELETE /api/applications/fake-client-id/grant", replayed{status: tc.status})
		err := p.Revoke(ctx, g)
		if tc.class < 0 {
			if err != nil {
				t.Errorf("Revoke(%d) = %v; want nil", tc.status, err)
			}
		} else {
			wantClass(t, "Revoke("+strconv.Itoa(tc.status)+")", err, tc.class, "")
		}
		r := rs.requests("/api/applications/fake-client-id/grant")
		if len(r) != 1 {
			t.Fatalf("revocation requests = %d; want 1", len(r))
		}
		var body map[string]string
		if id, secret, ok := basicAuth(r[0]); !ok || id != fakeClientID || secret != fakeClientSecret {
			t.Errorf("revocation: want HTTP Basic with the client's credentials")
		}
		if json.Unmarshal(r[0].Body, &body) != nil || body["access_token"] != "gho_FAKEoauthAppAccess0001" {
			t.Errorf("revocation body = %s", r[0].Body)
		}
	}
}

// TestGitHub_Exchange_UserFails: without an identity the connection is not
// made, and the token just issued is deleted rather than left behind.
func TestGitHub_Exchange_UserFails(t *testing.T) {
	rs := newReplay(t)
	p := newGitHub(t, rs.URL)
	rs.on(githubToken, answer(t, "github", 200, "exchange.json"))
	rs.on("GET /api/user", replayed{status: 502, body: []byte("bad gateway")})
	rs.on("DELETE /api/applications/fake-client-id/token", replayed{status: 204})
	_, err := p.Exchange(context.Background(), providers.ExchangeRequest{Code: "c"})
	wantClass(t, "Exchange", err, providers.ClassTransient, "")
	if r := rs.requests("/api/applications/fake-client-id/token"); len(r) != 1 || r[0].Method != "DELETE" {
		t.Errorf("the orphan token was not deleted: %v", r)
	}
}
