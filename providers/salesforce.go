package providers

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Salesforce is the Salesforce provider (the OAuth 2.0 web server flow).
//
// Hosts. A grant is issued by a login host: login.salesforce.com
// (production), test.salesforce.com (sandboxes), or an org's My Domain
// ({domain}.my.salesforce.com, {domain}--{sandbox}.sandbox.my.salesforce.com).
// The host is a configuration option and a per-flow option ("host"),
// checked against an allowlist (those four, the configured host, and the
// option allowed_hosts). It is remembered in Metadata["host"] and every
// refresh and revocation goes to it, checked against the allowlist again.
//
// Expiry. Salesforce sends no expires_in: an access token lives as long as
// the org's session timeout. The expiry is the introspection endpoint's
// `exp` (RFC 7662) when it answers, else the time received plus the
// configured session timeout (default 2 h); never zero, since a zero Expiry
// would mean "valid forever" and the token would never be refreshed.
// Metadata["expiry_source"] says which ("introspect", "session_timeout").
//
// Every token response is signed: Base64(HMAC-SHA256(id + issued_at)) keyed
// with the client secret. A response whose signature does not match is
// rejected (ClassConfig, "invalid_signature": either our secret is not the
// one Salesforce signs with, or the answer did not come from Salesforce).
//
// Metadata: host, instance_url (updated from every refresh, since orgs
// move), org_id and user_id (from the identity URL `id`), id_url,
// issued_at, username (from introspection, when known), community_url.
// Account is the username, else the user id.
type Salesforce struct {
	*service
	host           sfHost // the default issuing host
	allowed        []string
	sessionTimeout time.Duration
	introspect     bool
}

var (
	_ Provider  = (*Salesforce)(nil)
	_ Validator = (*Salesforce)(nil)
)

// salesforceHosts are the login hosts always allowed. A "*." entry matches
// exactly one DNS label.
var salesforceHosts = []string{
	"login.salesforce.com",
	"test.salesforce.com",
	"*.my.salesforce.com",
	"*.sandbox.my.salesforce.com",
}

// salesforceErrors classifies Salesforce's OAuth error codes (PROVIDERS.md
// §5). invalid_grant (expired or revoked refresh token, inactive user or
// org, not approved, IP restrictions) falls to tokenError: ClassReauth on
// refresh.
var salesforceErrors = map[string]Class{
	"invalid_client_id":      ClassConfig,
	"invalid_client":         ClassConfig,
	"unsupported_grant_type": ClassConfig,
	"redirect_uri_mismatch":  ClassConfig,
}

// NewSalesforce returns the Salesforce provider. Options:
//
//	host             login.salesforce.com  the default login host (a host name, https; or an http(s) origin)
//	allowed_hosts                          further hosts a flow may name, comma-separated ("*.example.com" matches one label)
//	session_timeout  2h                    the access-token lifetime assumed when introspection does not answer
//	introspect       true                  ask /services/oauth2/introspect for the real expiry
//
// Client credentials go in the form body. The client secret is required:
// it verifies the responses' signatures.
func NewSalesforce(cfg ServiceConfig) (*Salesforce, error) {
	s, err := newService("salesforce", "Salesforce", cfg, false, map[string]string{
		"host":            "login.salesforce.com",
		"allowed_hosts":   "",
		"session_timeout": "2h",
		"introspect":      "true",
	})
	if err != nil {
		return nil, err
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("providers: salesforce provider %q: %s", s.cfg.Name, fmt.Sprintf(format, args...))
	}
	p := &Salesforce{service: s, allowed: slices.Clone(salesforceHosts)}
	if p.host, err = parseSFHost(s.opts["host"]); err != nil {
		return nil, bad("option host: %v", err)
	}
	p.allowed = append(p.allowed, p.host.canon)
	for _, h := range strings.Split(s.opts["allowed_hosts"], ",") {
		if h = strings.TrimSpace(h); h == "" {
			continue
		}
		pat := strings.TrimPrefix(h, "*.")
		sh, err := parseSFHost(pat)
		if err != nil {
			return nil, bad("option allowed_hosts: %q: %v", h, err)
		}
		if pat != h && sh.base != "https://"+sh.canon {
			return nil, bad("option allowed_hosts: %q: a wildcard entry must be a host name", h)
		}
		p.allowed = append(p.allowed, strings.TrimSuffix(h, pat)+sh.canon)
	}
	if p.sessionTimeout, err = time.ParseDuration(s.opts["session_timeout"]); err != nil || p.sessionTimeout < time.Minute {
		return nil, bad("option session_timeout must be a duration of at least 1m")
	}
	if p.introspect, err = parseBool(s.opts["introspect"]); err != nil {
		return nil, bad("option introspect: %v", err)
	}
	return p, nil
}

// Info describes the provider.
func (p *Salesforce) Info() Info { return p.info() }

// sfHost is a login host: canon is how it is written in Metadata and the
// allowlist (a lower-case host name for https, "http://host:port" for
// plain http), base the URL its endpoints hang off.
type sfHost struct{ canon, base string }

// parseSFHost reads a host option: a host name (https implied) or an
// http(s) origin without path, query or user info.
func parseSFHost(s string) (sfHost, error) {
	s = strings.TrimSpace(s)
	scheme := "https"
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.User != nil ||
			strings.TrimSuffix(u.Path, "/") != "" || u.RawQuery != "" || u.Fragment != "" {
			return sfHost{}, fmt.Errorf("%q is not a host name or an http(s) origin", s)
		}
		scheme, s = u.Scheme, u.Host
	}
	s = strings.ToLower(s)
	if !validHostPort(s) {
		return sfHost{}, fmt.Errorf("%q is not a host name", s)
	}
	if scheme == "https" {
		return sfHost{canon: s, base: "https://" + s}, nil
	}
	return sfHost{canon: "http://" + s, base: "http://" + s}, nil
}

// validHostPort accepts host[:port] with DNS labels of letters, digits and
// hyphens (and IPv4 addresses).
func validHostPort(s string) bool {
	host, port, found := strings.Cut(s, ":")
	if found {
		if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
			return false
		}
	}
	if host == "" || len(host) > 253 {
		return false
	}
	for _, l := range strings.Split(host, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			if c := l[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// hostFor returns the login host named by s ("" is the default), if it is
// on the allowlist.
func (p *Salesforce) hostFor(op, s string) (sfHost, error) {
	if s == "" {
		return p.host, nil
	}
	h, err := parseSFHost(s)
	if err == nil && p.hostAllowed(h.canon) {
		return h, nil
	}
	if op == opRefresh || op == opRevoke || op == opValidate {
		// A stored host the operator no longer allows.
		return sfHost{}, fmt.Errorf("%w: host %q is not allowed", p.errorf(op, ClassConfig, "host_not_allowed"), s)
	}
	return sfHost{}, p.invalid(op, "host_not_allowed", fmt.Sprintf("host %q is not allowed", s))
}

func (p *Salesforce) hostAllowed(canon string) bool {
	for _, a := range p.allowed {
		if suffix, ok := strings.CutPrefix(a, "*."); ok {
			label, rest, found := strings.Cut(canon, ".")
			if found && label != "" && rest == suffix {
				return true
			}
			continue
		}
		if a == canon {
			return true
		}
	}
	return false
}

// AuthURL returns the authorization URL at the flow's host (option "host",
// or the default).
func (p *Salesforce) AuthURL(req AuthRequest) (string, error) {
	if err := p.checkFlowOptions(opAuthorize, req.Options, "host"); err != nil {
		return "", err
	}
	h, err := p.hostFor(opAuthorize, req.Options["host"])
	if err != nil {
		return "", err
	}
	params := url.Values{
		"response_type": {"code"},
		"scope":         {strings.Join(p.requested(req.Scopes), " ")},
	}
	return p.authURL(h.base+"/services/oauth2/authorize", req, params)
}

// Exchange redeems the code at the flow's host, sending it once, verifies
// the signature, and sets the expiry.
func (p *Salesforce) Exchange(ctx context.Context, req ExchangeRequest) (Grant, error) {
	if err := p.checkFlowOptions(opExchange, req.Options, "host"); err != nil {
		return Grant{}, err
	}
	h, err := p.hostFor(opExchange, req.Options["host"])
	if err != nil {
		return Grant{}, err
	}
	form, err := p.codeForm(req)
	if err != nil {
		return Grant{}, err
	}
	now := p.cfg.Now()
	res, err := p.post(ctx, opExchange, h.base+"/services/oauth2/token", form, p.clientAuth(AuthStyleInParams))
	if err != nil {
		return Grant{}, err
	}
	tr, err := p.readToken(opExchange, res, salesforceErrors)
	if err != nil {
		return Grant{}, err
	}
	if err := p.verify(opExchange, tr); err != nil {
		return Grant{}, err
	}
	t := newToken("", tr, p.requested(req.Scopes), now)
	g := Grant{Tokens: []Token{t}, Metadata: map[string]string{"host": h.canon}}
	if tr.IDToken != "" {
		g.Secrets = map[string]string{"id_token": tr.IDToken}
	}
	return p.update(ctx, h, g, 0, tr, now), nil
}

// verify checks the response's signature: Base64(HMAC-SHA256(id +
// issued_at)) keyed with the client secret, compared in constant time.
func (p *Salesforce) verify(op string, tr *tokenResponse) error {
	id, _ := tr.String("id")
	issued, _ := tr.String("issued_at")
	sig, _ := tr.String("signature")
	if id == "" || issued == "" || sig == "" {
		return p.errorf(op, ClassConfig, "missing_signature")
	}
	mac := hmac.New(sha256.New, []byte(p.cfg.ClientSecret))
	mac.Write([]byte(id + issued))
	got, err := base64.StdEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, mac.Sum(nil)) {
		return p.errorf(op, ClassConfig, "invalid_signature")
	}
	return nil
}

// update records a (verified) token response in g, whose i-th token has
// just been set from it: the identity, instance_url, issued_at, and the
// token's expiry, which is never left zero.
func (p *Salesforce) update(ctx context.Context, h sfHost, g Grant, i int, tr *tokenResponse, now time.Time) Grant {
	m := g.Metadata
	idURL, _ := tr.String("id")
	m = setMeta(m, "id_url", idURL)
	if org, user, ok := sfIdentity(idURL); ok {
		m["org_id"], m["user_id"] = org, user
	}
	iu, _ := tr.String("instance_url")
	m = setMeta(m, "instance_url", iu)
	cu, _ := tr.String("sfdc_community_url")
	m = setMeta(m, "community_url", cu)
	issued, _ := tr.String("issued_at")
	m = setMeta(m, "issued_at", issued)

	t := &g.Tokens[i]
	if t.Expiry.IsZero() { // Salesforce sends no expires_in; if it ever does, it wins.
		exp, username, ok := p.introspectAccess(ctx, h, t.AccessToken, now)
		if ok {
			t.Expiry = exp
			m["expiry_source"] = "introspect"
			m = setMeta(m, "username", username)
		} else {
			t.Expiry = now.Add(p.sessionTimeout)
			if ms, err := strconv.ParseInt(issued, 10, 64); err == nil {
				if at := time.UnixMilli(ms).Add(p.sessionTimeout); at.Before(t.Expiry) && at.After(now) {
					t.Expiry = at // the session started when Salesforce issued it
				}
			}
			m["expiry_source"] = "session_timeout"
		}
	}
	g.Metadata = m
	g.Account = cmp.Or(m["username"], m["user_id"], g.Account)
	return withScopes(g)
}

// sfIdentity parses the identity URL https://{host}/id/{orgId}/{userId}.
func sfIdentity(s string) (org, user string, ok bool) {
	u, err := url.Parse(s)
	if err != nil {
		return "", "", false
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(parts) < 3 || parts[len(parts)-3] != "id" || parts[len(parts)-2] == "" || parts[len(parts)-1] == "" {
		return "", "", false
	}
	return parts[len(parts)-2], parts[len(parts)-1], true
}

// introspectCall asks /services/oauth2/introspect about token. A non-200
// or unreadable answer gives a nil introspection and the answer.
func (p *Salesforce) introspectCall(ctx context.Context, op string, h sfHost, token, hint string) (*introspection, *httpResult, error) {
	form := url.Values{"token": {token}, "token_type_hint": {hint}}
	res, err := p.post(ctx, op, h.base+"/services/oauth2/introspect", form, p.clientAuth(AuthStyleInParams))
	if err != nil {
		return nil, nil, err
	}
	return readIntrospection(res), res, nil
}

// introspectAccess returns the access token's expiry per introspection, if
// enabled and it answers sensibly (active, exp in the future but within a
// day). Failures are not errors: the session timeout stands in.
func (p *Salesforce) introspectAccess(ctx context.Context, h sfHost, token string, now time.Time) (time.Time, string, bool) {
	if !p.introspect {
		return time.Time{}, "", false
	}
	ctx, cancel := boundedContext(ctx)
	defer cancel()
	in, _, err := p.introspectCall(ctx, opExchange, h, token, "access_token")
	if err != nil {
		return time.Time{}, "", false
	}
	exp, ok := in.expiry(now, 24*time.Hour)
	if !ok {
		return time.Time{}, "", false
	}
	return exp, in.Username, true
}

// storedHost returns the host that issued g.
func (p *Salesforce) storedHost(op string, g Grant) (sfHost, error) {
	return p.hostFor(op, g.Metadata["host"])
}

// Refresh renews the access token at the host that issued the grant. The
// refresh token is kept unless the response rotates it (an app setting).
// instance_url, issued_at and the expiry are updated; the signature is
// verified.
func (p *Salesforce) Refresh(ctx context.Context, g Grant, credential string) (Grant, error) {
	h, err := p.storedHost(opRefresh, g)
	if err != nil {
		return Grant{}, err
	}
	out, tr, err := p.refresh(ctx, g, credential, h.base+"/services/oauth2/token", p.clientAuth(AuthStyleInParams), salesforceErrors)
	if err != nil {
		return Grant{}, err
	}
	if err := p.verify(opRefresh, tr); err != nil {
		return Grant{}, err
	}
	if out.Metadata == nil {
		out.Metadata = map[string]string{}
	}
	out.Metadata["host"] = h.canon
	i := slices.IndexFunc(out.Tokens, func(t Token) bool { return t.Name == credential })
	out = p.update(ctx, h, out, i, tr, p.cfg.Now())
	out.Secrets = setMeta(out.Secrets, "id_token", tr.IDToken)
	return out, nil
}

// Revoke revokes the refresh token (which revokes its access tokens too)
// or, without one, the access token, at the issuing host. A 400
// invalid_token means it is revoked already: success.
func (p *Salesforce) Revoke(ctx context.Context, g Grant) error {
	t, ok := primary(g)
	if !ok {
		return nil
	}
	tok := cmp.Or(t.RefreshToken, t.AccessToken)
	if tok == "" {
		return nil
	}
	h, err := p.storedHost(opRevoke, g)
	if err != nil {
		return err
	}
	return p.revokeToken(ctx, h.base+"/services/oauth2/revoke", tok, salesforceErrors)
}

// Validate checks the grant without refreshing it. With a refresh token
// and introspection on, it introspects the refresh token: inactive means
// the grant is dead (ClassReauth). Otherwise it calls userinfo with the
// access token; a rejection is ClassReauth only when there is no refresh
// token, since Salesforce's expiry is an estimate and the session may
// simply have ended.
func (p *Salesforce) Validate(ctx context.Context, g Grant) error {
	t, ok := primary(g)
	if !ok || t.AccessToken == "" && t.RefreshToken == "" {
		return p.errorf(opValidate, ClassReauth, "no_token")
	}
	h, err := p.storedHost(opValidate, g)
	if err != nil {
		return err
	}
	if t.RefreshToken != "" && p.introspect {
		in, res, err := p.introspectCall(ctx, opValidate, h, t.RefreshToken, "refresh_token")
		switch {
		case err != nil:
			return err
		case in != nil && in.Active:
			return nil
		case in != nil:
			return p.errorf(opValidate, ClassReauth, "inactive")
		}
		if e := p.apiStatus(opValidate, res); e != nil {
			return e
		}
		code := ""
		if tr, err := parseTokenResponse(res.Header.Get("Content-Type"), res.Body); err == nil {
			code = tr.Error
		}
		if res.Status == http.StatusUnauthorized || res.Status == http.StatusForbidden {
			return p.httpError(opValidate, res, ClassConfig) // introspection authenticates the client
		}
		return p.classify(opValidate, res, code, salesforceErrors)
	}
	if expiredAt(t, p.cfg.Now()) {
		return p.expiredError()
	}
	req, err := newRequest(ctx, http.MethodGet, h.base+"/services/oauth2/userinfo", t.AccessToken, nil)
	if err != nil {
		return err
	}
	res, err := p.send(ctx, opValidate, req)
	if err != nil {
		return err
	}
	if e := p.apiStatus(opValidate, res); e != nil {
		return e
	}
	switch {
	case res.Status == http.StatusOK:
		return nil
	case res.Status == http.StatusForbidden && strings.Contains(string(res.Body), "REQUEST_LIMIT_EXCEEDED"):
		e := p.httpError(opValidate, res, ClassTransient)
		e.Code = "REQUEST_LIMIT_EXCEEDED"
		e.RetryAfter = parseRetryAfter(res.Header, p.cfg.Now())
		return e
	case res.Status == http.StatusUnauthorized || res.Status == http.StatusForbidden:
		if t.RefreshToken != "" {
			return p.expiredError()
		}
		e := p.httpError(opValidate, res, ClassReauth)
		e.Code = "INVALID_SESSION_ID"
		return e
	}
	return p.httpError(opValidate, res, ClassTransient)
}
