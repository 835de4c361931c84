package providertest

// Strict fakes of the services tokenvault ships adapters for (Slack,
// GitHub, Linear, Google, Salesforce): their paths, client authentication,
// response shapes and error conventions as PROVIDERS.md describes them,
// over one ledger of codes, tokens and grants. The end-to-end tests drive
// the sidecar against them. Each service's handlers are in <service>fake.go.

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"time"
)

// ServiceOptions configure a Service. The zero value is a working fake,
// except that RedirectURI is required.
type ServiceOptions struct {
	// The one registered client; default DefaultClientID and
	// DefaultClientSecret.
	ClientID, ClientSecret string
	// RedirectURI is the registered redirect URI, matched exactly at the
	// authorization and the token endpoint.
	RedirectURI string
	// Account is who approves every authorization request; default
	// DefaultAccount.
	Account string
	// AccessTokenTTL is how long access tokens live; default 1 h. For
	// Salesforce it is the session timeout, which only introspection tells.
	AccessTokenTTL time.Duration
	// NonExpiring issues access tokens that never expire and no refresh
	// tokens: Slack without token rotation, GitHub OAuth Apps. Linear,
	// Google and Salesforce ignore it.
	NonExpiring bool
	// RotateRefreshTokens makes Salesforce rotate refresh tokens (an app
	// setting there). Slack, GitHub and Linear always rotate; Google never.
	RotateRefreshTokens bool
	// Now is the fake's clock; default time.Now.
	Now func() time.Time
}

// ServiceStats counts what a Service saw. Each field counts requests that
// reached the endpoint, including those it refused.
type ServiceStats struct {
	Authorize   int
	Exchanges   int
	Refreshes   int // successful ones
	Revocations int
	// Identity counts identity lookups (GitHub /user, Linear viewer,
	// Salesforce userinfo); Validations liveness checks (Slack auth.test,
	// GitHub token check, Google tokeninfo, Salesforce introspection).
	Identity, Validations int
	// CodeReuses and ReuseDetections count spent codes and rotated refresh
	// tokens presented again; each revoked the grant involved.
	CodeReuses, ReuseDetections int
	// ClientRejections counts requests refused for the client's
	// authentication or redirect URI.
	ClientRejections int
}

// A Service is a strict fake of one named service, started on 127.0.0.1.
// Its methods are safe for concurrent use.
type Service struct {
	kind string
	opts ServiceOptions
	hs   *httptest.Server

	mu      sync.Mutex
	codes   map[string]*svcCode
	access  map[string]*svcAccess
	refresh map[string]*svcRefresh
	grants  []*svcGrant
	stats   ServiceStats
	// slackMessages are those chat.postMessage accepted.
	slackMessages []SlackMessage
}

type svcCode struct {
	redirectURI string
	challenge   string
	// scopes are those of the primary grant; userScopes Slack's user token's.
	scopes, userScopes []string
	params             url.Values // the authorization request, for quirks
	expiry             time.Time
	used               bool
	grants             []*svcGrant
}

// svcGrant is one credential's grant: Slack's bot and user tokens are two.
type svcGrant struct {
	kind    string // "", or Slack's "bot" / "user"
	account string
	scopes  []string
	params  url.Values
	revoked bool
	refresh string // the one refresh token accepted
}

type svcAccess struct {
	grant  *svcGrant
	expiry time.Time // zero: never
}

type svcRefresh struct {
	grant   *svcGrant
	rotated bool
}

// StartSlack, StartGitHub, StartLinear, StartGoogle and StartSalesforce
// start a fake of that service. Close it when done.
func StartSlack(o ServiceOptions) *Service      { return startService("slack", o) }
func StartGitHub(o ServiceOptions) *Service     { return startService("github", o) }
func StartLinear(o ServiceOptions) *Service     { return startService("linear", o) }
func StartGoogle(o ServiceOptions) *Service     { return startService("google", o) }
func StartSalesforce(o ServiceOptions) *Service { return startService("salesforce", o) }

func startService(kind string, o ServiceOptions) *Service {
	if o.ClientID == "" {
		o.ClientID = DefaultClientID
	}
	if o.ClientSecret == "" {
		o.ClientSecret = DefaultClientSecret
	}
	if o.Account == "" {
		o.Account = DefaultAccount
	}
	if o.AccessTokenTTL <= 0 {
		o.AccessTokenTTL = time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Service{
		kind: kind, opts: o,
		codes: map[string]*svcCode{}, access: map[string]*svcAccess{}, refresh: map[string]*svcRefresh{},
	}
	mux := http.NewServeMux()
	switch kind {
	case "slack":
		s.slackRoutes(mux)
	case "github":
		s.githubRoutes(mux)
	case "linear":
		s.linearRoutes(mux)
	case "google":
		s.googleRoutes(mux)
	case "salesforce":
		s.salesforceRoutes(mux)
	}
	s.hs = httptest.NewServer(mux)
	return s
}

// Close shuts the fake down.
func (s *Service) Close() { s.hs.Close() }

// URL is the fake's base URL.
func (s *Service) URL() string { return s.hs.URL }

// Client returns an HTTP client for the fake.
func (s *Service) Client() *http.Client { return s.hs.Client() }

// ProviderOptions are the options of the provider of this kind (see
// providers.NewSlack, ...) that point it at the fake.
func (s *Service) ProviderOptions() map[string]string {
	base := s.hs.URL
	switch s.kind {
	case "slack", "github":
		return map[string]string{"auth_base": base, "api_base": base + "/api"}
	case "salesforce":
		return map[string]string{"host": base}
	}
	return map[string]string{"auth_base": base, "api_base": base}
}

// Stats returns a copy of the counters.
func (s *Service) Stats() ServiceStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// IsActive reports whether accessToken was issued by the fake, has not
// expired and its grant is not revoked.
func (s *Service) IsActive(accessToken string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.activeLocked(accessToken) != nil
}

// Revoked reports how many grants the fake has issued and how many of them
// are revoked.
func (s *Service) Revoked() (issued, revoked int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.grants {
		if g.revoked {
			revoked++
		}
	}
	return len(s.grants), revoked
}

func (s *Service) activeLocked(at string) *svcGrant {
	a, ok := s.access[at]
	if !ok || a.grant.revoked || !a.expiry.IsZero() && !s.opts.Now().Before(a.expiry) {
		return nil
	}
	return a.grant
}

// authorizeReq checks an authorization request the way every service
// does: a known client, the registered redirect URI (else a 400 page, never
// a redirect), a state, and a well-formed S256 challenge if any. It then
// records a code for scopes and userScopes and redirects back with it.
func (s *Service) authorizeReq(w http.ResponseWriter, r *http.Request, scopes, userScopes []string) {
	q := r.URL.Query()
	s.mu.Lock()
	s.stats.Authorize++
	s.mu.Unlock()
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if q.Get("client_id") != s.opts.ClientID || q.Get("redirect_uri") != s.opts.RedirectURI {
		s.count(func(st *ServiceStats) { st.ClientRejections++ })
		http.Error(w, "unknown client or unregistered redirect_uri", http.StatusBadRequest)
		return
	}
	back, _ := url.Parse(s.opts.RedirectURI)
	v := back.Query()
	v.Set("state", q.Get("state"))
	challenge := q.Get("code_challenge")
	switch {
	case q.Get("state") == "":
		v.Set("error", "invalid_request")
	case challenge != "" && q.Get("code_challenge_method") != "S256",
		challenge != "" && !validChallenge(challenge):
		v.Set("error", "invalid_request")
	default:
		code := "fake_code_" + rand.Text()
		s.mu.Lock()
		s.codes[code] = &svcCode{
			redirectURI: q.Get("redirect_uri"), challenge: challenge,
			scopes: scopes, userScopes: userScopes, params: q,
			expiry: s.opts.Now().Add(10 * time.Minute),
		}
		s.mu.Unlock()
		v.Set("code", code)
	}
	back.RawQuery = v.Encode()
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, back.String(), http.StatusFound)
}

func (s *Service) count(f func(*ServiceStats)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.stats)
}

// redeemLocked spends a code: it must exist, be unused and unexpired, come
// with the same redirect URI, and with the verifier of its challenge. A
// spent code presented again revokes the grants it produced. It returns ""
// and the code on success, else a reason.
func (s *Service) redeemLocked(form url.Values) (*svcCode, string) {
	c, ok := s.codes[form.Get("code")]
	switch {
	case !ok:
		return nil, "unknown code"
	case c.used:
		s.stats.CodeReuses++
		for _, g := range c.grants {
			g.revoked = true
		}
		return nil, "code already used"
	}
	c.used = true
	switch {
	case !s.opts.Now().Before(c.expiry):
		return nil, "code expired"
	case form.Get("redirect_uri") != c.redirectURI:
		return nil, "redirect_uri mismatch"
	case c.challenge == "" && form.Has("code_verifier"):
		return nil, "code_verifier without a challenge"
	case c.challenge != "":
		sum := sha256.Sum256([]byte(form.Get("code_verifier")))
		if subtle.ConstantTimeCompare([]byte(base64.RawURLEncoding.EncodeToString(sum[:])), []byte(c.challenge)) != 1 {
			return nil, "code_verifier mismatch"
		}
	}
	return c, ""
}

// newGrantLocked records a grant produced by c.
func (s *Service) newGrantLocked(c *svcCode, kind string, scopes []string) *svcGrant {
	g := &svcGrant{kind: kind, account: s.opts.Account, scopes: scopes, params: c.params}
	s.grants = append(s.grants, g)
	c.grants = append(c.grants, g)
	return g
}

// issueLocked issues an access token for g, and a refresh token if
// withRefresh. ttl 0 means a token that never expires.
func (s *Service) issueLocked(g *svcGrant, ttl time.Duration, withRefresh bool) (at, rt string) {
	at = "fake_at_" + rand.Text()
	a := &svcAccess{grant: g}
	if ttl > 0 {
		a.expiry = s.opts.Now().Add(ttl)
	}
	s.access[at] = a
	if withRefresh {
		rt = "fake_rt_" + rand.Text()
		s.refresh[rt] = &svcRefresh{grant: g}
		g.refresh = rt
	}
	return at, rt
}

// useRefreshLocked checks a refresh token. A rotated one presented again
// revokes its grant. It returns the grant, or a reason.
func (s *Service) useRefreshLocked(rt string) (*svcGrant, string) {
	t, ok := s.refresh[rt]
	switch {
	case !ok:
		return nil, "unknown refresh token"
	case t.grant.revoked:
		return nil, "grant revoked"
	case t.rotated:
		s.stats.ReuseDetections++
		t.grant.revoked = true
		return nil, "refresh token reused"
	}
	return t.grant, ""
}

// rotateLocked retires g's refresh token and issues a new one.
func (s *Service) rotateLocked(g *svcGrant) string {
	if t, ok := s.refresh[g.refresh]; ok {
		t.rotated = true
	}
	rt := "fake_rt_" + rand.Text()
	s.refresh[rt] = &svcRefresh{grant: g}
	g.refresh = rt
	return rt
}

// revokeLocked revokes the grant of an access or refresh token; it
// reports whether the token was known.
func (s *Service) revokeLocked(tok string) bool {
	if a, ok := s.access[tok]; ok {
		a.grant.revoked = true
		return true
	}
	if t, ok := s.refresh[tok]; ok {
		t.grant.revoked = true
		return true
	}
	return false
}

// readServiceForm reads a form body strictly (form-encoded, at most 64 KiB,
// each parameter once, nothing in the query).
func readServiceForm(w http.ResponseWriter, r *http.Request) (url.Values, bool) {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" || r.URL.RawQuery != "" {
		return nil, false
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if r.ParseForm() != nil {
		return nil, false
	}
	for _, vs := range r.PostForm {
		if len(vs) > 1 {
			return nil, false
		}
	}
	return r.PostForm, true
}

// clientInBody reports whether the form carries the client's id and
// secret, and no Authorization header was sent.
func (s *Service) clientInBody(r *http.Request, form url.Values) bool {
	return r.Header.Get("Authorization") == "" &&
		subtle.ConstantTimeCompare([]byte(form.Get("client_id")), []byte(s.opts.ClientID)) == 1 &&
		subtle.ConstantTimeCompare([]byte(form.Get("client_secret")), []byte(s.opts.ClientSecret)) == 1
}

// clientInBasic reports whether the request authenticates the client with
// HTTP Basic (form-encoded per RFC 6749 §2.3.1 if formEncoded) and carries
// no secret in the form.
func (s *Service) clientInBasic(r *http.Request, form url.Values, formEncoded bool) bool {
	id, secret, ok := r.BasicAuth()
	if !ok || form.Has("client_secret") {
		return false
	}
	if formEncoded {
		var e1, e2 error
		id, e1 = url.QueryUnescape(id)
		secret, e2 = url.QueryUnescape(secret)
		if e1 != nil || e2 != nil {
			return false
		}
	}
	return subtle.ConstantTimeCompare([]byte(id), []byte(s.opts.ClientID)) == 1 &&
		subtle.ConstantTimeCompare([]byte(secret), []byte(s.opts.ClientSecret)) == 1
}

// bearer returns the request's bearer token.
func bearer(r *http.Request) string {
	scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return tok
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
