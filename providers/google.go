package providers

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Google is the Google provider. Authorization asks for offline access
// (access_type=offline, so a refresh token comes back), forces the consent
// screen (prompt=consent: a refresh token is issued only at consent) and
// includes previously granted scopes. Access tokens last 1 h; refresh
// tokens do not rotate: a refresh response has none, and the stored one is
// kept.
//
// Granular consent lets the user uncheck scopes, so the granted scopes are
// read back from the response, never assumed. Google names "email" and
// "profile" by their URLs in responses; the grant's scopes carry both
// spellings, so either kind of request matches.
//
// Identity comes from the id token (request the "openid" and "email"
// scopes): Metadata sub (the stable user id), email, email_verified and hd
// (the Workspace domain). Account is the email, else the sub. The id token
// itself is kept in Secrets["id_token"].
type Google struct {
	*service
}

var (
	_ Provider  = (*Google)(nil)
	_ Validator = (*Google)(nil)
)

// googleErrors classifies Google's error codes (PROVIDERS.md §4).
// invalid_grant (expired or revoked, invalid_rapt, "Bad Request") falls to
// tokenError: ClassReauth on refresh. invalid_scope is taken as our
// configuration: we asked for a scope the client may not have.
var googleErrors = map[string]Class{
	"admin_policy_enforced": ClassReauth,
	"invalid_client":        ClassConfig,
	"unauthorized_client":   ClassConfig,
	"deleted_client":        ClassConfig,
	"invalid_scope":         ClassConfig,
	"org_internal":          ClassInvalidRequest, // a user outside an internal app's Workspace
}

// googleScopeAliases maps the URLs Google answers with to the short names
// one may request.
var googleScopeAliases = map[string]string{
	"https://www.googleapis.com/auth/userinfo.email":   "email",
	"https://www.googleapis.com/auth/userinfo.profile": "profile",
}

// NewGoogle returns the Google provider. Options:
//
//	auth_base               https://accounts.google.com   authorize at {auth_base}/o/oauth2/v2/auth
//	api_base                https://oauth2.googleapis.com {api_base}/token, /revoke, /tokeninfo
//	prompt                  consent                       prompt parameter ("consent select_account", ...)
//	include_granted_scopes  true                          incremental authorization
//
// A flow may set "login_hint" and "hd". Client credentials go in the form
// body, as Google's own client libraries send them.
func NewGoogle(cfg ServiceConfig) (*Google, error) {
	s, err := newService("google", "Google", cfg, false, map[string]string{
		"auth_base":              "https://accounts.google.com",
		"api_base":               "https://oauth2.googleapis.com",
		"prompt":                 "consent",
		"include_granted_scopes": "true",
	})
	if err != nil {
		return nil, err
	}
	igs, err := parseBool(s.opts["include_granted_scopes"])
	if err != nil {
		return nil, s.invalid(opAuthorize, "invalid_option", "include_granted_scopes: "+err.Error())
	}
	s.opts["include_granted_scopes"] = strconv.FormatBool(igs)
	return &Google{s}, nil
}

// Info describes the provider.
func (p *Google) Info() Info { return p.info() }

// AuthURL returns Google's authorization URL, scopes space-separated.
func (p *Google) AuthURL(req AuthRequest) (string, error) {
	if err := p.checkFlowOptions(opAuthorize, req.Options, "login_hint", "hd"); err != nil {
		return "", err
	}
	params := url.Values{
		"response_type": {"code"},
		"scope":         {strings.Join(p.requested(req.Scopes), " ")},
		"access_type":   {"offline"},
		"prompt":        {p.opts["prompt"]},
		"login_hint":    {req.Options["login_hint"]},
		"hd":            {req.Options["hd"]},
	}
	if p.opts["include_granted_scopes"] == "true" {
		params.Set("include_granted_scopes", "true")
	}
	return p.authURL(p.opts["auth_base"]+"/o/oauth2/v2/auth", req, params)
}

// Exchange redeems the code, sent once, and reads the identity from the id
// token.
func (p *Google) Exchange(ctx context.Context, req ExchangeRequest) (Grant, error) {
	if err := p.checkFlowOptions(opExchange, req.Options, "login_hint", "hd"); err != nil {
		return Grant{}, err
	}
	form, err := p.codeForm(req)
	if err != nil {
		return Grant{}, err
	}
	now := p.cfg.Now()
	res, err := p.post(ctx, opExchange, p.opts["api_base"]+"/token", form, p.clientAuth(AuthStyleInParams))
	if err != nil {
		return Grant{}, err
	}
	tr, err := p.readToken(opExchange, res, googleErrors)
	if err != nil {
		return Grant{}, err
	}
	t := newToken("", tr, p.requested(req.Scopes), now)
	t.Scopes = googleScopes(t.Scopes)
	g := Grant{Tokens: []Token{t}, Scopes: slices.Clone(t.Scopes)}
	if tr.IDToken != "" {
		g.Secrets = map[string]string{"id_token": tr.IDToken}
		if c, ok := idTokenClaims(tr.IDToken); ok {
			m := setMeta(nil, "sub", c.Sub)
			m = setMeta(m, "email", c.Email)
			m = setMeta(m, "hd", c.HD)
			if c.Email != "" {
				m = setMeta(m, "email_verified", strconv.FormatBool(c.EmailVerified))
			}
			g.Metadata = m
			g.Account = cmp.Or(c.Email, c.Sub)
		}
	}
	return g, nil
}

// googleScopes adds the short name of every aliased scope URL.
func googleScopes(s []string) []string {
	out := slices.Clone(s)
	for _, sc := range s {
		if a, ok := googleScopeAliases[sc]; ok {
			out = append(out, a)
		}
	}
	return normalizeScopes(out)
}

// idClaims are the id token claims we keep.
type idClaims struct {
	Sub           string          `json:"sub"`
	Email         string          `json:"email"`
	EmailVerified json.RawMessage `json:"email_verified"` // Google sends a bool; old tokens a string
	HD            string          `json:"hd"`
}

// googleClaims is idClaims with email_verified read.
type googleClaims struct {
	Sub, Email, HD string
	EmailVerified  bool
}

// idTokenClaims decodes the payload of a JWT id token without verifying its
// signature. That is sound here, and only here: the token came over TLS in
// the answer of Google's token endpoint to our own authenticated request
// (OpenID Connect Core §3.1.3.7 lets a client skip the check in this case).
// Never use it on an id token received any other way.
func idTokenClaims(jwt string) (googleClaims, bool) {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 || len(parts[1]) > maxBodySize {
		return googleClaims{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return googleClaims{}, false
	}
	var c idClaims
	if json.Unmarshal(payload, &c) != nil {
		return googleClaims{}, false
	}
	out := googleClaims{Sub: c.Sub, Email: c.Email, HD: c.HD}
	switch string(c.EmailVerified) {
	case "true", `"true"`:
		out.EmailVerified = true
	}
	return out, c.Sub != ""
}

// Refresh renews the access token. Google does not rotate refresh tokens:
// the stored one is kept. The scopes are the response's.
func (p *Google) Refresh(ctx context.Context, g Grant, credential string) (Grant, error) {
	out, tr, err := p.refresh(ctx, g, credential, p.opts["api_base"]+"/token", p.clientAuth(AuthStyleInParams), googleErrors)
	if err != nil {
		return Grant{}, err
	}
	for i := range out.Tokens {
		out.Tokens[i].Scopes = googleScopes(out.Tokens[i].Scopes)
	}
	out = withScopes(out)
	out.Secrets = setMeta(out.Secrets, "id_token", tr.IDToken)
	return out, nil
}

// Revoke posts the refresh token (or, without one, the access token) to
// /revoke; either revokes the whole grant. A 400 invalid_token means it is
// revoked already: success.
func (p *Google) Revoke(ctx context.Context, g Grant) error {
	t, ok := primary(g)
	if !ok {
		return nil
	}
	tok := cmp.Or(t.RefreshToken, t.AccessToken)
	if tok == "" {
		return nil
	}
	return p.revokeToken(ctx, p.opts["api_base"]+"/revoke", tok, googleErrors)
}

// Validate asks tokeninfo about the access token (POSTed, to keep it out
// of URLs). An invalid token (400) is ClassReauth; a token issued to
// another client is ClassConfig.
func (p *Google) Validate(ctx context.Context, g Grant) error {
	t, ok := primary(g)
	if !ok || t.AccessToken == "" {
		return p.errorf(opValidate, ClassReauth, "no_token")
	}
	if expiredAt(t, p.cfg.Now()) {
		return p.expiredError()
	}
	res, err := p.post(ctx, opValidate, p.opts["api_base"]+"/tokeninfo", url.Values{"access_token": {t.AccessToken}}, nil)
	if err != nil {
		return err
	}
	if e := p.apiStatus(opValidate, res); e != nil {
		return e
	}
	switch {
	case res.Status == http.StatusOK:
		var info struct {
			Aud string `json:"aud"`
			Azp string `json:"azp"`
		}
		if decodeJSON(res.Body, &info) && info.Aud != "" && info.Aud != p.cfg.ClientID && info.Azp != p.cfg.ClientID {
			return p.errorf(opValidate, ClassConfig, "audience_mismatch")
		}
		return nil
	case res.Status == http.StatusBadRequest, res.Status == http.StatusUnauthorized:
		e := p.httpError(opValidate, res, ClassReauth)
		e.Code = "invalid_token"
		return e
	}
	return p.httpError(opValidate, res, ClassTransient)
}
