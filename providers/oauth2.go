package providers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// OAuth2Config configures the generic OAuth 2.0 provider: a standard
// authorization server described by data.
type OAuth2Config struct {
	Name        string // required; the configured name, e.g. "acme"
	DisplayName string // defaults to Name

	ClientID     string // required
	ClientSecret string // required, unless PKCE with AuthStyleInParams (a public client)

	// AuthURL and TokenURL are required; RevokeURL (RFC 7009) is optional:
	// without it Revoke returns a ClassConfig *Error with Code
	// "revocation_unsupported", so that the caller knows the grant is still
	// live at the provider instead of believing it revoked. All must be
	// absolute http or https URLs.
	AuthURL, TokenURL, RevokeURL string

	// IntrospectURL is the optional RFC 7662 introspection endpoint. With
	// it, an access token issued without expires_in gets the expiry the
	// endpoint reports (Metadata["expiry_source"] = "introspect"), and the
	// provider can validate grants (see Validate). It is called with the
	// client's credentials, as the token endpoint is.
	IntrospectURL string

	// RedirectURL is required, absolute http or https. It is sent to both
	// the authorization and the token endpoint.
	RedirectURL string

	// Scopes are requested when an AuthRequest names none.
	Scopes []string
	// ScopeSeparator joins scopes in the authorization URL: " " (the
	// default, RFC 6749) or "," (Slack, Linear).
	ScopeSeparator string

	// AuthStyle is required: AuthStyleInHeader or AuthStyleInParams. There
	// is no auto-detection (see AuthStyle).
	AuthStyle AuthStyle

	// PKCE sends an S256 code challenge when an AuthRequest carries a
	// verifier, and the verifier with the code.
	PKCE bool

	// AuthParams are added to the authorization URL, TokenParams to every
	// token request (not to revocation). Neither may set a parameter the
	// provider sets itself (client_id, scope, grant_type, ...).
	AuthParams  map[string]string
	TokenParams map[string]string

	// HTTPClient is used for every call to the provider; nil means
	// http.DefaultTransport. The provider uses a copy that never follows
	// redirects, with a 30 s timeout if the client has none.
	HTTPClient *http.Client

	// Now is the clock that token lifetimes are computed with; nil means
	// time.Now.
	Now func() time.Time
}

// OAuth2 is the generic OAuth 2.0 provider (RFC 6749 authorization code
// grant, RFC 7636 PKCE, RFC 7009 revocation, RFC 7662 introspection). Its
// grants have one credential, named "". It can validate grants only when
// configured with an introspection endpoint (Info().Validation). A standard
// server has no standard identity endpoint, so Grant.Account is the
// introspection answer's username (or sub) when there is an introspection
// endpoint, and empty otherwise.
//
// An OAuth2 is safe for concurrent use.
type OAuth2 struct {
	cfg    OAuth2Config // validated; maps and slices owned
	scopes []string     // default scopes, normalized
	hc     *http.Client
	auth   clientAuth
}

var _ Provider = (*OAuth2)(nil)

// Parameters the provider sets itself, which AuthParams and TokenParams must
// not override.
var (
	reservedAuthParams = []string{
		"response_type", "client_id", "redirect_uri", "scope", "state",
		"code_challenge", "code_challenge_method",
	}
	reservedTokenParams = []string{
		"grant_type", "code", "redirect_uri", "code_verifier", "refresh_token",
		"client_id", "client_secret", "client_assertion", "client_assertion_type",
	}
)

// NewOAuth2 validates cfg and returns a provider for it. cfg's maps and
// slices are copied; cfg.HTTPClient is copied shallowly (see OAuth2Config).
func NewOAuth2(cfg OAuth2Config) (*OAuth2, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("providers: oauth2 provider %q: %s", cfg.Name, fmt.Sprintf(format, args...))
	}
	if cfg.Name == "" || strings.ContainsFunc(cfg.Name, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return nil, bad("name must be non-empty, without spaces or control characters")
	}
	if cfg.DisplayName == "" {
		cfg.DisplayName = cfg.Name
	}
	if cfg.ClientID == "" {
		return nil, bad("client id is required")
	}
	switch cfg.AuthStyle {
	case AuthStyleInHeader, AuthStyleInParams:
	case 0:
		return nil, bad("auth style is required (AuthStyleInHeader or AuthStyleInParams)")
	default:
		return nil, bad("invalid auth style %v", cfg.AuthStyle)
	}
	if cfg.ClientSecret == "" && !(cfg.PKCE && cfg.AuthStyle == AuthStyleInParams) {
		return nil, bad("client secret is required (only a PKCE client with AuthStyleInParams may be public)")
	}
	for _, u := range []struct {
		name, url string
		optional  bool
	}{
		{"auth URL", cfg.AuthURL, false},
		{"token URL", cfg.TokenURL, false},
		{"revoke URL", cfg.RevokeURL, true},
		{"introspection URL", cfg.IntrospectURL, true},
		{"redirect URL", cfg.RedirectURL, false},
	} {
		if u.url == "" && u.optional {
			continue
		}
		if err := checkURL(u.url); err != nil {
			return nil, bad("%s: %v", u.name, err)
		}
	}
	switch cfg.ScopeSeparator {
	case "":
		cfg.ScopeSeparator = " "
	case " ", ",":
	default:
		return nil, bad("scope separator must be \" \" or \",\", not %q", cfg.ScopeSeparator)
	}
	for _, k := range slices.Sorted(maps.Keys(cfg.AuthParams)) {
		if k == "" || slices.Contains(reservedAuthParams, k) {
			return nil, bad("auth param %q cannot be set", k)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(cfg.TokenParams)) {
		if k == "" || slices.Contains(reservedTokenParams, k) {
			return nil, bad("token param %q cannot be set", k)
		}
	}
	cfg.Scopes = slices.Clone(cfg.Scopes)
	cfg.AuthParams = maps.Clone(cfg.AuthParams)
	cfg.TokenParams = maps.Clone(cfg.TokenParams)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	p := &OAuth2{
		cfg:    cfg,
		scopes: normalizeScopes(cfg.Scopes),
		hc:     newHTTPClient(cfg.HTTPClient),
		auth:   clientAuth{ID: cfg.ClientID, Secret: cfg.ClientSecret, Style: cfg.AuthStyle},
	}
	return p, nil
}

// checkURL accepts absolute http and https URLs without a fragment or
// user info.
func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%q is not an absolute http or https URL", s)
	}
	if u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%q must have no fragment and no user info", s)
	}
	return nil
}

// Info describes the provider.
func (p *OAuth2) Info() Info {
	return Info{
		Name:          p.cfg.Name,
		Kind:          "oauth2",
		DisplayName:   p.cfg.DisplayName,
		DefaultScopes: slices.Clone(p.scopes),
		PKCE:          p.cfg.PKCE,
		Refresh:       true,
		Revocation:    p.cfg.RevokeURL != "",
		Validation:    p.cfg.IntrospectURL != "",
		ClientID:      p.cfg.ClientID,
		RedirectURL:   p.cfg.RedirectURL,
	}
}

// AuthURL returns the authorization URL for req. It fails if req has no
// state, has options (the generic provider knows none), or carries a
// verifier that RFC 7636 §4.1 does not allow. Without PKCE the verifier is
// ignored.
func (p *OAuth2) AuthURL(req AuthRequest) (string, error) {
	if err := p.checkOptions(opAuthorize, req.Options); err != nil {
		return "", err
	}
	if req.State == "" {
		return "", p.invalid(opAuthorize, "missing_state", "state is required")
	}
	c := oauth2.Config{
		ClientID:    p.cfg.ClientID,
		Endpoint:    oauth2.Endpoint{AuthURL: p.cfg.AuthURL},
		RedirectURL: p.cfg.RedirectURL,
	}
	if s := p.requested(req.Scopes); len(s) > 0 {
		// One pre-joined element: AuthCodeURL joins with spaces.
		c.Scopes = []string{strings.Join(s, p.cfg.ScopeSeparator)}
	}
	var opts []oauth2.AuthCodeOption
	for _, k := range slices.Sorted(maps.Keys(p.cfg.AuthParams)) {
		opts = append(opts, oauth2.SetAuthURLParam(k, p.cfg.AuthParams[k]))
	}
	if p.cfg.PKCE && req.Verifier != "" {
		if !validVerifier(req.Verifier) {
			return "", p.invalid(opAuthorize, "invalid_verifier", "the PKCE verifier must be 43 to 128 unreserved characters")
		}
		opts = append(opts, oauth2.S256ChallengeOption(req.Verifier))
	}
	return c.AuthCodeURL(req.State, opts...), nil
}

// validVerifier reports whether v is a code verifier as RFC 7636 §4.1 defines
// it.
func validVerifier(v string) bool {
	if len(v) < 43 || len(v) > 128 {
		return false
	}
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '.', c == '_', c == '~':
		default:
			return false
		}
	}
	return true
}

// Exchange redeems req.Code, sending it exactly once, with redirect_uri and
// (with PKCE) the verifier. The grant's scopes are those the response names,
// or the requested ones if it names none (RFC 6749 §5.1). Errors are *Error,
// classified as tokenError says; an exchange is never retried, since the code
// may have been spent even when the answer is lost.
func (p *OAuth2) Exchange(ctx context.Context, req ExchangeRequest) (Grant, error) {
	if err := p.checkOptions(opExchange, req.Options); err != nil {
		return Grant{}, err
	}
	if req.Code == "" {
		return Grant{}, &Error{Class: ClassInvalidRequest, Code: "missing_code", Op: opExchange, Provider: p.cfg.Name}
	}
	form := url.Values{
		"grant_type":   {"authorization_code"},
		"code":         {req.Code},
		"redirect_uri": {p.cfg.RedirectURL},
	}
	if p.cfg.PKCE && req.Verifier != "" {
		if !validVerifier(req.Verifier) {
			// Checked here too: the server would reject it only after
			// spending the code.
			return Grant{}, p.invalid(opExchange, "invalid_verifier", "the PKCE verifier must be 43 to 128 unreserved characters")
		}
		form.Set("code_verifier", req.Verifier)
	}
	now := p.cfg.Now()
	tr, err := p.token(ctx, opExchange, form, now)
	if err != nil {
		return Grant{}, err
	}
	t := Token{
		AccessToken:  tr.AccessToken,
		RefreshToken: tr.RefreshToken,
		TokenType:    normalizeTokenType(tr.TokenType),
		Scopes:       p.requested(req.Scopes),
	}
	if tr.HasScope {
		t.Scopes = tr.Scope
	}
	if tr.ExpiresIn > 0 {
		t.Expiry = now.Add(tr.ExpiresIn)
	}
	if tr.RefreshToken != "" && tr.RefreshExpiresIn > 0 {
		t.RefreshExpiry = now.Add(tr.RefreshExpiresIn)
	}
	g := Grant{Tokens: []Token{t}, Scopes: slices.Clone(t.Scopes)}
	if p.cfg.IntrospectURL != "" {
		// One introspection names the account the user connected (the
		// connect page's "Connected as"), and gives the expiry if the
		// token response had none.
		in := p.introspect(ctx, t.AccessToken)
		g.Account = in.account()
		g.Tokens[0].Expiry, g.Metadata = p.expiryFrom(in, t, nil, now)
	}
	if tr.IDToken != "" {
		g.Secrets = map[string]string{"id_token": tr.IDToken}
	}
	return g, nil
}

// Refresh renews the credential named credential (only "" exists) with its
// refresh token, sent exactly once. The returned grant is a deep copy of g
// with that credential replaced: the refresh token is the rotated one if the
// response has one and the old one otherwise; Expiry comes from expires_in
// (zero without it); the scopes are the response's, or the old ones. A grant
// without a refresh token fails with ClassReauth, Code "no_refresh_token";
// an unknown credential with ClassInvalidRequest, Code "unknown_credential".
func (p *OAuth2) Refresh(ctx context.Context, g Grant, credential string) (Grant, error) {
	i := slices.IndexFunc(g.Tokens, func(t Token) bool { return t.Name == credential })
	if i < 0 {
		return Grant{}, &Error{Class: ClassInvalidRequest, Code: "unknown_credential", Op: opRefresh, Provider: p.cfg.Name}
	}
	old := g.Tokens[i]
	if old.RefreshToken == "" {
		return Grant{}, &Error{Class: ClassReauth, Code: "no_refresh_token", Op: opRefresh, Provider: p.cfg.Name}
	}
	form := url.Values{
		"grant_type":    {"refresh_token"},
		"refresh_token": {old.RefreshToken},
	}
	now := p.cfg.Now()
	tr, err := p.token(ctx, opRefresh, form, now)
	if err != nil {
		return Grant{}, err
	}
	t := old
	t.AccessToken = tr.AccessToken
	t.TokenType = normalizeTokenType(tr.TokenType)
	t.Expiry = time.Time{}
	if tr.ExpiresIn > 0 {
		t.Expiry = now.Add(tr.ExpiresIn)
	}
	var meta map[string]string
	t.Expiry, meta = p.expiry(ctx, t, g.Metadata, now)
	if tr.RefreshToken != "" && tr.RefreshToken != old.RefreshToken {
		t.RefreshToken = tr.RefreshToken
		t.RefreshExpiry = time.Time{} // the old one's expiry says nothing of the new one
	}
	if tr.RefreshExpiresIn > 0 {
		t.RefreshExpiry = now.Add(tr.RefreshExpiresIn)
	}
	if tr.HasScope {
		t.Scopes = tr.Scope
	} else {
		t.Scopes = slices.Clone(old.Scopes)
	}
	out := cloneGrant(g)
	out.Tokens[i] = t
	out.Metadata = meta
	var all []string
	for _, t := range out.Tokens {
		all = append(all, t.Scopes...)
	}
	out.Scopes = normalizeScopes(all)
	out.Secrets = setMeta(out.Secrets, "id_token", tr.IDToken)
	return out, nil
}

// Revoke revokes g at the provider (RFC 7009): it sends the primary
// credential's refresh token if it has one (which revokes the whole grant at
// a compliant server), else its access token. Success, an unknown token
// (RFC 7009 §2.2), and a 400 whose code alreadyRevoked accepts return nil;
// so does a grant without tokens. Other failures are *Error: 429 and 5xx transient,
// client errors and redirects ClassConfig, anything else
// ClassInvalidRequest. Without a RevokeURL it returns ClassConfig,
// "revocation_unsupported".
func (p *OAuth2) Revoke(ctx context.Context, g Grant) error {
	if p.cfg.RevokeURL == "" {
		return &Error{Class: ClassConfig, Code: "revocation_unsupported", Op: opRevoke, Provider: p.cfg.Name}
	}
	form, ok := tokenForm(g)
	if !ok {
		return nil
	}
	res, err := postForm(ctx, p.hc, p.cfg.RevokeURL, form, &p.auth)
	if err != nil {
		return transportError(ctx, p.cfg.Name, opRevoke, err)
	}
	revoked, code := revokeOutcome(res)
	if revoked {
		return nil
	}
	return tokenError(p.cfg.Name, opRevoke, res.Status, res.Header, code, p.cfg.Now())
}

// expiry returns t's expiry and the grant's metadata m updated to say where
// the expiry came from. An expiry from expires_in stands; without one, and
// with an IntrospectURL, the introspection endpoint is asked (bounded by
// introspectTimeout). If it does not answer usably the expiry stays zero:
// the token response has already been spent, so this never fails, and the
// vault's configured token lifetime, if any, applies. m is not modified.
func (p *OAuth2) expiry(ctx context.Context, t Token, m map[string]string, now time.Time) (time.Time, map[string]string) {
	m = maps.Clone(m)
	delete(m, "expiry_source")
	if !t.Expiry.IsZero() || p.cfg.IntrospectURL == "" {
		return t.Expiry, emptyNil(m)
	}
	return p.expiryFrom(p.introspect(ctx, t.AccessToken), t, m, now)
}

// expiryFrom is expiry with the introspection answer in hand (nil: none
// usable).
func (p *OAuth2) expiryFrom(in *introspection, t Token, m map[string]string, now time.Time) (time.Time, map[string]string) {
	m = maps.Clone(m)
	delete(m, "expiry_source")
	if !t.Expiry.IsZero() {
		return t.Expiry, emptyNil(m)
	}
	exp, ok := in.expiry(now, maxExpiresIn)
	if !ok {
		return time.Time{}, emptyNil(m)
	}
	return exp, setMeta(m, "expiry_source", "introspect")
}

// introspect asks the introspection endpoint about an access token,
// bounded by introspectTimeout; nil if it did not answer usably.
func (p *OAuth2) introspect(ctx context.Context, accessToken string) *introspection {
	ctx, cancel := boundedContext(ctx)
	defer cancel()
	res, err := postForm(ctx, p.hc, p.cfg.IntrospectURL, url.Values{"token": {accessToken}, "token_type_hint": {"access_token"}}, &p.auth)
	if err != nil {
		return nil
	}
	return readIntrospection(res)
}

// emptyNil returns nil for an empty map.
func emptyNil(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return m
}

// Validate checks g at the introspection endpoint without refreshing it. It
// asks about the primary credential's refresh token if it has one (RFC 7662
// §2.1 requires a server to look a token up whatever its type) and else
// about its access token. Active: nil. Inactive: ClassReauth, Code
// "inactive": a dead refresh token, or an access token that nothing can
// renew, is a dead grant. A failed call is classified by
// introspectionError. Without an IntrospectURL it returns ClassConfig,
// "validation_unsupported".
func (p *OAuth2) Validate(ctx context.Context, g Grant) error {
	if p.cfg.IntrospectURL == "" {
		return &Error{Class: ClassConfig, Code: "validation_unsupported", Op: opValidate, Provider: p.cfg.Name}
	}
	form, ok := tokenForm(g)
	if !ok {
		return &Error{Class: ClassReauth, Code: "no_token", Op: opValidate, Provider: p.cfg.Name}
	}
	res, err := postForm(ctx, p.hc, p.cfg.IntrospectURL, form, &p.auth)
	if err != nil {
		return transportError(ctx, p.cfg.Name, opValidate, err)
	}
	in := readIntrospection(res)
	switch {
	case in == nil:
		return introspectionError(p.cfg.Name, opValidate, res, p.cfg.Now())
	case !in.Active:
		return &Error{Class: ClassReauth, Code: "inactive", Op: opValidate, Provider: p.cfg.Name}
	}
	return nil
}

// tokenForm names the token that stands for g at the revocation and
// introspection endpoints (RFC 7009 and 7662 both take token and
// token_type_hint): the primary credential's refresh token if it has one,
// else its access token. It reports false if there is neither.
func tokenForm(g Grant) (url.Values, bool) {
	t, ok := g.Token("")
	if !ok && len(g.Tokens) > 0 {
		t = g.Tokens[0]
	}
	switch {
	case t.RefreshToken != "":
		return url.Values{"token": {t.RefreshToken}, "token_type_hint": {"refresh_token"}}, true
	case t.AccessToken != "":
		return url.Values{"token": {t.AccessToken}, "token_type_hint": {"access_token"}}, true
	}
	return nil, false
}

// token sends one token request and checks the answer.
func (p *OAuth2) token(ctx context.Context, op string, form url.Values, now time.Time) (*tokenResponse, error) {
	for k, v := range p.cfg.TokenParams {
		form.Set(k, v)
	}
	res, err := postForm(ctx, p.hc, p.cfg.TokenURL, form, &p.auth)
	if err != nil {
		return nil, transportError(ctx, p.cfg.Name, op, err)
	}
	return readTokenResponse(p.cfg.Name, op, res, now)
}

// requested returns the normalized scopes to request: s, or the defaults.
func (p *OAuth2) requested(s []string) []string {
	if n := normalizeScopes(s); n != nil {
		return n
	}
	return slices.Clone(p.scopes)
}

func (p *OAuth2) checkOptions(op string, opts map[string]string) error {
	if len(opts) == 0 {
		return nil
	}
	keys := slices.Sorted(maps.Keys(opts))
	return p.invalid(op, "unknown_option", fmt.Sprintf("unknown options %q", keys))
}

// invalid returns a ClassInvalidRequest *Error for a caller's mistake,
// wrapped with a message that says what the mistake was (never a secret).
func (p *OAuth2) invalid(op, code, msg string) error {
	return fmt.Errorf("%w: %s", &Error{Class: ClassInvalidRequest, Code: code, Op: op, Provider: p.cfg.Name}, msg)
}

// cloneGrant returns a deep copy of g.
func cloneGrant(g Grant) Grant {
	out := g
	out.Tokens = slices.Clone(g.Tokens)
	for i := range out.Tokens {
		out.Tokens[i].Scopes = slices.Clone(out.Tokens[i].Scopes)
	}
	out.Scopes = slices.Clone(g.Scopes)
	out.Metadata = maps.Clone(g.Metadata)
	out.Secrets = maps.Clone(g.Secrets)
	return out
}

// alreadyRevoked reports whether a 400 from a revocation endpoint with this
// error code means the token is already dead. RFC 7009 §2.2 wants a 200 for
// an invalid token, but servers answer invalid_token, or invalid_grant as
// their token endpoint would. unsupported_token_type is taken the same way:
// the server does not revoke this kind of token, and there is nothing more a
// client can do about it.
// revokeOutcome reads an RFC 7009 revocation answer: revoked is true for a
// 2xx, and for a 400 whose error says the token was already dead (RFC 7009
// §2.2: an invalid token is not an error). Otherwise code is the error code
// the provider sent, if any.
func revokeOutcome(res *httpResult) (revoked bool, code string) {
	if res.Status/100 == 2 {
		return true, ""
	}
	if tr, err := parseTokenResponse(res.Header.Get("Content-Type"), res.Body); err == nil {
		code = tr.Error
	}
	return res.Status == http.StatusBadRequest && alreadyRevoked(code), code
}

func alreadyRevoked(code string) bool {
	switch code {
	case "invalid_token", "invalid_grant", "unsupported_token_type":
		return true
	}
	return false
}
