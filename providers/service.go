package providers

// What the named providers (slack.go, github.go, linear.go, google.go,
// salesforce.go) share: their configuration, option parsing, and the small
// steps every one of them takes (build an authorization URL, turn a token
// response into a Token, classify an answer with a table of the service's
// own error codes). Quirks stay in each service's file.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// ServiceConfig configures one of the named providers: NewSlack, NewGitHub,
// NewLinear, NewGoogle and NewSalesforce. Each documents the Options it
// takes; an unknown option is an error, and so is a missing required field.
type ServiceConfig struct {
	// Name is the configured name, e.g. "slack" or "slack-eu"; default the
	// kind.
	Name        string
	DisplayName string // default the service's name, e.g. "Slack"

	ClientID     string // required
	ClientSecret string // required unless the provider documents otherwise

	// RedirectURL is required, absolute http or https, and registered at
	// the service exactly as given: https://<public_url>/oauth/callback/<name>.
	RedirectURL string

	// Scopes are requested when a flow names none.
	Scopes []string

	// PKCE sends an S256 code challenge when a flow carries a verifier.
	PKCE bool

	// Options are the provider's settings (endpoint bases, defaults). Each
	// constructor lists the ones it knows.
	Options map[string]string

	// HTTPClient is used for every call to the service; nil means
	// http.DefaultTransport. The provider uses a copy that never follows
	// redirects, with a 30 s timeout if the client has none.
	HTTPClient *http.Client

	// Now is the clock token lifetimes are computed with; nil: time.Now.
	Now func() time.Time
}

// service is the part every named provider shares. It is immutable after
// newService.
type service struct {
	kind   string
	cfg    ServiceConfig // validated; maps and slices owned
	scopes []string      // default scopes, normalized
	opts   map[string]string
	hc     *http.Client
}

// newService validates cfg for kind. defaults lists every option the kind
// knows with its default value ("" for none); the result's opts holds them
// all, overridden by cfg.Options. Options whose name ends in "_base" must be
// absolute http or https URLs and lose any trailing slash.
func newService(kind, display string, cfg ServiceConfig, secretOptional bool, defaults map[string]string) (*service, error) {
	if cfg.Name == "" {
		cfg.Name = kind
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("providers: %s provider %q: %s", kind, cfg.Name, fmt.Sprintf(format, args...))
	}
	if strings.ContainsFunc(cfg.Name, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return nil, bad("name must not contain spaces or control characters")
	}
	if cfg.DisplayName == "" {
		cfg.DisplayName = display
	}
	if cfg.ClientID == "" {
		return nil, bad("client id is required")
	}
	if cfg.ClientSecret == "" && !secretOptional {
		return nil, bad("client secret is required")
	}
	if err := checkURL(cfg.RedirectURL); err != nil {
		return nil, bad("redirect URL: %v", err)
	}
	opts := maps.Clone(defaults)
	if opts == nil {
		opts = map[string]string{}
	}
	for _, k := range slices.Sorted(maps.Keys(cfg.Options)) {
		if _, ok := defaults[k]; !ok {
			return nil, bad("unknown option %q (known: %s)", k, strings.Join(slices.Sorted(maps.Keys(defaults)), ", "))
		}
		opts[k] = strings.TrimSpace(cfg.Options[k])
	}
	for k, v := range opts {
		if strings.HasSuffix(k, "_base") {
			v = strings.TrimRight(v, "/")
			if err := checkURL(v); err != nil {
				return nil, bad("option %s: %v", k, err)
			}
			opts[k] = v
		}
	}
	cfg.Scopes = slices.Clone(cfg.Scopes)
	cfg.Options = nil
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &service{
		kind:   kind,
		cfg:    cfg,
		scopes: normalizeScopes(cfg.Scopes),
		opts:   opts,
		hc:     newHTTPClient(cfg.HTTPClient),
	}, nil
}

// info is the Info every named provider starts from.
func (s *service) info() Info {
	return Info{
		Name:          s.cfg.Name,
		Kind:          s.kind,
		DisplayName:   s.cfg.DisplayName,
		DefaultScopes: slices.Clone(s.scopes),
		PKCE:          s.cfg.PKCE,
		Refresh:       true,
		Revocation:    true,
		Validation:    true,
		ClientID:      s.cfg.ClientID,
		RedirectURL:   s.cfg.RedirectURL,
	}
}

// requested returns the normalized scopes to request: scopes, or the
// defaults.
func (s *service) requested(scopes []string) []string {
	if n := normalizeScopes(scopes); n != nil {
		return n
	}
	return slices.Clone(s.scopes)
}

// errorf returns a classified error without a message of its own.
func (s *service) errorf(op string, class Class, code string) *Error {
	return &Error{Class: class, Code: code, Op: op, Provider: s.cfg.Name}
}

// invalid returns a ClassInvalidRequest error for a caller's mistake, with
// a message saying what it was (never a secret).
func (s *service) invalid(op, code, msg string) error {
	return fmt.Errorf("%w: %s", s.errorf(op, ClassInvalidRequest, code), msg)
}

// checkFlowOptions fails for any option of a flow not in allowed.
func (s *service) checkFlowOptions(op string, opts map[string]string, allowed ...string) error {
	var unknown []string
	for k := range opts {
		if !slices.Contains(allowed, k) {
			unknown = append(unknown, k)
		}
	}
	if unknown == nil {
		return nil
	}
	slices.Sort(unknown)
	return s.invalid(op, "unknown_option", fmt.Sprintf("unknown options %q", unknown))
}

// authURL checks the parts of req every service needs and returns endpoint
// with params, plus state, redirect_uri, client_id and, with PKCE and a
// verifier, the S256 challenge.
func (s *service) authURL(endpoint string, req AuthRequest, params url.Values) (string, error) {
	if req.State == "" {
		return "", s.invalid(opAuthorize, "missing_state", "state is required")
	}
	q := url.Values{}
	for k, vs := range params {
		if len(vs) > 0 && vs[0] != "" {
			q.Set(k, vs[0])
		}
	}
	q.Set("client_id", s.cfg.ClientID)
	q.Set("redirect_uri", s.cfg.RedirectURL)
	q.Set("state", req.State)
	if s.cfg.PKCE && req.Verifier != "" {
		if !validVerifier(req.Verifier) {
			return "", s.invalid(opAuthorize, "invalid_verifier", "the PKCE verifier must be 43 to 128 unreserved characters")
		}
		q.Set("code_challenge", oauth2.S256ChallengeFromVerifier(req.Verifier))
		q.Set("code_challenge_method", "S256")
	}
	sep := "?"
	if strings.Contains(endpoint, "?") {
		sep = "&"
	}
	return endpoint + sep + q.Encode(), nil
}

// codeForm is the form of an authorization-code token request.
func (s *service) codeForm(req ExchangeRequest) (url.Values, error) {
	if req.Code == "" {
		return nil, s.errorf(opExchange, ClassInvalidRequest, "missing_code")
	}
	f := url.Values{
		"grant_type":   {"authorization_code"},
		"code":         {req.Code},
		"redirect_uri": {s.cfg.RedirectURL},
	}
	if s.cfg.PKCE && req.Verifier != "" {
		f.Set("code_verifier", req.Verifier)
	}
	return f, nil
}

// clientAuth returns how the service's client authenticates with style; a
// public client (no secret) always sends its id in the body.
func (s *service) clientAuth(style AuthStyle) *clientAuth {
	if s.cfg.ClientSecret == "" {
		style = AuthStyleInParams
	}
	return &clientAuth{ID: s.cfg.ClientID, Secret: s.cfg.ClientSecret, Style: style}
}

// post sends one form to endpoint and returns the answer; a transport
// failure is already a classified *Error.
func (s *service) post(ctx context.Context, op, endpoint string, form url.Values, auth *clientAuth) (*httpResult, error) {
	res, err := postForm(ctx, s.hc, endpoint, form, auth)
	if err != nil {
		return nil, transportError(ctx, s.cfg.Name, op, err)
	}
	return res, nil
}

// send sends req (built by the caller: API calls with a bearer token, JSON
// bodies, other methods) and returns the answer; a transport failure is
// already a classified *Error.
func (s *service) send(ctx context.Context, op string, req *http.Request) (*httpResult, error) {
	res, err := do(s.hc, req)
	if err != nil {
		return nil, transportError(ctx, s.cfg.Name, op, err)
	}
	return res, nil
}

// newRequest builds a request with a context, an optional bearer token and
// an optional JSON body (marshalled from body).
func newRequest(ctx context.Context, method, endpoint, bearer string, body any) (*http.Request, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		r = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, method, endpoint, r)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	return req, nil
}

// classify classifies a failed answer at a token (or OAuth) endpoint: the
// rules of tokenError, except that codes in table take the class the table
// gives them (a transient one honouring Retry-After). Redirects, 429 and
// 5xx keep tokenError's class whatever the code. A failed exchange is never
// ClassReauth: there is no grant yet, so a refused code is
// ClassInvalidRequest.
func (s *service) classify(op string, res *httpResult, code string, table map[string]Class) *Error {
	now := s.cfg.Now()
	e := tokenError(s.cfg.Name, op, res.Status, res.Header, code, now)
	fixed := res.Status/100 == 3 || res.Status == http.StatusTooManyRequests || res.Status >= 500
	if c, ok := table[code]; ok && code != "" && !fixed {
		e.Class = c
		if c == ClassTransient {
			e.RetryAfter = parseRetryAfter(res.Header, now)
		}
	}
	if op == opExchange && e.Class == ClassReauth {
		e.Class = ClassInvalidRequest
	}
	return e
}

// apiStatus classifies the answers of a service's API (identity, liveness,
// revocation) that mean the same everywhere: a redirect (Config: we never
// follow one), 408, 429 and 5xx (Transient, with Retry-After). It returns
// nil for anything else, which the caller classifies.
func (s *service) apiStatus(op string, res *httpResult) *Error {
	switch st := res.Status; {
	case st/100 == 3:
		return &Error{Class: ClassConfig, Code: "redirect", Status: st, Op: op, Provider: s.cfg.Name}
	case st == http.StatusRequestTimeout, st == http.StatusTooManyRequests, st >= 500:
		return &Error{Class: ClassTransient, Code: "http_" + strconv.Itoa(st), Status: st, Op: op, Provider: s.cfg.Name,
			RetryAfter: parseRetryAfter(res.Header, s.cfg.Now())}
	}
	return nil
}

// httpError is an API answer classified by the caller.
func (s *service) httpError(op string, res *httpResult, class Class) *Error {
	return &Error{Class: class, Code: "http_" + strconv.Itoa(res.Status), Status: res.Status, Op: op, Provider: s.cfg.Name}
}

// readToken parses a token endpoint's answer and checks it the standard way
// (2xx, an access token, no error), classifying failures with table.
func (s *service) readToken(op string, res *httpResult, table map[string]Class) (*tokenResponse, error) {
	var tr *tokenResponse
	code := ""
	if res.Body != nil {
		if r, err := parseTokenResponse(res.Header.Get("Content-Type"), res.Body); err == nil {
			tr, code = r, r.Error
		}
	}
	if res.Status/100 == 2 && code == "" && tr != nil && tr.AccessToken != "" {
		return tr, nil
	}
	return nil, s.classify(op, res, code, table)
}

// newToken makes the credential named name from a token response received
// at now; scopes are the response's, or requested if it names none
// (RFC 6749 §5.1).
func newToken(name string, tr *tokenResponse, requested []string, now time.Time) Token {
	t := Token{
		Name:         name,
		AccessToken:  tr.AccessToken,
		RefreshToken: tr.RefreshToken,
		TokenType:    normalizeTokenType(tr.TokenType),
		Scopes:       slices.Clone(requested),
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
	return t
}

// refreshedToken is old renewed by a refresh response received at now: a
// rotated refresh token replaces the old one (and its expiry), an absent
// one keeps it; Expiry comes from expires_in (zero without it: the caller
// sets it if the service says nothing); scopes are the response's, or the
// old ones.
func refreshedToken(old Token, tr *tokenResponse, now time.Time) Token {
	t := old
	t.Scopes = slices.Clone(old.Scopes)
	t.AccessToken = tr.AccessToken
	t.TokenType = normalizeTokenType(tr.TokenType)
	t.Expiry = time.Time{}
	if tr.ExpiresIn > 0 {
		t.Expiry = now.Add(tr.ExpiresIn)
	}
	if tr.RefreshToken != "" && tr.RefreshToken != old.RefreshToken {
		t.RefreshToken = tr.RefreshToken
		t.RefreshExpiry = time.Time{}
	}
	if tr.RefreshExpiresIn > 0 {
		t.RefreshExpiry = now.Add(tr.RefreshExpiresIn)
	}
	if tr.HasScope {
		t.Scopes = tr.Scope
	}
	return t
}

// refresh renews the named credential of g at tokenURL (RFC 6749 §6),
// sending the refresh token once, and returns the updated grant (a deep
// copy, scopes recomputed) with the response, for the caller's extras.
func (s *service) refresh(ctx context.Context, g Grant, credential, tokenURL string, auth *clientAuth, table map[string]Class) (Grant, *tokenResponse, error) {
	i, err := s.credential(g, credential)
	if err != nil {
		return Grant{}, nil, err
	}
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {g.Tokens[i].RefreshToken}}
	now := s.cfg.Now()
	res, err := s.post(ctx, opRefresh, tokenURL, form, auth)
	if err != nil {
		return Grant{}, nil, err
	}
	tr, err := s.readToken(opRefresh, res, table)
	if err != nil {
		return Grant{}, nil, err
	}
	out := cloneGrant(g)
	out.Tokens[i] = refreshedToken(g.Tokens[i], tr, now)
	return withScopes(out), tr, nil
}

// credential finds the token to refresh, failing the way Refresh promises.
func (s *service) credential(g Grant, name string) (int, error) {
	i := slices.IndexFunc(g.Tokens, func(t Token) bool { return t.Name == name })
	if i < 0 {
		return -1, s.errorf(opRefresh, ClassInvalidRequest, "unknown_credential")
	}
	if g.Tokens[i].RefreshToken == "" {
		return -1, s.errorf(opRefresh, ClassReauth, "no_refresh_token")
	}
	return i, nil
}

// revokeToken posts token to an RFC 7009 endpoint with no client
// authentication (Google, Salesforce) and reads the answer: success, or
// already dead, is nil; anything else is classified with table.
func (s *service) revokeToken(ctx context.Context, endpoint, token string, table map[string]Class) error {
	res, err := s.post(ctx, opRevoke, endpoint, url.Values{"token": {token}}, nil)
	if err != nil {
		return err
	}
	if revoked, code := revokeOutcome(res); !revoked {
		return s.classify(opRevoke, res, code, table)
	}
	return nil
}

// retag returns err with the Op of its *Error set to op (on a copy), for
// a failure of one step reported as another (a refresh done to revoke).
func retag(err error, op string) error {
	var pe *Error
	if errors.As(err, &pe) {
		c := *pe
		c.Op = op
		return &c
	}
	return err
}

// revocable returns an access token of t, a credential of g, to revoke with
// at a service that authenticates revocation with the token itself: t's
// own, or, if it is known to be expired and t can be refreshed, a fresh one
// from p (which spends the refresh token; the grant is being destroyed).
// dead reports that the refresh found the grant dead already: there is
// nothing left to revoke.
func revocable(ctx context.Context, p Provider, g Grant, t Token, now time.Time) (token string, dead bool, err error) {
	if !expiredAt(t, now) || t.RefreshToken == "" {
		return t.AccessToken, false, nil
	}
	ng, err := p.Refresh(ctx, g, t.Name)
	switch {
	case ClassOf(err) == ClassReauth:
		return "", true, nil
	case err != nil:
		return "", false, retag(err, opRevoke)
	}
	nt, _ := ng.Token(t.Name)
	return nt.AccessToken, false, nil
}

// primary returns the grant's primary credential (or its first one).
func primary(g Grant) (Token, bool) {
	if t, ok := g.Token(""); ok {
		return t, true
	}
	if len(g.Tokens) > 0 {
		return g.Tokens[0], true
	}
	return Token{}, false
}

// expiredAt reports whether t's access token is known to be expired at now.
// Validators do not ask the service about such a token, since the answer
// would say nothing about the grant; they return expiredError instead.
func expiredAt(t Token, now time.Time) bool {
	return !t.Expiry.IsZero() && !now.Before(t.Expiry)
}

// expiredError is what a Validator returns for an access token that has
// expired: the grant may well be live, so it is transient, and the caller
// should refresh (which checks the grant) rather than validate.
func (s *service) expiredError() *Error {
	return s.errorf(opValidate, ClassTransient, "access_token_expired")
}

// withScopes returns g with Scopes recomputed from its tokens.
func withScopes(g Grant) Grant {
	var all []string
	for _, t := range g.Tokens {
		all = append(all, t.Scopes...)
	}
	g.Scopes = normalizeScopes(all)
	return g
}

// setMeta sets key in m to v unless v is empty, and returns m (allocated if
// nil).
func setMeta(m map[string]string, key, v string) map[string]string {
	if v == "" {
		return m
	}
	if m == nil {
		m = map[string]string{}
	}
	m[key] = v
	return m
}

// decodeJSON decodes a bounded API body (already read by do) into v.
func decodeJSON(body []byte, v any) bool {
	return body != nil && json.Unmarshal(body, v) == nil
}

// parseBool reads a boolean option.
func parseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "true", "yes", "on", "1":
		return true, nil
	case "false", "no", "off", "0", "":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean", s)
}
