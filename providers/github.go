package providers

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// GitHub is the GitHub provider, for both kinds of GitHub app:
//   - OAuth Apps issue tokens (gho_) that never expire and cannot be
//     refreshed. GitHub revokes them when unused for a year, when leaked,
//     or when an app holds more than 10 per user and scope (the oldest
//     goes), so the scheduler should validate them now and then.
//   - GitHub Apps issue user tokens (ghu_) that expire after 8 h, with a
//     refresh token (ghr_) that lasts about 6 months and rotates on every
//     use with no grace for reuse. Their scope is always "" (permissions
//     are fine-grained), so such a grant has no scopes.
//
// Metadata: user_id and login (from GET /user, asked right after the
// exchange: GitHub advises checking identity after every new token) and
// app_type ("oauth_app" or "github_app", told by whether the token
// expires). Account is the login.
//
// GitHub's token endpoint answers errors with HTTP 200 and an "error" field;
// it answers form-encoded unless asked for JSON, which we do (both are
// read). Secondary rate limits come as 403 (or 429) with Retry-After or
// x-ratelimit-reset.
type GitHub struct {
	*service
}

var (
	_ Provider  = (*GitHub)(nil)
	_ Validator = (*GitHub)(nil)
)

// githubErrors classifies the token endpoint's error codes (PROVIDERS.md
// §2). bad_verification_code (a wrong, expired or spent code) means
// starting the flow again.
var githubErrors = map[string]Class{
	"bad_verification_code":        ClassInvalidRequest,
	"bad_refresh_token":            ClassReauth,
	"unverified_user_email":        ClassReauth,
	"access_denied":                ClassReauth,
	"incorrect_client_credentials": ClassConfig,
	"redirect_uri_mismatch":        ClassConfig,
	"device_flow_disabled":         ClassConfig,
	"unsupported_grant_type":       ClassConfig,
}

// githubAPIVersion is the REST API version we speak.
const githubAPIVersion = "2022-11-28"

// NewGitHub returns the GitHub provider. Options:
//
//	auth_base  https://github.com      {auth_base}/login/oauth/authorize and /login/oauth/access_token
//	api_base   https://api.github.com  {api_base}/user and /applications/{client_id}/{grant,token}
//
// A flow may set the options "login", "allow_signup" and "prompt"
// (select_account), passed to the authorization URL. Client credentials go
// in the body.
func NewGitHub(cfg ServiceConfig) (*GitHub, error) {
	s, err := newService("github", "GitHub", cfg, false, map[string]string{
		"auth_base": "https://github.com",
		"api_base":  "https://api.github.com",
	})
	if err != nil {
		return nil, err
	}
	return &GitHub{s}, nil
}

// Info describes the provider. Refresh is true: GitHub App tokens refresh,
// OAuth App tokens need none.
func (p *GitHub) Info() Info { return p.info() }

var githubFlowOptions = []string{"login", "allow_signup", "prompt"}

// AuthURL returns GitHub's authorization URL; scopes are space-separated
// (GitHub Apps ignore them).
func (p *GitHub) AuthURL(req AuthRequest) (string, error) {
	if err := p.checkFlowOptions(opAuthorize, req.Options, githubFlowOptions...); err != nil {
		return "", err
	}
	params := url.Values{"scope": {strings.Join(p.requested(req.Scopes), " ")}}
	for _, k := range githubFlowOptions {
		params.Set(k, req.Options[k])
	}
	return p.authURL(p.opts["auth_base"]+"/login/oauth/authorize", req, params)
}

// Exchange redeems the code (sending it once), then asks GET /user who the
// token belongs to. If that fails the new token is revoked (best effort)
// and Exchange fails with the lookup's class: a connection must know its
// account.
func (p *GitHub) Exchange(ctx context.Context, req ExchangeRequest) (Grant, error) {
	if err := p.checkFlowOptions(opExchange, req.Options, githubFlowOptions...); err != nil {
		return Grant{}, err
	}
	form, err := p.codeForm(req)
	if err != nil {
		return Grant{}, err
	}
	now := p.cfg.Now()
	res, err := p.post(ctx, opExchange, p.opts["auth_base"]+"/login/oauth/access_token", form, p.clientAuth(AuthStyleInParams))
	if err != nil {
		return Grant{}, err
	}
	tr, err := p.readToken(opExchange, res)
	if err != nil {
		return Grant{}, err
	}
	t := newToken("", tr, p.requested(req.Scopes), now)
	id, login, err := p.user(ctx, t.AccessToken)
	if err != nil {
		_ = p.deleteToken(ctx, "/token", t.AccessToken)
		return Grant{}, err
	}
	kind := "oauth_app"
	if !t.Expiry.IsZero() || t.RefreshToken != "" {
		kind = "github_app"
	}
	return Grant{
		Tokens:   []Token{t},
		Scopes:   normalizeScopes(t.Scopes),
		Account:  login,
		Metadata: map[string]string{"user_id": id, "login": login, "app_type": kind},
	}, nil
}

// readToken reads a token endpoint answer, rate limits first.
func (p *GitHub) readToken(op string, res *httpResult) (*tokenResponse, error) {
	if e := p.rateLimited(op, res); e != nil {
		return nil, e
	}
	return p.service.readToken(op, res, githubErrors)
}

// user returns the id and login of the token's owner.
func (p *GitHub) user(ctx context.Context, token string) (id, login string, err error) {
	req, err := newRequest(ctx, http.MethodGet, p.opts["api_base"]+"/user", token, nil)
	if err != nil {
		return "", "", err
	}
	p.apiHeaders(req)
	res, err := p.send(ctx, opExchange, req)
	if err != nil {
		return "", "", err
	}
	if e := p.apiError(opExchange, res); e != nil {
		return "", "", e
	}
	if res.Status != http.StatusOK {
		return "", "", p.httpError(opExchange, res, ClassInvalidRequest)
	}
	tr, err := parseTokenResponse("application/json", res.Body)
	if err != nil {
		return "", "", p.errorf(opExchange, ClassTransient, "invalid_response")
	}
	id, _ = tr.String("id")
	login, _ = tr.String("login")
	if id == "" || login == "" {
		return "", "", p.errorf(opExchange, ClassTransient, "invalid_response")
	}
	return id, login, nil
}

func (p *GitHub) apiHeaders(req *http.Request) {
	req.Header.Set("Accept", "application/vnd.github+json")
	req.Header.Set("X-GitHub-Api-Version", githubAPIVersion)
}

// rateLimited classifies GitHub's rate limits: 429, or 403 with
// Retry-After or an exhausted x-ratelimit-remaining. The wait is
// Retry-After's, else until x-ratelimit-reset.
func (p *GitHub) rateLimited(op string, res *httpResult) *Error {
	h := res.Header
	limited := res.Status == http.StatusTooManyRequests ||
		res.Status == http.StatusForbidden && (h.Get("Retry-After") != "" || h.Get("X-Ratelimit-Remaining") == "0")
	if !limited {
		return nil
	}
	now := p.cfg.Now()
	e := p.httpError(op, res, ClassTransient)
	e.Code = "rate_limited"
	e.RetryAfter = parseRetryAfter(h, now)
	if e.RetryAfter == 0 {
		if reset, err := strconv.ParseInt(h.Get("X-Ratelimit-Reset"), 10, 64); err == nil {
			e.RetryAfter = min(max(time.Unix(reset, 0).Sub(now), 0), maxRetryAfter)
		}
	}
	return e
}

// apiError classifies the REST API's failures common to every call:
// rate limits, redirects, 5xx. It returns nil for anything else.
func (p *GitHub) apiError(op string, res *httpResult) *Error {
	if e := p.rateLimited(op, res); e != nil {
		return e
	}
	return p.apiStatus(op, res)
}

// Refresh renews a GitHub App user token; the refresh token rotates.
// OAuth App tokens have no refresh token: ClassReauth "no_refresh_token"
// (they do not expire, so the vault never asks).
func (p *GitHub) Refresh(ctx context.Context, g Grant, credential string) (Grant, error) {
	i, err := p.credential(g, credential)
	if err != nil {
		return Grant{}, err
	}
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {g.Tokens[i].RefreshToken}}
	now := p.cfg.Now()
	res, err := p.post(ctx, opRefresh, p.opts["auth_base"]+"/login/oauth/access_token", form, p.clientAuth(AuthStyleInParams))
	if err != nil {
		return Grant{}, err
	}
	tr, err := p.readToken(opRefresh, res)
	if err != nil {
		return Grant{}, err
	}
	out := cloneGrant(g)
	out.Tokens[i] = refreshedToken(g.Tokens[i], tr, now)
	return withScopes(out), nil
}

// Revoke deletes the whole authorization (DELETE
// /applications/{client_id}/grant, HTTP Basic with the client's
// credentials). That revokes every token the app holds for this GitHub
// user, including those of other connections of the same GitHub account.
// GitHub wants a valid access token to name the grant, so an expired GitHub
// App token is refreshed first. A 404 (the token is unknown: already
// revoked) is success.
func (p *GitHub) Revoke(ctx context.Context, g Grant) error {
	t, ok := primary(g)
	if !ok {
		return nil
	}
	tok, dead, err := revocable(ctx, p, g, t, p.cfg.Now())
	if dead || tok == "" || err != nil {
		return err
	}
	return p.deleteToken(ctx, "/grant", tok)
}

// deleteToken calls DELETE /applications/{client_id}{path} for token.
func (p *GitHub) deleteToken(ctx context.Context, path, token string) error {
	res, err := p.appCall(ctx, opRevoke, http.MethodDelete, path, token)
	if err != nil {
		return err
	}
	if e := p.apiError(opRevoke, res); e != nil {
		return e
	}
	switch {
	case res.Status/100 == 2, res.Status == http.StatusNotFound:
		return nil
	case res.Status == http.StatusUnauthorized, res.Status == http.StatusForbidden:
		return p.httpError(opRevoke, res, ClassConfig)
	}
	return p.httpError(opRevoke, res, ClassInvalidRequest)
}

// appCall sends {"access_token": token} to /applications/{client_id}{path}
// with the client's credentials in HTTP Basic.
func (p *GitHub) appCall(ctx context.Context, op, method, path, token string) (*httpResult, error) {
	u := p.opts["api_base"] + "/applications/" + url.PathEscape(p.cfg.ClientID) + path
	req, err := newRequest(ctx, method, u, "", map[string]string{"access_token": token})
	if err != nil {
		return nil, err
	}
	p.apiHeaders(req)
	req.SetBasicAuth(p.cfg.ClientID, p.cfg.ClientSecret)
	return p.send(ctx, op, req)
}

// Validate checks the access token with POST /applications/{client_id}/token
// (which does not count against the user's rate limit). A 404 means the
// token is invalid: ClassReauth. 401 means our client credentials are wrong:
// ClassConfig.
func (p *GitHub) Validate(ctx context.Context, g Grant) error {
	t, ok := primary(g)
	if !ok || t.AccessToken == "" {
		return p.errorf(opValidate, ClassReauth, "no_token")
	}
	if expiredAt(t, p.cfg.Now()) {
		return p.expiredError()
	}
	res, err := p.appCall(ctx, opValidate, http.MethodPost, "/token", t.AccessToken)
	if err != nil {
		return err
	}
	if e := p.apiError(opValidate, res); e != nil {
		return e
	}
	switch res.Status {
	case http.StatusOK:
		return nil
	case http.StatusNotFound, http.StatusUnprocessableEntity:
		return p.httpError(opValidate, res, ClassReauth)
	case http.StatusUnauthorized, http.StatusForbidden:
		return p.httpError(opValidate, res, ClassConfig)
	}
	return p.httpError(opValidate, res, ClassTransient)
}
