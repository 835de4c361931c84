package providers_test

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/providers"
)

func newSlack(t *testing.T, base string, edit func(*providers.ServiceConfig)) *providers.Slack {
	t.Helper()
	cfg := svcConfig("slack", map[string]string{"auth_base": base, "api_base": base + "/api", "user_scopes": "search:read"},
		"chat:write", "channels:read", "incoming-webhook")
	if edit != nil {
		edit(&cfg)
	}
	p, err := providers.NewSlack(cfg)
	if err != nil {
		t.Fatalf("NewSlack: %v", err)
	}
	return p
}

func TestSlack_AuthURL(t *testing.T) {
	p := newSlack(t, "https://slack.example.test", func(c *providers.ServiceConfig) { c.PKCE = true })
	if got, want := p.Info().DefaultScopes, []string{"channels:read", "chat:write", "incoming-webhook", "user:search:read"}; !slices.Equal(got, want) {
		t.Errorf("DefaultScopes = %q; want %q", got, want)
	}
	verifier := strings.Repeat("v", 43)
	for _, tc := range []struct {
		name             string
		scopes           []string
		opts             map[string]string
		scope, userScope string
		team             string
	}{
		{"defaults", nil, nil, "channels:read,chat:write,incoming-webhook", "search:read", ""},
		{"bot only", []string{"chat:write"}, nil, "chat:write", "", ""},
		{"user only", []string{"user:search:read", "user:users:read"}, nil, "", "search:read,users:read", ""},
		{"mixed and team", []string{"chat:write,user:users:read"}, map[string]string{"team": "T0FAKETEAM"}, "chat:write", "users:read", "T0FAKETEAM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := p.AuthURL(providers.AuthRequest{State: "st", Verifier: verifier, Scopes: tc.scopes, Options: tc.opts})
			if err != nil {
				t.Fatalf("AuthURL = %v", err)
			}
			u, _ := url.Parse(raw)
			q := u.Query()
			if u.Path != "/oauth/v2/authorize" || q.Get("scope") != tc.scope || q.Get("user_scope") != tc.userScope || q.Get("team") != tc.team {
				t.Errorf("AuthURL = %s; want scope %q, user_scope %q, team %q", raw, tc.scope, tc.userScope, tc.team)
			}
			if q.Get("client_id") != fakeClientID || q.Get("state") != "st" || q.Get("redirect_uri") != fakeRedirect+"slack" ||
				q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" {
				t.Errorf("AuthURL = %s; missing standard parameters", raw)
			}
		})
	}
	p2 := newSlack(t, "https://slack.example.test", func(c *providers.ServiceConfig) { c.Scopes = nil; c.Options["user_scopes"] = "" })
	_, err := p2.AuthURL(providers.AuthRequest{State: "st"})
	wantClass(t, "AuthURL(no scopes)", err, providers.ClassInvalidRequest, "no_scopes")
}

func TestSlack_Exchange_BotAndUser(t *testing.T) {
	rs := newReplay(t)
	p := newSlack(t, rs.URL, nil)
	rs.on("/api/oauth.v2.access", answer(t, "slack", 200, "exchange.json"))
	g, err := p.Exchange(context.Background(), providers.ExchangeRequest{Code: "c"})
	if err != nil {
		t.Fatalf("Exchange = %v", err)
	}
	req := rs.requests("/api/oauth.v2.access")[0]
	if id, secret, ok := basicAuth(req); !ok || id != fakeClientID || secret != fakeClientSecret {
		t.Errorf("token request: want the client in HTTP Basic")
	}
	if f := req.Form(); f.Has("client_secret") {
		t.Errorf("token request sent client_secret in the body")
	}
	bot, _ := g.Token("")
	user, ok := g.Token("user")
	if bot.AccessToken != "xoxe.xoxb-1-FAKE-bot-access-1" || bot.RefreshToken != "xoxe-1-FAKE-bot-refresh-1" || bot.TokenType != "Bearer" ||
		!bot.Expiry.Equal(fixedNow.Add(12*time.Hour)) || !slices.Equal(bot.Scopes, []string{"channels:read", "chat:write", "incoming-webhook"}) {
		t.Errorf("bot token = %+v", bot)
	}
	if !ok || user.AccessToken != "xoxe.xoxp-1-FAKE-user-access-1" || user.RefreshToken != "xoxe-1-FAKE-user-refresh-1" ||
		user.TokenType != "Bearer" || !slices.Equal(user.Scopes, []string{"search:read"}) {
		t.Errorf("user token = %+v, %v", user, ok)
	}
	if want := []string{"channels:read", "chat:write", "incoming-webhook", "user:search:read"}; !slices.Equal(g.Scopes, want) {
		t.Errorf("Scopes = %q; want %q", g.Scopes, want)
	}
	for k, want := range map[string]string{
		"team_id": "T0FAKETEAM", "team_name": "Fake Team", "app_id": "A0FAKEAPP", "bot_user_id": "U0FAKEBOT",
		"authed_user_id": "U0FAKEUSER", "primary_token": "bot", "is_enterprise_install": "false",
		"incoming_webhook_channel_id": "C0FAKECHAN",
	} {
		if g.Metadata[k] != want {
			t.Errorf("Metadata[%q] = %q; want %q", k, g.Metadata[k], want)
		}
	}
	if g.Account != "T0FAKETEAM" {
		t.Errorf("Account = %q; want the team id", g.Account)
	}
	hook := "https://hooks.slack.com/services/T0FAKETEAM/B0FAKEHOOK/FAKEwebhookSECRET"
	if g.Secrets["incoming_webhook_url"] != hook {
		t.Errorf("Secrets[incoming_webhook_url] = %q; want the webhook URL", g.Secrets["incoming_webhook_url"])
	}
	for k, v := range g.Metadata {
		if strings.Contains(v, "hooks.slack.com") || strings.Contains(v, "xox") {
			t.Errorf("Metadata[%q] holds a secret", k)
		}
	}
}

func TestSlack_Exchange_UserOnly(t *testing.T) {
	rs := newReplay(t)
	p := newSlack(t, rs.URL, nil)
	rs.on("/api/oauth.v2.access", answer(t, "slack", 200, "exchange_user_only.json"))
	g, err := p.Exchange(context.Background(), providers.ExchangeRequest{Code: "c", Scopes: []string{"user:search:read", "user:users:read"}})
	if err != nil {
		t.Fatalf("Exchange(user-only install) = %v; want a grant", err)
	}
	if n := len(rs.requests("/api/oauth.v2.access")); n != 1 {
		t.Errorf("the code was sent %d times; want once", n)
	}
	if len(g.Tokens) != 1 {
		t.Fatalf("Tokens = %d; want just the user token", len(g.Tokens))
	}
	pt, _ := g.Token("")
	if pt.AccessToken != "xoxp-FAKE-user-only-access" || pt.TokenType != "Bearer" || !pt.Expiry.IsZero() {
		t.Errorf("primary = %+v; want the user token, Bearer, not expiring", pt)
	}
	if g.Metadata["primary_token"] != "user" || g.Metadata["authed_user_id"] != "U0FAKEUSER" {
		t.Errorf("Metadata = %v", g.Metadata)
	}
	if want := []string{"user:search:read", "user:users:read"}; !slices.Equal(g.Scopes, want) {
		t.Errorf("Scopes = %q; want %q", g.Scopes, want)
	}
}

func TestSlack_Exchange_OrgInstall(t *testing.T) {
	rs := newReplay(t)
	p := newSlack(t, rs.URL, nil)
	rs.on("/api/oauth.v2.access", answer(t, "slack", 200, "exchange_org_install.json"))
	g, err := p.Exchange(context.Background(), providers.ExchangeRequest{Code: "c"})
	if err != nil {
		t.Fatalf("Exchange = %v", err)
	}
	if g.Account != "E0FAKEENT" || g.Metadata["enterprise_id"] != "E0FAKEENT" || g.Metadata["is_enterprise_install"] != "true" {
		t.Errorf("Account = %q, Metadata = %v; want keyed by the enterprise", g.Account, g.Metadata)
	}
	if _, ok := g.Token("user"); ok {
		t.Errorf("authed_user without a token gave a user credential")
	}
}

// TestSlack_Refresh_Separately refreshes the bot and the user token of one
// grant, each with its own refresh token, leaving the other alone.
func TestSlack_Refresh_Separately(t *testing.T) {
	ctx := context.Background()
	rs := newReplay(t)
	p := newSlack(t, rs.URL, nil)
	rs.on("/api/oauth.v2.access", answer(t, "slack", 200, "exchange.json"))
	g0, err := p.Exchange(ctx, providers.ExchangeRequest{Code: "c"})
	if err != nil {
		t.Fatal(err)
	}

	rs.on("/api/oauth.v2.access", answer(t, "slack", 200, "refresh.json"))
	g1, err := p.Refresh(ctx, g0, "")
	if err != nil {
		t.Fatalf("Refresh(bot) = %v", err)
	}
	if f := rs.requests("/api/oauth.v2.access")[1].Form(); f.Get("refresh_token") != "xoxe-1-FAKE-bot-refresh-1" {
		t.Errorf("bot refresh sent refresh_token %q", f.Get("refresh_token"))
	}
	bot, _ := g1.Token("")
	if bot.AccessToken != "xoxe.xoxb-1-FAKE-bot-access-2" || bot.RefreshToken != "xoxe-1-FAKE-bot-refresh-2" || bot.TokenType != "Bearer" {
		t.Errorf("bot after refresh = %+v", bot)
	}
	if u0, _ := g0.Token("user"); !tokensEqual(u0, mustToken(t, g1, "user")) {
		t.Errorf("refreshing the bot token changed the user token")
	}

	rs.on("/api/oauth.v2.access", answer(t, "slack", 200, "refresh_user.json"))
	g2, err := p.Refresh(ctx, g1, "user")
	if err != nil {
		t.Fatalf("Refresh(user) = %v", err)
	}
	if f := rs.requests("/api/oauth.v2.access")[2].Form(); f.Get("refresh_token") != "xoxe-1-FAKE-user-refresh-1" {
		t.Errorf("user refresh sent refresh_token %q", f.Get("refresh_token"))
	}
	user := mustToken(t, g2, "user")
	if user.AccessToken != "xoxe.xoxp-1-FAKE-user-access-2" || user.RefreshToken != "xoxe-1-FAKE-user-refresh-2" || user.TokenType != "Bearer" {
		t.Errorf("user after refresh = %+v", user)
	}
	if !tokensEqual(bot, mustToken(t, g2, "")) {
		t.Errorf("refreshing the user token changed the bot token")
	}
	if g2.Secrets["incoming_webhook_url"] == "" || g2.Metadata["team_id"] != "T0FAKETEAM" {
		t.Errorf("Refresh dropped the grant's secrets or metadata")
	}
	if !slices.Contains(g2.Scopes, "user:search:read") {
		t.Errorf("Scopes = %q; want the user scopes kept", g2.Scopes)
	}

	// Without token rotation there is nothing to refresh with.
	_, err = p.Refresh(ctx, providers.Grant{Tokens: []providers.Token{{AccessToken: "xoxb-old"}}}, "")
	wantClass(t, "Refresh(no rotation)", err, providers.ClassReauth, "no_refresh_token")
}

func TestSlack_Errors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		op     string
		status int
		body   string
		retry  string
		class  providers.Class
		code   string
	}{
		{"refresh", 200, `{"ok":false,"error":"invalid_refresh_token"}`, "", providers.ClassReauth, "invalid_refresh_token"},
		{"refresh", 400, `{"error":"invalid_grant"}`, "", providers.ClassReauth, "invalid_grant"},
		{"refresh", 200, `{"ok":false,"error":"token_revoked"}`, "", providers.ClassReauth, "token_revoked"},
		{"refresh", 200, `{"ok":false,"error":"missing_scope"}`, "", providers.ClassReauth, "missing_scope"},
		{"refresh", 429, `{"ok":false,"error":"ratelimited"}`, "42", providers.ClassTransient, ""},
		{"refresh", 200, `{"ok":false,"error":"ratelimited"}`, "3", providers.ClassTransient, "ratelimited"},
		{"refresh", 200, `{"ok":false,"error":"internal_error"}`, "", providers.ClassTransient, "internal_error"},
		{"refresh", 200, `{"ok":false,"error":"team_added_to_org"}`, "", providers.ClassTransient, "team_added_to_org"},
		{"refresh", 200, `{"ok":false,"error":"service_unavailable"}`, "", providers.ClassTransient, "service_unavailable"},
		{"refresh", 200, `{"ok":false,"error":"invalid_client_id"}`, "", providers.ClassConfig, "invalid_client_id"},
		{"refresh", 200, `{"ok":false,"error":"not_authed"}`, "", providers.ClassConfig, "not_authed"},
		{"refresh", 200, `{"ok":false}`, "", providers.ClassTransient, "invalid_response"},
		{"refresh", 200, `{"ok":true}`, "", providers.ClassTransient, "invalid_response"},
		{"exchange", 200, `{"ok":false,"error":"invalid_code"}`, "", providers.ClassInvalidRequest, "invalid_code"},
		{"exchange", 200, `{"ok":false,"error":"invalid_code_verifier"}`, "", providers.ClassInvalidRequest, "invalid_code_verifier"},
		{"exchange", 200, `{"ok":false,"error":"bad_redirect_uri"}`, "", providers.ClassConfig, "bad_redirect_uri"},
		{"exchange", 200, `{"ok":false,"error":"oauth_authorization_url_mismatch"}`, "", providers.ClassConfig, "oauth_authorization_url_mismatch"},
		{"exchange", 200, `{"ok":false,"error":"pkce_not_allowed"}`, "", providers.ClassConfig, "pkce_not_allowed"},
		{"exchange", 200, `{"ok":false,"error":"invalid_auth"}`, "", providers.ClassInvalidRequest, "invalid_auth"},
		{"exchange", 200, `{"ok":true,"authed_user":{"id":"U1"}}`, "", providers.ClassTransient, "invalid_response"},
	} {
		t.Run(tc.op+" "+tc.body, func(t *testing.T) {
			rs := newReplay(t)
			p := newSlack(t, rs.URL, nil)
			h := map[string]string{}
			if tc.retry != "" {
				h["Retry-After"] = tc.retry
			}
			rs.on("/api/oauth.v2.access", replayed{status: tc.status, header: h, body: []byte(tc.body)})
			var err error
			if tc.op == "exchange" {
				_, err = p.Exchange(ctx, providers.ExchangeRequest{Code: "c"})
			} else {
				_, err = p.Refresh(ctx, providers.Grant{Tokens: []providers.Token{{AccessToken: "a", RefreshToken: "xoxe-1-r"}}}, "")
			}
			pe := wantClass(t, tc.op, err, tc.class, tc.code)
			if tc.retry != "" && pe.RetryAfter.String() != tc.retry+"s" {
				t.Errorf("RetryAfter = %v; want %ss", pe.RetryAfter, tc.retry)
			}
		})
	}
}

func TestSlack_Revoke(t *testing.T) {
	ctx := context.Background()
	rs := newReplay(t)
	p := newSlack(t, rs.URL, nil)
	rs.on("/api/oauth.v2.access", answer(t, "slack", 200, "exchange.json"))
	g, err := p.Exchange(ctx, providers.ExchangeRequest{Code: "c"})
	if err != nil {
		t.Fatal(err)
	}
	rs.on("/api/auth.revoke", answer(t, "slack", 200, "revoke.json"), answer(t, "slack", 200, "revoke_dead.json"))
	if err := p.Revoke(ctx, g); err != nil {
		t.Fatalf("Revoke = %v; want nil (a dead token counts as revoked)", err)
	}
	var auths []string
	for _, r := range rs.requests("/api/auth.revoke") {
		auths = append(auths, r.Header.Get("Authorization"))
	}
	if want := []string{"Bearer xoxe.xoxp-1-FAKE-user-access-1", "Bearer xoxe.xoxb-1-FAKE-bot-access-1"}; !slices.Equal(auths, want) {
		t.Errorf("auth.revoke called with %q; want each token revoking itself, user first", auths)
	}

	// An expired (rotating) token is refreshed first: auth.revoke
	// authenticates with the token it revokes.
	rs2 := newReplay(t)
	p2 := newSlack(t, rs2.URL, nil)
	rs2.on("/api/oauth.v2.access", answer(t, "slack", 200, "refresh.json"))
	rs2.on("/api/auth.revoke", answer(t, "slack", 200, "revoke.json"))
	expired := providers.Grant{Tokens: []providers.Token{{AccessToken: "xoxe.xoxb-old", RefreshToken: "xoxe-1-FAKE-bot-refresh-1", Expiry: fixedNow.Add(-time.Minute)}}}
	if err := p2.Revoke(ctx, expired); err != nil {
		t.Fatalf("Revoke(expired) = %v", err)
	}
	if r := rs2.requests("/api/auth.revoke"); len(r) != 1 || r[0].Header.Get("Authorization") != "Bearer xoxe.xoxb-1-FAKE-bot-access-2" {
		t.Errorf("auth.revoke requests = %v; want one with the refreshed token", r)
	}
	// A refresh that finds the grant dead: nothing left to revoke.
	rs2.on("/api/oauth.v2.access", answer(t, "slack", 200, "refresh_rejected.json"))
	if err := p2.Revoke(ctx, expired); err != nil {
		t.Errorf("Revoke(expired, dead grant) = %v; want nil", err)
	}
}

func TestSlack_Validate_ExpiredToken(t *testing.T) {
	rs := newReplay(t)
	p := newSlack(t, rs.URL, nil)
	g := providers.Grant{Tokens: []providers.Token{{AccessToken: "xoxe.xoxb-old", RefreshToken: "r", Expiry: fixedNow.Add(-time.Second)}}}
	wantClass(t, "Validate(expired)", p.Validate(context.Background(), g), providers.ClassTransient, "access_token_expired")
	if len(rs.requests("/api/auth.test")) != 0 {
		t.Errorf("Validate asked Slack about a token known to be expired")
	}
}

func TestNewSlack_Invalid(t *testing.T) {
	for name, edit := range map[string]func(*providers.ServiceConfig){
		"no client id":      func(c *providers.ServiceConfig) { c.ClientID = "" },
		"no secret":         func(c *providers.ServiceConfig) { c.ClientSecret = "" },
		"unknown option":    func(c *providers.ServiceConfig) { c.Options = map[string]string{"api_url": "x"} },
		"bad api base":      func(c *providers.ServiceConfig) { c.Options = map[string]string{"api_base": "slack.com/api"} },
		"no redirect":       func(c *providers.ServiceConfig) { c.RedirectURL = "" },
		"relative redirect": func(c *providers.ServiceConfig) { c.RedirectURL = "/oauth/callback/slack" },
	} {
		cfg := svcConfig("slack", nil, "chat:write")
		edit(&cfg)
		if _, err := providers.NewSlack(cfg); err == nil {
			t.Errorf("NewSlack(%s) = nil error", name)
		} else if strings.Contains(err.Error(), fakeClientSecret) {
			t.Errorf("NewSlack(%s) error reveals the secret", name)
		}
	}
}

// basicAuth returns the client credentials of a request's HTTP Basic
// header, form-decoded (RFC 6749 §2.3.1).
func basicAuth(r seen) (id, secret string, ok bool) {
	req := &http.Request{Header: r.Header}
	u, p, ok := req.BasicAuth()
	if !ok {
		return "", "", false
	}
	id, _ = url.QueryUnescape(u)
	secret, _ = url.QueryUnescape(p)
	return id, secret, true
}

func mustToken(t *testing.T, g providers.Grant, name string) providers.Token {
	t.Helper()
	tok, ok := g.Token(name)
	if !ok {
		t.Fatalf("grant has no credential %q", name)
	}
	return tok
}

func tokensEqual(a, b providers.Token) bool {
	return a.Name == b.Name && a.AccessToken == b.AccessToken && a.RefreshToken == b.RefreshToken &&
		a.Expiry.Equal(b.Expiry) && slices.Equal(a.Scopes, b.Scopes)
}
