// Package providertest is a strict OAuth 2.0 authorization server: the
// authorization code grant with PKCE, refresh-token rotation with reuse
// detection, RFC 7009 revocation, RFC 7662 introspection and a userinfo
// endpoint, with faults that
// can be injected at run time. Tests run the providers against it, and
// tokenvault's dev mode mounts it as its built-in "sandbox" provider.
//
// It approves every authorization request at once (no browser, no login
// page) unless told to deny the next one. Its tokens are opaque random
// strings with recognizable prefixes ("sbx_at_", "sbx_rt_", "sbx_code_").
// It keeps everything in memory.
package providertest

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tokenvault/tokenvault/providers"
)

// Defaults for Options.
const (
	DefaultClientID     = "sandbox-client"
	DefaultClientSecret = "sandbox-secret"
	DefaultRedirectURI  = "https://app.example.test/oauth/callback"
	DefaultAccount      = "sandbox-user"
)

// Options configure a Server. The zero value is a working server.
type Options struct {
	// Prefix is the path the endpoints live under, e.g. "/sandbox" for
	// "/sandbox/authorize". Empty means the root.
	Prefix string
	// BaseURL is scheme://host[:port] the server is reachable at, used by
	// URL and Config. Set it when mounting the server with New; Start sets
	// it to the test server's URL.
	BaseURL string

	// The one registered client. ClientID and ClientSecret default to
	// DefaultClientID and DefaultClientSecret; AuthStyle to
	// providers.AuthStyleInHeader. A client authenticating the other way
	// is rejected with invalid_client.
	ClientID, ClientSecret string
	AuthStyle              providers.AuthStyle

	// RedirectURIs are the registered redirect URIs, matched exactly;
	// default {DefaultRedirectURI}. Config uses the first.
	RedirectURIs []string

	// Scopes are the default scopes Config asks for; default {"read"}.
	Scopes []string
	// DeniedScopes are never granted, even when requested: the way to test
	// a partial grant.
	DeniedScopes []string

	// Account is who approves authorization requests; default
	// DefaultAccount. A request's login_hint parameter overrides it.
	Account string

	// RequirePKCE rejects authorization requests without an S256
	// challenge. A challenge, when present, is always enforced.
	RequirePKCE bool
	// DisableRotation keeps a grant's refresh token across refreshes;
	// refresh responses then carry no refresh_token. By default every
	// refresh rotates it, and presenting a rotated one revokes the grant.
	DisableRotation bool

	// CodeTTL is how long an authorization code is valid; default 1 min.
	CodeTTL time.Duration
	// AccessTokenTTL is how long access tokens are valid; default 1 h.
	AccessTokenTTL time.Duration
	// OmitExpiresIn leaves expires_in out of token responses (like
	// Salesforce); access tokens still expire after AccessTokenTTL.
	OmitExpiresIn bool
	// RefreshTokenTTL is how long a refresh token is valid after it is
	// issued, announced as refresh_token_expires_in; 0 means forever.
	RefreshTokenTTL time.Duration
	// TokenType is the token_type of responses; default "Bearer".
	TokenType string
	// OmitScope leaves scope out of token responses (RFC 6749 §5.1 allows
	// it when the grant is as requested).
	OmitScope bool
	// FormEncoded answers the token endpoint in
	// application/x-www-form-urlencoded, GitHub's default, instead of JSON.
	FormEncoded bool
	// EditTokenResponse, if set, may change each successful token response
	// (e.g. make expires_in 3599.5) just before it is encoded. It is called
	// without the server's lock held, possibly concurrently.
	EditTokenResponse func(resp map[string]any)

	// Now is the server's clock; default time.Now. Config passes it on to
	// the provider.
	Now func() time.Time
}

// Endpoint names one of the server's endpoints; its value is its path below
// the prefix.
type Endpoint string

const (
	Authorize  Endpoint = "/authorize"
	Token      Endpoint = "/token"
	Revoke     Endpoint = "/revoke"
	UserInfo   Endpoint = "/userinfo"
	Introspect Endpoint = "/introspect"
)

// Stats counts what the server saw. Each field counts requests that
// reached the endpoint, including those answered with an error or a fault.
type Stats struct {
	Authorize int
	// Token counts token requests by grant_type ("" when missing or the
	// body was unreadable).
	Token map[string]int
	// Refreshes counts successful refreshes.
	Refreshes  int
	Revoke     int
	UserInfo   int
	Introspect int
	// ReuseDetections counts rotated refresh tokens presented again; each
	// revoked its grant.
	ReuseDetections int
	// CodeReuses counts authorization codes presented again; each revoked
	// the grant the code had produced, if any (RFC 6749 §4.1.2).
	CodeReuses int
}

// GrantInfo is a snapshot of one grant the server issued.
type GrantInfo struct {
	ID      string
	Account string
	Scopes  []string
	Created time.Time
	Revoked bool
	// RefreshToken is the grant's current refresh token: the only one the
	// server accepts.
	RefreshToken string
	// AccessTokens counts the access tokens issued; Rotations the refresh
	// tokens replaced.
	AccessTokens int
	Rotations    int
}

// A Server is the fake authorization server. It is an http.Handler; all its
// methods are safe for concurrent use, with each other and with requests.
type Server struct {
	opts Options // defaults applied; read-only after New
	hs   *startedServer

	mu      sync.Mutex
	baseURL string
	codes   map[string]*authCode
	access  map[string]*accessToken
	refresh map[string]*refreshToken
	grants  map[string]*grant
	nextSeq int
	faults  map[Endpoint][]queuedFault
	deny    int
	stats   Stats
	secrets []string // every secret issued or received, up to maxSecrets
}

// maxSecrets bounds Server.secrets: the sandbox of dev mode runs for long.
const maxSecrets = 1 << 14

type authCode struct {
	redirectURI string
	challenge   string
	scopes      []string
	account     string
	expiry      time.Time
	used        bool
	grant       *grant // once redeemed
}

type grant struct {
	id        string
	seq       int
	account   string
	scopes    []string
	created   time.Time
	revoked   bool
	refresh   string
	issued    int
	rotations int
}

type accessToken struct {
	grant  *grant
	expiry time.Time
	scopes []string
}

type refreshToken struct {
	grant   *grant
	expiry  time.Time // zero: never
	rotated bool
}

// New returns a server with opts (see Options for the defaults). Mount it on
// a mux at opts.Prefix, with the prefix left in the path.
func New(opts Options) *Server {
	if opts.ClientID == "" {
		opts.ClientID = DefaultClientID
	}
	if opts.ClientSecret == "" {
		opts.ClientSecret = DefaultClientSecret
	}
	if opts.AuthStyle == 0 {
		opts.AuthStyle = providers.AuthStyleInHeader
	}
	if len(opts.RedirectURIs) == 0 {
		opts.RedirectURIs = []string{DefaultRedirectURI}
	}
	if opts.Scopes == nil {
		opts.Scopes = []string{"read"}
	}
	if opts.Account == "" {
		opts.Account = DefaultAccount
	}
	if opts.CodeTTL <= 0 {
		opts.CodeTTL = time.Minute
	}
	if opts.AccessTokenTTL <= 0 {
		opts.AccessTokenTTL = time.Hour
	}
	if opts.TokenType == "" {
		opts.TokenType = "Bearer"
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	opts.Prefix = strings.TrimSuffix(opts.Prefix, "/")
	opts.RedirectURIs = slices.Clone(opts.RedirectURIs)
	opts.Scopes = slices.Clone(opts.Scopes)
	opts.DeniedScopes = slices.Clone(opts.DeniedScopes)
	return &Server{
		opts:    opts,
		baseURL: strings.TrimSuffix(opts.BaseURL, "/"),
		codes:   map[string]*authCode{},
		access:  map[string]*accessToken{},
		refresh: map[string]*refreshToken{},
		grants:  map[string]*grant{},
		faults:  map[Endpoint][]queuedFault{},
		stats:   Stats{Token: map[string]int{}},
	}
}

// URL returns the absolute URL of ep.
func (s *Server) URL(ep Endpoint) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.baseURL + s.opts.Prefix + string(ep)
}

// Config returns a configuration of the generic provider for this server:
// its client, endpoints, first redirect URI, default scopes, auth style,
// PKCE on, and the server's clock. For a server from StartTLS it includes a
// client that trusts the server's certificate.
func (s *Server) Config() providers.OAuth2Config {
	c := providers.OAuth2Config{
		Name:          "sandbox",
		DisplayName:   "Sandbox",
		ClientID:      s.opts.ClientID,
		ClientSecret:  s.opts.ClientSecret,
		AuthURL:       s.URL(Authorize),
		TokenURL:      s.URL(Token),
		RevokeURL:     s.URL(Revoke),
		IntrospectURL: s.URL(Introspect),
		RedirectURL:   s.opts.RedirectURIs[0],
		Scopes:        slices.Clone(s.opts.Scopes),
		AuthStyle:     s.opts.AuthStyle,
		PKCE:          true,
		Now:           s.opts.Now,
	}
	if s.hs != nil && s.hs.tls {
		c.HTTPClient = s.hs.Client()
	}
	return c
}

// Secrets returns every secret the server has issued or received: its
// client secret, and each state, authorization code, PKCE verifier, access
// token and refresh token (up to 16,384 of them), so that a test can check
// that none of them appears where it must not (logs, pages, errors).
func (s *Server) Secrets() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string{s.opts.ClientSecret}, s.secrets...)
}

// noteLocked remembers secrets for Secrets.
func (s *Server) noteLocked(vs ...string) {
	for _, v := range vs {
		if v != "" && len(s.secrets) < maxSecrets {
			s.secrets = append(s.secrets, v)
		}
	}
}

// DenyNext makes the next authorization request end with
// error=access_denied, as if the user had refused consent. Calls add up.
func (s *Server) DenyNext() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deny++
}

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Token = maps.Clone(s.stats.Token)
	return st
}

// IsActive reports whether accessToken was issued by the server, has not
// expired and belongs to a grant that is not revoked.
func (s *Server) IsActive(accessToken string) bool {
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.activeLocked(accessToken, now)
	return ok
}

// Grants returns a snapshot of every grant issued, oldest first.
func (s *Server) Grants() []GrantInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]GrantInfo, 0, len(s.grants))
	for _, g := range s.grants {
		out = append(out, GrantInfo{
			ID:           g.id,
			Account:      g.account,
			Scopes:       slices.Clone(g.scopes),
			Created:      g.created,
			Revoked:      g.revoked,
			RefreshToken: g.refresh,
			AccessTokens: g.issued,
			Rotations:    g.rotations,
		})
	}
	sort.Slice(out, func(i, j int) bool { return s.grants[out[i].ID].seq < s.grants[out[j].ID].seq })
	return out
}

// RevokeGrant revokes a grant, as a user removing the app at the provider
// would. It reports whether the grant existed.
func (s *Server) RevokeGrant(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.grants[id]
	if ok {
		g.revoked = true
	}
	return ok
}

// ServeHTTP serves the endpoints below opts.Prefix.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, s.opts.Prefix)
	if !ok {
		http.NotFound(w, r)
		return
	}
	var (
		method string
		serve  func(*http.Request, url.Values, time.Time) reply
	)
	ep := Endpoint(rest)
	switch ep {
	case Authorize:
		method, serve = http.MethodGet, s.authorize
	case Token:
		method, serve = http.MethodPost, s.token
	case Revoke:
		method, serve = http.MethodPost, s.revoke
	case UserInfo:
		method, serve = http.MethodGet, s.userInfo
	case Introspect:
		method, serve = http.MethodPost, s.introspect
	default:
		http.NotFound(w, r)
		return
	}
	if r.Method != method {
		w.Header().Set("Allow", method)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	var (
		form    url.Values
		formErr string
	)
	if method == http.MethodPost {
		form, formErr = readForm(w, r)
	} else {
		form = r.URL.Query()
	}
	s.mu.Lock()
	switch ep {
	case Authorize:
		s.stats.Authorize++
	case Token:
		s.stats.Token[form.Get("grant_type")]++
	case Revoke:
		s.stats.Revoke++
	case UserInfo:
		s.stats.UserInfo++
	case Introspect:
		s.stats.Introspect++
	}
	f := s.takeFaultLocked(ep)
	s.mu.Unlock()

	if f.before(w, r) {
		return
	}
	var rep reply
	if formErr != "" {
		rep = s.oauthError(http.StatusBadRequest, "invalid_request", formErr)
	} else {
		rep = serve(r, form, s.opts.Now())
	}
	if f.kind == faultDrop {
		drop(w)
		return
	}
	rep.write(w)
}

// readForm reads a POST body strictly: form-encoded, at most 64 KiB, each
// parameter at most once (RFC 6749 §3.2), nothing in the query string.
func readForm(w http.ResponseWriter, r *http.Request) (url.Values, string) {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
		return url.Values{}, "body must be application/x-www-form-urlencoded"
	}
	if r.URL.RawQuery != "" {
		return url.Values{}, "parameters must be in the body"
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		return url.Values{}, "unreadable body"
	}
	for _, vs := range r.PostForm {
		if len(vs) > 1 {
			return r.PostForm, "repeated parameter"
		}
	}
	return r.PostForm, ""
}

// reply is an answer computed under the lock and written after.
type reply struct {
	status int
	header http.Header
	body   []byte
}

func (rp reply) write(w http.ResponseWriter) {
	maps.Copy(w.Header(), rp.header)
	w.WriteHeader(rp.status)
	w.Write(rp.body)
}

// encode answers with fields as JSON, or as a form if opts.FormEncoded.
func (s *Server) encode(status int, fields map[string]any) reply {
	h := http.Header{"Cache-Control": {"no-store"}, "Pragma": {"no-cache"}}
	if s.opts.FormEncoded {
		v := url.Values{}
		for k, x := range fields {
			v.Set(k, fmt.Sprint(x))
		}
		h.Set("Content-Type", "application/x-www-form-urlencoded")
		return reply{status, h, []byte(v.Encode())}
	}
	b, err := json.Marshal(fields)
	if err != nil {
		b = []byte(`{"error":"server_error"}`)
		status = http.StatusInternalServerError
	}
	h.Set("Content-Type", "application/json")
	return reply{status, h, b}
}

func (s *Server) oauthError(status int, code, desc string) reply {
	rp := s.encode(status, map[string]any{"error": code, "error_description": desc})
	if code == "invalid_client" && s.opts.AuthStyle == providers.AuthStyleInHeader {
		rp.header.Set("WWW-Authenticate", `Basic realm="sandbox"`)
	}
	return rp
}

func plainError(status int, msg string) reply {
	return reply{status, http.Header{"Content-Type": {"text/plain; charset=utf-8"}}, []byte(msg + "\n")}
}

// authorize approves (or denies) an authorization request at once.
// Requests with an unknown client or redirect URI get a 400 page, never a
// redirect (RFC 6749 §4.1.2.1).
func (s *Server) authorize(r *http.Request, q url.Values, now time.Time) reply {
	for _, vs := range q {
		if len(vs) > 1 {
			return plainError(http.StatusBadRequest, "repeated parameter")
		}
	}
	if q.Get("client_id") != s.opts.ClientID {
		return plainError(http.StatusBadRequest, "unknown client_id")
	}
	redirectURI := q.Get("redirect_uri")
	if !slices.Contains(s.opts.RedirectURIs, redirectURI) {
		return plainError(http.StatusBadRequest, "unregistered redirect_uri")
	}
	state := q.Get("state")
	back := func(params map[string]string) reply {
		u, _ := url.Parse(redirectURI) // registered, hence parsable
		v := u.Query()
		for k, x := range params {
			v.Set(k, x)
		}
		if state != "" {
			v.Set("state", state)
		}
		u.RawQuery = v.Encode()
		return reply{http.StatusFound, http.Header{"Location": {u.String()}, "Cache-Control": {"no-store"}}, nil}
	}
	fail := func(code, desc string) reply {
		return back(map[string]string{"error": code, "error_description": desc})
	}
	if q.Get("response_type") != "code" {
		return fail("unsupported_response_type", "only response_type=code is supported")
	}
	if state == "" {
		return fail("invalid_request", "state is required")
	}
	challenge := q.Get("code_challenge")
	switch method := q.Get("code_challenge_method"); {
	case challenge == "" && method != "":
		return fail("invalid_request", "code_challenge_method without code_challenge")
	case challenge == "" && s.opts.RequirePKCE:
		return fail("invalid_request", "PKCE is required")
	case challenge != "" && method != "S256":
		return fail("invalid_request", "code_challenge_method must be S256")
	case challenge != "" && !validChallenge(challenge):
		return fail("invalid_request", "malformed code_challenge")
	}
	account := q.Get("login_hint")
	if account == "" {
		account = s.opts.Account
	}
	var scopes []string
	for _, sc := range splitScopes(q.Get("scope")) {
		if !slices.Contains(s.opts.DeniedScopes, sc) {
			scopes = append(scopes, sc)
		}
	}
	code := "sbx_code_" + rand.Text()

	s.mu.Lock()
	defer s.mu.Unlock()
	s.noteLocked(state, code)
	if s.deny > 0 {
		s.deny--
		return fail("access_denied", "the user denied the request")
	}
	if len(s.codes) > 1024 {
		for k, c := range s.codes {
			if now.After(c.expiry) {
				delete(s.codes, k)
			}
		}
	}
	s.codes[code] = &authCode{
		redirectURI: redirectURI,
		challenge:   challenge,
		scopes:      scopes,
		account:     account,
		expiry:      now.Add(s.opts.CodeTTL),
	}
	return back(map[string]string{"code": code})
}

func validChallenge(c string) bool {
	b, err := base64.RawURLEncoding.DecodeString(c)
	return err == nil && len(b) == sha256.Size
}

// token serves the authorization_code and refresh_token grants.
func (s *Server) token(r *http.Request, form url.Values, now time.Time) reply {
	resp, rp := s.tokenLocked(r, form, now)
	if resp == nil {
		return rp
	}
	if s.opts.EditTokenResponse != nil {
		s.opts.EditTokenResponse(resp)
	}
	return s.encode(http.StatusOK, resp)
}

// tokenLocked runs a token request; it returns the response fields on
// success and an error reply otherwise.
func (s *Server) tokenLocked(r *http.Request, form url.Values, now time.Time) (map[string]any, reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rp, ok := s.authClientLocked(r, form); !ok {
		return nil, rp
	}
	switch gt := form.Get("grant_type"); gt {
	case "authorization_code":
		return s.codeGrantLocked(form, now)
	case "refresh_token":
		return s.refreshGrantLocked(form, now)
	case "":
		return nil, s.oauthError(http.StatusBadRequest, "invalid_request", "grant_type is required")
	default:
		return nil, s.oauthError(http.StatusBadRequest, "unsupported_grant_type", "")
	}
}

// authClientLocked authenticates the client the one way opts.AuthStyle
// allows.
func (s *Server) authClientLocked(r *http.Request, form url.Values) (reply, bool) {
	var id, secret string
	user, pass, basic := r.BasicAuth()
	_, secretParam := form["client_secret"]
	switch s.opts.AuthStyle {
	case providers.AuthStyleInHeader:
		if !basic || secretParam {
			return s.oauthError(http.StatusUnauthorized, "invalid_client", "use HTTP Basic authentication"), false
		}
		var err1, err2 error
		id, err1 = url.QueryUnescape(user)
		secret, err2 = url.QueryUnescape(pass)
		if err1 != nil || err2 != nil {
			return s.oauthError(http.StatusUnauthorized, "invalid_client", "malformed credentials"), false
		}
		if cid, ok := form["client_id"]; ok && cid[0] != id {
			return s.oauthError(http.StatusUnauthorized, "invalid_client", "client_id mismatch"), false
		}
	default:
		if r.Header.Get("Authorization") != "" || !secretParam {
			return s.oauthError(http.StatusUnauthorized, "invalid_client", "send client_id and client_secret in the body"), false
		}
		id, secret = form.Get("client_id"), form.Get("client_secret")
	}
	idOK := subtle.ConstantTimeCompare([]byte(id), []byte(s.opts.ClientID))
	secretOK := subtle.ConstantTimeCompare([]byte(secret), []byte(s.opts.ClientSecret))
	if idOK&secretOK != 1 {
		return s.oauthError(http.StatusUnauthorized, "invalid_client", "unknown client or wrong secret"), false
	}
	return reply{}, true
}

// codeGrantLocked redeems an authorization code. A code is spent by the
// first request that presents it, whatever the outcome; presenting it again
// revokes the grant it produced.
func (s *Server) codeGrantLocked(form url.Values, now time.Time) (map[string]any, reply) {
	invalid := func(desc string) (map[string]any, reply) {
		return nil, s.oauthError(http.StatusBadRequest, "invalid_grant", desc)
	}
	code := form.Get("code")
	if code == "" {
		return nil, s.oauthError(http.StatusBadRequest, "invalid_request", "code is required")
	}
	c, ok := s.codes[code]
	if !ok {
		return invalid("unknown code")
	}
	if c.used {
		s.stats.CodeReuses++
		if c.grant != nil {
			c.grant.revoked = true
		}
		return invalid("code already used")
	}
	c.used = true
	if !now.Before(c.expiry) {
		return invalid("code expired")
	}
	if _, ok := form["redirect_uri"]; !ok || form.Get("redirect_uri") != c.redirectURI {
		return invalid("redirect_uri does not match the authorization request")
	}
	verifier, hasVerifier := form["code_verifier"]
	if hasVerifier {
		s.noteLocked(verifier...)
	}
	switch {
	case c.challenge == "" && hasVerifier:
		return invalid("code_verifier without a code_challenge")
	case c.challenge != "" && !hasVerifier:
		return invalid("code_verifier is required")
	case c.challenge != "":
		sum := sha256.Sum256([]byte(verifier[0]))
		if subtle.ConstantTimeCompare([]byte(base64.RawURLEncoding.EncodeToString(sum[:])), []byte(c.challenge)) != 1 {
			return invalid("code_verifier does not match the code_challenge")
		}
	}
	s.nextSeq++
	g := &grant{
		id:      "sbx_grant_" + rand.Text(),
		seq:     s.nextSeq,
		account: c.account,
		scopes:  c.scopes,
		created: now,
	}
	s.grants[g.id] = g
	c.grant = g
	resp := s.issueAccessLocked(g, g.scopes, now)
	s.issueRefreshLocked(g, now, resp)
	return resp, reply{}
}

// refreshGrantLocked refreshes a grant, rotating its refresh token unless
// rotation is disabled. A rotated refresh token presented again revokes the
// whole grant.
func (s *Server) refreshGrantLocked(form url.Values, now time.Time) (map[string]any, reply) {
	invalid := func(desc string) (map[string]any, reply) {
		return nil, s.oauthError(http.StatusBadRequest, "invalid_grant", desc)
	}
	rt := form.Get("refresh_token")
	if rt == "" {
		return nil, s.oauthError(http.StatusBadRequest, "invalid_request", "refresh_token is required")
	}
	t, ok := s.refresh[rt]
	switch {
	case !ok:
		return invalid("unknown refresh token")
	case t.grant.revoked:
		return invalid("grant revoked")
	case t.rotated:
		s.stats.ReuseDetections++
		t.grant.revoked = true
		return invalid("refresh token reused; grant revoked")
	case !t.expiry.IsZero() && !now.Before(t.expiry):
		return invalid("refresh token expired")
	}
	g := t.grant
	scopes := g.scopes
	if sc, ok := form["scope"]; ok {
		scopes = splitScopes(sc[0])
		for _, x := range scopes {
			if !slices.Contains(g.scopes, x) {
				return nil, s.oauthError(http.StatusBadRequest, "invalid_scope", "scope exceeds the grant")
			}
		}
	}
	resp := s.issueAccessLocked(g, scopes, now)
	if !s.opts.DisableRotation {
		t.rotated = true
		g.rotations++
		s.issueRefreshLocked(g, now, resp)
	}
	s.stats.Refreshes++
	return resp, reply{}
}

// issueAccessLocked issues an access token for g and returns the response
// fields without refresh_token.
func (s *Server) issueAccessLocked(g *grant, scopes []string, now time.Time) map[string]any {
	if len(s.access) > 4096 {
		for k, a := range s.access {
			if !now.Before(a.expiry) {
				delete(s.access, k)
			}
		}
	}
	at := "sbx_at_" + rand.Text()
	s.noteLocked(at)
	s.access[at] = &accessToken{grant: g, expiry: now.Add(s.opts.AccessTokenTTL), scopes: scopes}
	g.issued++
	resp := map[string]any{
		"access_token": at,
		"token_type":   s.opts.TokenType,
	}
	if !s.opts.OmitExpiresIn {
		resp["expires_in"] = int64(s.opts.AccessTokenTTL / time.Second)
	}
	if !s.opts.OmitScope {
		resp["scope"] = strings.Join(scopes, " ")
	}
	return resp
}

// issueRefreshLocked issues g's new refresh token and adds it to resp.
func (s *Server) issueRefreshLocked(g *grant, now time.Time, resp map[string]any) {
	rt := "sbx_rt_" + rand.Text()
	s.noteLocked(rt)
	t := &refreshToken{grant: g}
	if s.opts.RefreshTokenTTL > 0 {
		t.expiry = now.Add(s.opts.RefreshTokenTTL)
		resp["refresh_token_expires_in"] = int64(s.opts.RefreshTokenTTL / time.Second)
	}
	s.refresh[rt] = t
	g.refresh = rt
	resp["refresh_token"] = rt
}

// revoke implements RFC 7009. Revoking either kind of token revokes the
// whole grant; unknown tokens are answered 200 (§2.2).
func (s *Server) revoke(r *http.Request, form url.Values, now time.Time) reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	tok, rp, ok := s.tokenParamLocked(r, form)
	if !ok {
		return rp
	}
	if t, ok := s.refresh[tok]; ok {
		t.grant.revoked = true
	} else if a, ok := s.access[tok]; ok {
		a.grant.revoked = true
	}
	return reply{status: http.StatusOK, header: http.Header{"Cache-Control": {"no-store"}}}
}

// tokenParamLocked authenticates the client and returns the token that a
// revocation (RFC 7009) or introspection (RFC 7662) request is about.
func (s *Server) tokenParamLocked(r *http.Request, form url.Values) (string, reply, bool) {
	if rp, ok := s.authClientLocked(r, form); !ok {
		return "", rp, false
	}
	tok := form.Get("token")
	if tok == "" {
		return "", s.oauthError(http.StatusBadRequest, "invalid_request", "token is required"), false
	}
	return tok, reply{}, true
}

// introspect implements RFC 7662 for the registered client: an access
// token that is active (see IsActive), or a refresh token that is current
// (not rotated, not expired, its grant not revoked), is described with
// active, scope, client_id, username, token_type, exp (when it expires), iat
// and sub; anything else is {"active": false}. token_type_hint is only a
// hint (§2.1): both kinds are looked up whatever it says.
func (s *Server) introspect(r *http.Request, form url.Values, now time.Time) reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	tok, rp, ok := s.tokenParamLocked(r, form)
	if !ok {
		return rp
	}
	var (
		g      *grant
		scopes []string
		typ    string
		exp    time.Time
	)
	if a, ok := s.activeLocked(tok, now); ok {
		g, scopes, typ, exp = a.grant, a.scopes, s.opts.TokenType, a.expiry
	} else if t, ok := s.refresh[tok]; ok && !t.rotated && !t.grant.revoked && (t.expiry.IsZero() || now.Before(t.expiry)) {
		g, scopes, typ, exp = t.grant, t.grant.scopes, "refresh_token", t.expiry
	}
	if g == nil {
		return s.introspection(map[string]any{"active": false})
	}
	fields := map[string]any{
		"active":     true,
		"scope":      strings.Join(scopes, " "),
		"client_id":  s.opts.ClientID,
		"username":   g.account,
		"token_type": typ,
		"iat":        g.created.Unix(),
		"sub":        subject(g.account),
	}
	if !exp.IsZero() {
		fields["exp"] = exp.Unix()
	}
	return s.introspection(fields)
}

// introspection answers fields as JSON: RFC 7662 §2.2 has no form encoding.
func (s *Server) introspection(fields map[string]any) reply {
	b, _ := json.Marshal(fields)
	return reply{http.StatusOK, http.Header{"Content-Type": {"application/json"}, "Cache-Control": {"no-store"}}, b}
}

// subject is the stable, opaque subject id of account.
func subject(account string) string {
	sum := sha256.Sum256([]byte(account))
	return "sbx_" + base64.RawURLEncoding.EncodeToString(sum[:12])
}

// userInfo answers {"sub", "login", "scope"} for an active bearer token.
func (s *Server) userInfo(r *http.Request, _ url.Values, now time.Time) reply {
	scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	s.mu.Lock()
	a, ok := s.activeLocked(tok, now)
	var account string
	var scopes []string
	if ok {
		account, scopes = a.grant.account, a.scopes
	}
	s.mu.Unlock()
	if !strings.EqualFold(scheme, "Bearer") || !ok {
		return reply{http.StatusUnauthorized, http.Header{
			"WWW-Authenticate": {`Bearer realm="sandbox", error="invalid_token"`},
			"Content-Type":     {"application/json"},
		}, []byte(`{"error":"invalid_token"}`)}
	}
	b, _ := json.Marshal(map[string]string{
		"sub":   subject(account),
		"login": account,
		"scope": strings.Join(scopes, " "),
	})
	return reply{http.StatusOK, http.Header{"Content-Type": {"application/json"}, "Cache-Control": {"no-store"}}, b}
}

func (s *Server) activeLocked(at string, now time.Time) (*accessToken, bool) {
	a, ok := s.access[at]
	if !ok || a.grant.revoked || !now.Before(a.expiry) {
		return nil, false
	}
	return a, true
}

// splitScopes splits on spaces and commas and removes duplicates, keeping
// the order.
func splitScopes(s string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' }) {
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}
