package providers

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Slack is the Slack OAuth v2 provider ("Sign in with Slack" is not this;
// this installs an app into a workspace).
//
// Scopes. Slack takes bot scopes (`scope`) and user scopes (`user_scope`),
// both comma-separated. A flow's scopes are bot scopes, except those written
// "user:<scope>" (e.g. "user:search:read"), which are user scopes. The
// grant's Scopes follow the same convention, so missing scopes are computed
// per kind of token; each Token's own Scopes are Slack's, unprefixed.
//
// Credentials. The code exchange is our own HTTP call, not x/oauth2's: a
// user-scopes-only install answers without a top-level access_token, which
// x/oauth2 rejects after the single-use code is spent. A grant has:
//   - "" (primary): the bot token, or, for a user-scopes-only install, the
//     user token (Metadata["primary_token"] says "bot" or "user");
//   - "user": the user token, when the install has a bot token as well.
//
// With token rotation on, each credential has its own refresh token and
// expiry (12 h) and is refreshed on its own. Slack's token_type ("bot",
// "user") is normalized to "Bearer".
//
// Metadata: team_id, team_name, enterprise_id, enterprise_name,
// is_enterprise_install, app_id, bot_user_id, authed_user_id,
// primary_token, incoming_webhook_channel, incoming_webhook_channel_id,
// incoming_webhook_configuration_url. Secrets: incoming_webhook_url (the URL
// is itself a credential). Account is the enterprise id for an org-wide
// install, else the team id.
//
// Errors. Slack answers nearly every failure with HTTP 200
// {"ok":false,"error":"<code>"}, and rate limits with 429 and Retry-After;
// see slackErrors for the classes.
type Slack struct {
	*service
	userScopes []string
}

var (
	_ Provider  = (*Slack)(nil)
	_ Validator = (*Slack)(nil)
)

// slackUserPrefix marks a user scope in a flow's (and a grant's) scopes.
const slackUserPrefix = "user:"

// slackErrors classifies Slack's error codes (PROVIDERS.md §1). Codes not
// listed fall back to tokenError's rules.
var slackErrors = map[string]Class{
	// The grant is dead, or needs re-consent with more scopes.
	"invalid_refresh_token":   ClassReauth,
	"invalid_grant":           ClassReauth, // not in Slack's lists, reported at 400 [3p]
	"token_revoked":           ClassReauth,
	"account_inactive":        ClassReauth,
	"authorization_not_found": ClassReauth,
	"invalid_auth":            ClassReauth, // may also be an IP allow-list block
	"missing_scope":           ClassReauth,
	"no_permission":           ClassReauth,
	"team_access_not_granted": ClassReauth,
	"invalid_token":           ClassReauth, // oauth.v2.exchange: the legacy token is dead
	// The access token expired; the grant may be live: refresh.
	"token_expired": ClassTransient,
	"ratelimited":   ClassTransient,
	// fatal_error: the operation may have partly succeeded.
	"internal_error":      ClassTransient,
	"fatal_error":         ClassTransient,
	"service_unavailable": ClassTransient,
	"request_timeout":     ClassTransient,
	// During an enterprise migration.
	"team_added_to_org":  ClassTransient,
	"org_login_required": ClassTransient,
	// Our client, redirect URL or app settings.
	"bad_client_secret":                ClassConfig,
	"invalid_client_id":                ClassConfig,
	"bad_redirect_uri":                 ClassConfig,
	"invalid_grant_type":               ClassConfig,
	"oauth_authorization_url_mismatch": ClassConfig,
	"not_authed":                       ClassConfig,
	"pkce_not_allowed":                 ClassConfig, // we sent PKCE to an app without it
	"no_scopes":                        ClassConfig,
	"token_rotation_not_enabled":       ClassConfig, // oauth.v2.exchange before rotation was turned on
	// This code or this user cannot complete the install.
	"invalid_code":                        ClassInvalidRequest,
	"invalid_code_verifier":               ClassInvalidRequest,
	"cannot_install_an_org_installed_app": ClassInvalidRequest,
	"user_email_unverified":               ClassInvalidRequest,
	"token_already_exchanged":             ClassInvalidRequest, // oauth.v2.exchange, a spent legacy token
}

// NewSlack returns the Slack provider. cfg.Scopes are the default bot
// scopes. Options:
//
//	auth_base    https://slack.com      authorize at {auth_base}/oauth/v2/authorize
//	api_base     https://slack.com/api  {api_base}/oauth.v2.access, auth.revoke, auth.test
//	user_scopes                         default user scopes, comma-separated
//	team                                default workspace id to install into
//
// A flow may set the option "team". Client credentials go in HTTP Basic, as
// Slack prefers. The secret may be empty only with PKCE (a public app).
func NewSlack(cfg ServiceConfig) (*Slack, error) {
	s, err := newService("slack", "Slack", cfg, cfg.PKCE, map[string]string{
		"auth_base":   "https://slack.com",
		"api_base":    "https://slack.com/api",
		"user_scopes": "",
		"team":        "",
	})
	if err != nil {
		return nil, err
	}
	p := &Slack{service: s, userScopes: normalizeScopes([]string{s.opts["user_scopes"]})}
	for _, sc := range s.scopes {
		if strings.HasPrefix(sc, slackUserPrefix) {
			p.userScopes = append(p.userScopes, strings.TrimPrefix(sc, slackUserPrefix))
		}
	}
	p.userScopes = normalizeScopes(p.userScopes)
	all := slices.DeleteFunc(slices.Clone(s.scopes), func(sc string) bool { return strings.HasPrefix(sc, slackUserPrefix) })
	for _, sc := range p.userScopes {
		all = append(all, slackUserPrefix+sc)
	}
	s.scopes = normalizeScopes(all)
	return p, nil
}

// Info describes the provider.
func (p *Slack) Info() Info { return p.info() }

// split returns the bot and the user scopes of a flow's scopes (or of the
// defaults).
func (p *Slack) split(scopes []string) (bot, user []string) {
	for _, sc := range p.requested(scopes) {
		if u, ok := strings.CutPrefix(sc, slackUserPrefix); ok {
			user = append(user, u)
		} else {
			bot = append(bot, sc)
		}
	}
	return bot, user
}

// AuthURL returns Slack's v2 authorization URL, with bot scopes in `scope`
// and user scopes in `user_scope`.
func (p *Slack) AuthURL(req AuthRequest) (string, error) {
	if err := p.checkFlowOptions(opAuthorize, req.Options, "team"); err != nil {
		return "", err
	}
	bot, user := p.split(req.Scopes)
	if len(bot) == 0 && len(user) == 0 {
		return "", p.invalid(opAuthorize, "no_scopes", "Slack needs at least one bot or user scope")
	}
	params := url.Values{
		"scope":      {strings.Join(bot, ",")},
		"user_scope": {strings.Join(user, ",")},
		"team":       {cmp.Or(req.Options["team"], p.opts["team"])},
	}
	return p.authURL(p.opts["auth_base"]+"/oauth/v2/authorize", req, params)
}

// slackTeam is Slack's {id, name} of a team or an enterprise.
type slackTeam struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

type slackWebhook struct {
	URL              string `json:"url"`
	Channel          string `json:"channel"`
	ChannelID        string `json:"channel_id"`
	ConfigurationURL string `json:"configuration_url"`
}

// Exchange redeems the code at oauth.v2.access, sending it once.
func (p *Slack) Exchange(ctx context.Context, req ExchangeRequest) (Grant, error) {
	if err := p.checkFlowOptions(opExchange, req.Options, "team"); err != nil {
		return Grant{}, err
	}
	form, err := p.codeForm(req)
	if err != nil {
		return Grant{}, err
	}
	now := p.cfg.Now()
	res, err := p.post(ctx, opExchange, p.opts["api_base"]+"/oauth.v2.access", form, p.clientAuth(AuthStyleInHeader))
	if err != nil {
		return Grant{}, err
	}
	top, err := p.read(opExchange, res)
	if err != nil {
		return Grant{}, err
	}
	var user *tokenResponse
	if raw, ok := top.Extra["authed_user"]; ok && !isNull(raw) {
		if u, err := parseTokenResponse("application/json", raw); err == nil && u.AccessToken != "" {
			user = u
		}
	}
	if top.AccessToken == "" && user == nil {
		return Grant{}, p.classify(opExchange, res, "", slackErrors) // ok:true without a token
	}
	botReq, userReq := p.split(req.Scopes)
	var g Grant
	kind := "bot"
	if top.AccessToken != "" {
		t := newToken("", top, botReq, now)
		t.TokenType = "Bearer"
		g.Tokens = append(g.Tokens, t)
	}
	if user != nil {
		name := "user"
		if top.AccessToken == "" {
			name, kind = "", "user"
		}
		t := newToken(name, user, userReq, now)
		t.TokenType = "Bearer"
		g.Tokens = append(g.Tokens, t)
	}

	var team, ent slackTeam
	var hook slackWebhook
	_ = json.Unmarshal(top.Extra["team"], &team) // absent or null for org-wide installs
	_ = json.Unmarshal(top.Extra["enterprise"], &ent)
	_ = json.Unmarshal(top.Extra["incoming_webhook"], &hook)
	orgWide := string(top.Extra["is_enterprise_install"]) == "true"
	m := map[string]string{"primary_token": kind, "is_enterprise_install": strconv.FormatBool(orgWide)}
	m = setMeta(m, "team_id", team.ID)
	m = setMeta(m, "team_name", team.Name)
	m = setMeta(m, "enterprise_id", ent.ID)
	m = setMeta(m, "enterprise_name", ent.Name)
	for _, k := range []string{"app_id", "bot_user_id"} {
		v, _ := top.String(k)
		m = setMeta(m, k, v)
	}
	if user != nil {
		v, _ := user.String("id")
		m = setMeta(m, "authed_user_id", v)
	} else if raw, ok := top.Extra["authed_user"]; ok {
		var au struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(raw, &au)
		m = setMeta(m, "authed_user_id", au.ID)
	}
	m = setMeta(m, "incoming_webhook_channel", hook.Channel)
	m = setMeta(m, "incoming_webhook_channel_id", hook.ChannelID)
	m = setMeta(m, "incoming_webhook_configuration_url", hook.ConfigurationURL)
	g.Metadata = m
	if hook.URL != "" {
		g.Secrets = map[string]string{"incoming_webhook_url": hook.URL}
	}
	g.Account = team.ID
	if orgWide || g.Account == "" {
		g.Account = cmp.Or(ent.ID, team.ID)
	}
	g.Scopes = slackScopes(g)
	return g, nil
}

// read checks a Slack answer: HTTP 2xx with "ok":true. Anything else is a
// classified *Error.
func (p *Slack) read(op string, res *httpResult) (*tokenResponse, error) {
	var tr *tokenResponse
	code := ""
	if res.Body != nil {
		// Slack answers JSON whatever the Content-Type says.
		if r, err := parseTokenResponse("application/json", res.Body); err == nil {
			tr, code = r, r.Error
		}
	}
	if res.Status/100 == 2 && tr != nil && code == "" && string(tr.Extra["ok"]) == "true" {
		return tr, nil
	}
	return nil, p.classify(op, res, code, slackErrors)
}

// slackIsUser reports whether t, a credential of g, is a user token.
func slackIsUser(g Grant, t Token) bool {
	return t.Name == "user" || t.Name == "" && g.Metadata["primary_token"] == "user"
}

// slackScopes returns g's scopes: each bot token's, and each user token's
// with the "user:" prefix.
func slackScopes(g Grant) []string {
	var all []string
	for _, t := range g.Tokens {
		for _, sc := range t.Scopes {
			if slackIsUser(g, t) {
				sc = slackUserPrefix + sc
			}
			all = append(all, sc)
		}
	}
	return normalizeScopes(all)
}

// Refresh renews one credential ("" or "user") with its own refresh token
// (token rotation must be on for the app); the other is carried over. Slack
// rotates the refresh token on every use, with no grace for reuse.
func (p *Slack) Refresh(ctx context.Context, g Grant, credential string) (Grant, error) {
	i, err := p.credential(g, credential)
	if err != nil {
		return Grant{}, err
	}
	old := g.Tokens[i]
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {old.RefreshToken}}
	now := p.cfg.Now()
	res, err := p.post(ctx, opRefresh, p.opts["api_base"]+"/oauth.v2.access", form, p.clientAuth(AuthStyleInHeader))
	if err != nil {
		return Grant{}, err
	}
	tr, err := p.read(opRefresh, res)
	if err != nil {
		return Grant{}, err
	}
	if tr.AccessToken == "" {
		return Grant{}, p.classify(opRefresh, res, "", slackErrors)
	}
	t := refreshedToken(old, tr, now)
	t.TokenType = "Bearer"
	out := cloneGrant(g)
	out.Tokens[i] = t
	out.Scopes = slackScopes(out)
	return out, nil
}

// slackRevoked are auth.revoke's answers that mean the token is dead
// already.
var slackRevoked = []string{"invalid_auth", "token_revoked", "account_inactive", "authorization_not_found"}

// Revoke calls auth.revoke with each of the grant's tokens (the user
// token first). An access token known to be expired is refreshed first,
// since auth.revoke authenticates with the token it revokes; a refresh that
// finds the grant dead counts as revoked. It returns the first failure,
// after trying every token.
func (p *Slack) Revoke(ctx context.Context, g Grant) error {
	tokens := slices.Clone(g.Tokens)
	slices.SortStableFunc(tokens, func(a, b Token) int {
		return strings.Compare(b.Name, a.Name) // "user" before ""
	})
	var first error
	for _, t := range tokens {
		if err := p.revokeOne(ctx, g, t); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (p *Slack) revokeOne(ctx context.Context, g Grant, t Token) error {
	tok, dead, err := revocable(ctx, p, g, t, p.cfg.Now())
	if dead || tok == "" || err != nil {
		return err
	}
	res, err := p.bearerCall(ctx, opRevoke, "/auth.revoke", tok)
	if err != nil {
		return err
	}
	if _, err := p.read(opRevoke, res); err != nil {
		var pe *Error
		if errors.As(err, &pe) && slices.Contains(slackRevoked, pe.Code) {
			return nil
		}
		return err
	}
	return nil
}

// Validate calls auth.test with each credential whose access token has not
// expired. A dead token (invalid_auth, token_revoked, ...) is ClassReauth.
func (p *Slack) Validate(ctx context.Context, g Grant) error {
	if len(g.Tokens) == 0 {
		return p.errorf(opValidate, ClassReauth, "no_token")
	}
	now := p.cfg.Now()
	for _, t := range g.Tokens {
		if expiredAt(t, now) {
			return p.expiredError()
		}
		res, err := p.bearerCall(ctx, opValidate, "/auth.test", t.AccessToken)
		if err != nil {
			return err
		}
		if _, err := p.read(opValidate, res); err != nil {
			return err
		}
	}
	return nil
}

// bearerCall POSTs an empty form to a Web API method, authenticated with
// token.
func (p *Slack) bearerCall(ctx context.Context, op, method, token string) (*httpResult, error) {
	req, err := newRequest(ctx, http.MethodPost, p.opts["api_base"]+method, token, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return p.send(ctx, op, req)
}

// ErrNothingToExchange is returned by ExchangeLegacy for a grant whose
// credentials all rotate already.
var ErrNothingToExchange = errors.New("providers: no non-expiring token to exchange")

// ExchangeLegacy trades each non-expiring credential of g (a token issued
// before the app turned token rotation on) for a rotating one at
// oauth.v2.exchange, and returns the whole updated grant. Credentials that
// already rotate are kept as they are, so a grant exchanged before returns
// ErrNothingToExchange and nothing is sent. The legacy token is sent once;
// Slack answers token_already_exchanged if it was spent, and
// token_rotation_not_enabled (a configuration error) if the app has not
// turned rotation on.
func (p *Slack) ExchangeLegacy(ctx context.Context, g Grant) (Grant, error) {
	out := cloneGrant(g)
	exchanged := 0
	for i, t := range g.Tokens {
		if t.RefreshToken != "" || !t.Expiry.IsZero() || t.AccessToken == "" {
			continue
		}
		now := p.cfg.Now()
		form := url.Values{"token": {t.AccessToken}}
		res, err := p.post(ctx, opMigrate, p.opts["api_base"]+"/oauth.v2.exchange", form, p.clientAuth(AuthStyleInParams))
		if err != nil {
			return Grant{}, err
		}
		tr, err := p.read(opMigrate, res)
		if err != nil {
			return Grant{}, err
		}
		if tr.AccessToken == "" || tr.RefreshToken == "" {
			return Grant{}, p.classify(opMigrate, res, "", slackErrors)
		}
		nt := refreshedToken(t, tr, now)
		nt.TokenType = "Bearer"
		out.Tokens[i] = nt
		exchanged++
	}
	if exchanged == 0 {
		return Grant{}, ErrNothingToExchange
	}
	out.Scopes = slackScopes(out)
	return out, nil
}
