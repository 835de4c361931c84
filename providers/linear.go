package providers

import (
	"cmp"
	"context"
	"net/http"
	"net/url"
	"strings"
)

// Linear is the Linear provider. Scopes are comma-separated in the
// authorization URL; the token response names them as a space-separated
// string, or as a JSON array for apps created before 2023-12-01 (both are
// read). Access tokens last 24 h; every refresh rotates the refresh token.
//
// actor=user (the default) makes the token act as the user; actor=app
// attributes every mutation to the app. It is fixed per authorization.
//
// The token response says nothing of who connected, so Exchange asks
// GraphQL `viewer { id organization { id urlKey } }`. Metadata: user_id,
// organization_id, organization_url_key, organization_name and actor.
// Account is the workspace's urlKey.
type Linear struct {
	*service
}

var (
	_ Provider  = (*Linear)(nil)
	_ Validator = (*Linear)(nil)
)

// linearErrors classifies Linear's error codes (PROVIDERS.md §3). Linear
// follows RFC 6749, with non-standard codes such as "Error" for a client
// that may not use a grant type (our configuration).
var linearErrors = map[string]Class{
	"invalid_grant":       ClassReauth,
	"invalid_client":      ClassConfig,
	"unauthorized_client": ClassConfig,
	"Error":               ClassConfig,
}

// NewLinear returns the Linear provider. Options:
//
//	auth_base  https://linear.app      authorize at {auth_base}/oauth/authorize
//	api_base   https://api.linear.app  {api_base}/oauth/token, /oauth/revoke, /graphql
//	actor      user                    user or app
//	prompt                             "consent" always shows the consent screen
//
// A flow may set "actor" and "prompt" too. Client credentials go in the
// form body. The secret may be empty only with PKCE.
func NewLinear(cfg ServiceConfig) (*Linear, error) {
	s, err := newService("linear", "Linear", cfg, cfg.PKCE, map[string]string{
		"auth_base": "https://linear.app",
		"api_base":  "https://api.linear.app",
		"actor":     "user",
		"prompt":    "",
	})
	if err != nil {
		return nil, err
	}
	p := &Linear{s}
	if err := p.checkActor(s.opts["actor"]); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Linear) checkActor(a string) error {
	if a != "user" && a != "app" {
		return p.invalid(opAuthorize, "invalid_option", `actor must be "user" or "app"`)
	}
	return nil
}

// Info describes the provider.
func (p *Linear) Info() Info { return p.info() }

// actor returns the actor of a flow.
func (p *Linear) actor(opts map[string]string) (string, error) {
	a := cmp.Or(opts["actor"], p.opts["actor"])
	return a, p.checkActor(a)
}

// AuthURL returns Linear's authorization URL, scopes comma-separated.
func (p *Linear) AuthURL(req AuthRequest) (string, error) {
	if err := p.checkFlowOptions(opAuthorize, req.Options, "actor", "prompt"); err != nil {
		return "", err
	}
	actor, err := p.actor(req.Options)
	if err != nil {
		return "", err
	}
	params := url.Values{
		"response_type": {"code"},
		"scope":         {strings.Join(p.requested(req.Scopes), ",")},
		"actor":         {actor},
		"prompt":        {cmp.Or(req.Options["prompt"], p.opts["prompt"])},
	}
	return p.authURL(p.opts["auth_base"]+"/oauth/authorize", req, params)
}

// Exchange redeems the code (form-encoded, sent once), then asks GraphQL
// for the viewer and its workspace. If that fails the new token is revoked
// (best effort) and Exchange fails with the lookup's class.
func (p *Linear) Exchange(ctx context.Context, req ExchangeRequest) (Grant, error) {
	if err := p.checkFlowOptions(opExchange, req.Options, "actor", "prompt"); err != nil {
		return Grant{}, err
	}
	actor, err := p.actor(req.Options)
	if err != nil {
		return Grant{}, err
	}
	form, err := p.codeForm(req)
	if err != nil {
		return Grant{}, err
	}
	now := p.cfg.Now()
	res, err := p.post(ctx, opExchange, p.opts["api_base"]+"/oauth/token", form, p.clientAuth(AuthStyleInParams))
	if err != nil {
		return Grant{}, err
	}
	tr, err := p.readToken(opExchange, res, linearErrors)
	if err != nil {
		return Grant{}, err
	}
	t := newToken("", tr, p.requested(req.Scopes), now)
	v, err := p.viewer(ctx, opExchange, t.AccessToken)
	if err != nil {
		_ = p.Revoke(ctx, Grant{Tokens: []Token{t}})
		return Grant{}, err
	}
	m := map[string]string{"actor": actor, "user_id": v.ID}
	m = setMeta(m, "organization_id", v.Organization.ID)
	m = setMeta(m, "organization_url_key", v.Organization.URLKey)
	m = setMeta(m, "organization_name", v.Organization.Name)
	return Grant{
		Tokens:   []Token{t},
		Scopes:   normalizeScopes(t.Scopes),
		Account:  cmp.Or(v.Organization.URLKey, v.Organization.ID),
		Metadata: m,
	}, nil
}

type linearViewer struct {
	ID           string `json:"id"`
	Organization struct {
		ID     string `json:"id"`
		Name   string `json:"name"`
		URLKey string `json:"urlKey"`
	} `json:"organization"`
}

const linearViewerQuery = `query { viewer { id organization { id name urlKey } } }`

// viewer runs the viewer query with token. A rejected token is ClassReauth
// (for op validate; the caller of an exchange turns it into
// ClassInvalidRequest).
func (p *Linear) viewer(ctx context.Context, op, token string) (*linearViewer, error) {
	req, err := newRequest(ctx, http.MethodPost, p.opts["api_base"]+"/graphql", token, map[string]string{"query": linearViewerQuery})
	if err != nil {
		return nil, err
	}
	res, err := p.send(ctx, op, req)
	if err != nil {
		return nil, err
	}
	if e := p.apiStatus(op, res); e != nil {
		return nil, e
	}
	var body struct {
		Data struct {
			Viewer *linearViewer `json:"viewer"`
		} `json:"data"`
		Errors []struct {
			Extensions struct {
				Code string `json:"code"`
				Type string `json:"type"`
			} `json:"extensions"`
		} `json:"errors"`
	}
	parsed := decodeJSON(res.Body, &body)
	dead := ClassReauth
	if op == opExchange {
		dead = ClassInvalidRequest
	}
	// GraphQL errors come at 200 or 400 with a code in extensions.
	for _, e := range body.Errors {
		switch c := strings.ToUpper(cmp.Or(e.Extensions.Code, e.Extensions.Type)); {
		case c == "RATELIMITED":
			ee := p.httpError(op, res, ClassTransient)
			ee.Code, ee.RetryAfter = "ratelimited", parseRetryAfter(res.Header, p.cfg.Now())
			return nil, ee
		case strings.Contains(c, "AUTHENTICATION"), c == "FORBIDDEN":
			ee := p.httpError(op, res, dead)
			ee.Code = "authentication_error"
			return nil, ee
		}
	}
	switch {
	case res.Status == http.StatusUnauthorized, res.Status == http.StatusForbidden:
		return nil, p.httpError(op, res, dead)
	case res.Status != http.StatusOK || !parsed || body.Data.Viewer == nil || body.Data.Viewer.ID == "":
		e := p.httpError(op, res, ClassTransient)
		e.Code = "invalid_response"
		return nil, e
	}
	return body.Data.Viewer, nil
}

// Refresh renews the grant; Linear rotates the refresh token every time.
func (p *Linear) Refresh(ctx context.Context, g Grant, credential string) (Grant, error) {
	out, _, err := p.refresh(ctx, g, credential, p.opts["api_base"]+"/oauth/token", p.clientAuth(AuthStyleInParams), linearErrors)
	return out, err
}

// Revoke posts the refresh token to /oauth/revoke, then the access token
// if it has not expired. 400 (could not revoke, e.g. already revoked) and
// 401 (the token does not authenticate: dead) count as success.
func (p *Linear) Revoke(ctx context.Context, g Grant) error {
	t, ok := primary(g)
	if !ok {
		return nil
	}
	if t.RefreshToken != "" {
		if err := p.revoke(ctx, t.RefreshToken, ""); err != nil {
			return err
		}
	}
	if t.AccessToken != "" && !expiredAt(t, p.cfg.Now()) {
		return p.revoke(ctx, "", t.AccessToken)
	}
	return nil
}

// revoke revokes a refresh token (form field) or an access token (bearer).
func (p *Linear) revoke(ctx context.Context, refresh, access string) error {
	var form url.Values
	if refresh != "" {
		form = url.Values{"refresh_token": {refresh}}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.opts["api_base"]+"/oauth/revoke", strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if access != "" {
		req.Header.Set("Authorization", "Bearer "+access)
	}
	res, err := p.send(ctx, opRevoke, req)
	if err != nil {
		return err
	}
	if e := p.apiStatus(opRevoke, res); e != nil {
		return e
	}
	switch {
	case res.Status/100 == 2, res.Status == http.StatusBadRequest, res.Status == http.StatusUnauthorized:
		return nil
	}
	return p.httpError(opRevoke, res, ClassInvalidRequest)
}

// Validate runs the viewer query with the access token. A rejected token
// is ClassReauth.
func (p *Linear) Validate(ctx context.Context, g Grant) error {
	t, ok := primary(g)
	if !ok || t.AccessToken == "" {
		return p.errorf(opValidate, ClassReauth, "no_token")
	}
	if expiredAt(t, p.cfg.Now()) {
		return p.expiredError()
	}
	_, err := p.viewer(ctx, opValidate, t.AccessToken)
	return err
}
