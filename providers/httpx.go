package providers

// HTTP plumbing shared by every provider: a client that never follows
// redirects, bounded body reads, Retry-After, the RFC 6749 token response and
// the classification of token-endpoint failures. Provider files build on
// these; quirks of one provider stay in that provider's file.

import (
	"github.com/tokenvault/tokenvault/internal/retry"

	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

const (
	// maxBodySize bounds every response body a provider reads. A larger
	// answer is an error (code "body_too_large"), never a large allocation.
	maxBodySize = 1 << 20

	// defaultTimeout bounds one HTTP exchange with a provider when the
	// configured client has no timeout of its own.
	defaultTimeout = 30 * time.Second

	// maxRetryAfter caps a provider's Retry-After.
	maxRetryAfter = time.Hour

	// maxExpiresIn caps expires_in (and refresh_token_expires_in), as
	// x/oauth2 does: about 68 years.
	maxExpiresIn = math.MaxInt32 * time.Second

	userAgent = "tokenvault"
)

// AuthStyle says how a client authenticates to a provider's token and
// revocation endpoints. The zero value is invalid: every provider sets it
// explicitly, because x/oauth2's auto-detection resends a failed request with
// the other style, spending one-time codes and rotating refresh tokens twice.
// The values equal those of oauth2.AuthStyle.
type AuthStyle int

const (
	// AuthStyleInParams sends client_id and client_secret in the form body.
	AuthStyleInParams AuthStyle = 1
	// AuthStyleInHeader sends them with HTTP Basic authentication, each
	// form-urlencoded first (RFC 6749 §2.3.1).
	AuthStyleInHeader AuthStyle = 2
)

func (s AuthStyle) String() string {
	switch s {
	case AuthStyleInParams:
		return "params"
	case AuthStyleInHeader:
		return "header"
	}
	return fmt.Sprintf("AuthStyle(%d)", int(s))
}

// newHTTPClient returns the client a provider talks through: a shallow copy
// of base (nil: a new client) that never follows redirects, with
// defaultTimeout if base has no timeout. A redirect comes back as the 3xx
// response itself, which the callers classify as ClassConfig: a token
// endpoint that redirects is misconfigured, and following it would send a
// code or refresh token somewhere else.
//
// A client without a transport of its own gets one, not
// http.DefaultTransport: its pool keeps enough idle connections for the
// scheduler's concurrent refreshes to one host (DefaultTransport keeps 2),
// and nothing else in the process that closes DefaultTransport's idle
// connections can break a refresh under way.
func newHTTPClient(base *http.Client) *http.Client {
	var c http.Client
	if base != nil {
		c = *base
	}
	if c.Transport == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = maxIdlePerHost
		c.Transport = t
	}
	c.CheckRedirect = func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}
	if c.Timeout <= 0 {
		c.Timeout = defaultTimeout
	}
	return &c
}

// maxIdlePerHost is how many idle connections a provider's own transport
// keeps to one host.
const maxIdlePerHost = 64

// httpResult is a provider's answer, read in full (and bounded).
type httpResult struct {
	Status int
	Header http.Header
	Body   []byte // nil for a redirect, whose body is not read
}

// errBodyTooLarge is returned by do for an answer over maxBodySize.
var errBodyTooLarge = errors.New("response body too large")

// do sends req and reads at most maxBodySize bytes of the answer. A redirect
// is returned as a result (see newHTTPClient), not followed. The error is the
// transport's or errBodyTooLarge; turn it into a *Error with transportError.
//
// The request is sent at most once: net/http never replays a POST without an
// Idempotency-Key header once any of it was written, and no caller sets one.
func do(hc *http.Client, req *http.Request) (*httpResult, error) {
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", userAgent)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	res := &httpResult{Status: resp.StatusCode, Header: resp.Header}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		return res, nil
	}
	if resp.ContentLength > maxBodySize {
		return nil, errBodyTooLarge
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBodySize+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxBodySize {
		return nil, errBodyTooLarge
	}
	res.Body = body
	return res, nil
}

// clientAuth is how a client authenticates to an endpoint.
type clientAuth struct {
	ID, Secret string
	Style      AuthStyle
}

// postForm POSTs form (plus the client's credentials, placed as auth.Style
// says; nil auth sends none) to endpoint, asking for JSON. form is not
// modified.
func postForm(ctx context.Context, hc *http.Client, endpoint string, form url.Values, auth *clientAuth) (*httpResult, error) {
	v := make(url.Values, len(form)+2)
	for k, vs := range form {
		v[k] = slices.Clone(vs)
	}
	if auth != nil {
		switch auth.Style {
		case AuthStyleInParams:
			v.Set("client_id", auth.ID)
			if auth.Secret != "" {
				v.Set("client_secret", auth.Secret)
			}
		case AuthStyleInHeader:
		default:
			return nil, fmt.Errorf("providers: invalid auth style %v", auth.Style)
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(v.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if auth != nil && auth.Style == AuthStyleInHeader {
		req.SetBasicAuth(url.QueryEscape(auth.ID), url.QueryEscape(auth.Secret))
	}
	return do(hc, req)
}

// transportError classifies a failure of do (or postForm) as a transient
// *Error. Its Code says what failed ("timeout", "canceled", "dns", "tls",
// "body_too_large", "network"); the underlying error is not kept, since it can
// name URLs. If ctx is done, the result also wraps ctx.Err(), so
// errors.Is(err, context.Canceled) works.
func transportError(ctx context.Context, provider, op string, err error) error {
	e := &Error{Class: ClassTransient, Op: op, Provider: provider}
	var (
		dnsErr  *net.DNSError
		netErr  net.Error
		certErr *tls.CertificateVerificationError
		uaErr   x509.UnknownAuthorityError
		hostErr x509.HostnameError
		invErr  x509.CertificateInvalidError
		recErr  tls.RecordHeaderError
	)
	switch {
	case ctx.Err() != nil:
		e.Code = "canceled"
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			e.Code = "timeout"
		}
		return fmt.Errorf("%w: %w", e, ctx.Err())
	case errors.Is(err, errBodyTooLarge):
		e.Code = "body_too_large"
	case errors.As(err, &certErr), errors.As(err, &uaErr), errors.As(err, &hostErr),
		errors.As(err, &invErr), errors.As(err, &recErr):
		e.Code = "tls"
	case errors.As(err, &dnsErr):
		e.Code = "dns"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		e.Code = "timeout"
	default:
		e.Code = "network"
	}
	return e
}

// parseRetryAfter returns the delay a Retry-After header asks for, given in
// seconds or as an HTTP-date, capped at maxRetryAfter. It returns 0 if the
// header is absent, malformed or in the past.
func parseRetryAfter(h http.Header, now time.Time) time.Duration {
	return retry.ParseAfter(h.Get("Retry-After"), now, maxRetryAfter)
}

// tokenResponse is an RFC 6749 §5.1 token response, or a §5.2 error, read
// tolerantly: see parseTokenResponse.
type tokenResponse struct {
	AccessToken  string
	TokenType    string
	RefreshToken string
	IDToken      string

	// ExpiresIn is expires_in; 0 when absent, unparsable or not positive.
	ExpiresIn time.Duration
	// RefreshExpiresIn is refresh_token_expires_in (GitHub Apps, ...),
	// read like ExpiresIn.
	RefreshExpiresIn time.Duration

	// Scope is the granted scope, normalized. HasScope says whether the
	// response had one at all: RFC 6749 §5.1 lets a server omit it when it
	// granted what was asked.
	Scope    []string
	HasScope bool

	// Error is the error code (sanitized, see errorCode), or "".
	Error string

	// Extra holds every top-level field, for a provider to pick what it
	// needs (JSON: raw values; form: the first value, JSON-quoted).
	Extra map[string]json.RawMessage
}

// String reads the string field key from Extra (a JSON string, or a JSON
// number's text).
func (r *tokenResponse) String(key string) (string, bool) {
	raw, ok := r.Extra[key]
	if !ok {
		return "", false
	}
	return rawString(raw)
}

// errMalformed is returned by parseTokenResponse for a body that is neither
// JSON nor a form.
var errMalformed = errors.New("malformed token response")

// parseTokenResponse parses a token endpoint's body. contentType selects the
// format: application/x-www-form-urlencoded and text/plain are forms (GitHub's
// default), anything else is JSON. It is lenient where providers are sloppy:
//   - expires_in may be a JSON number, a numeric string, or non-integral
//     (3599.5); an unparsable, non-positive or absent value gives 0, which
//     callers read as "not said" rather than failing a response whose code
//     or refresh token is already spent;
//   - scope may be a space- or comma-separated string or a JSON array;
//   - fields of an unexpected type are treated as absent.
//
// It returns errMalformed only if the body cannot be read as an object at
// all. A missing access_token is not its concern.
func parseTokenResponse(contentType string, body []byte) (*tokenResponse, error) {
	mt, _, _ := mime.ParseMediaType(contentType)
	var fields map[string]json.RawMessage
	switch mt {
	case "application/x-www-form-urlencoded", "text/plain":
		vals, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, errMalformed
		}
		fields = make(map[string]json.RawMessage, len(vals))
		for k, vs := range vals {
			if len(vs) == 0 {
				continue
			}
			b, _ := json.Marshal(vs[0]) // a string always marshals
			fields[k] = b
		}
	default:
		d := json.NewDecoder(bytes.NewReader(body))
		if err := d.Decode(&fields); err != nil || fields == nil {
			return nil, errMalformed
		}
		if _, err := d.Token(); err != io.EOF {
			return nil, errMalformed // trailing data
		}
	}
	r := &tokenResponse{Extra: fields}
	r.AccessToken, _ = jsonString(fields["access_token"])
	r.TokenType, _ = jsonString(fields["token_type"])
	r.RefreshToken, _ = jsonString(fields["refresh_token"])
	r.IDToken, _ = jsonString(fields["id_token"])
	r.ExpiresIn = parseSeconds(fields["expires_in"])
	r.RefreshExpiresIn = parseSeconds(fields["refresh_token_expires_in"])
	if raw, ok := fields["scope"]; ok && !isNull(raw) {
		var ss []string
		if s, ok := jsonString(raw); ok {
			ss, r.HasScope = []string{s}, true
		} else if err := json.Unmarshal(raw, &ss); err == nil {
			r.HasScope = true
		}
		r.Scope = normalizeScopes(ss)
	}
	if raw, ok := fields["error"]; ok && !isNull(raw) {
		s, _ := jsonString(raw)
		r.Error = errorCode(s)
	}
	return r, nil
}

func isNull(raw json.RawMessage) bool {
	return len(raw) == 0 || string(raw) == "null"
}

// jsonString returns raw as a string if it is a JSON string.
func jsonString(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// rawString returns raw as a string if it is a JSON string or number.
func rawString(raw json.RawMessage) (string, bool) {
	if s, ok := jsonString(raw); ok {
		return s, true
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String(), true
	}
	return "", false
}

// parseSeconds reads a lifetime in seconds from a JSON number or numeric
// string, possibly non-integral, capped at maxExpiresIn. Anything else, and
// values that are not positive, give 0.
func parseSeconds(raw json.RawMessage) time.Duration {
	s, ok := rawString(raw)
	if !ok {
		return 0
	}
	s = strings.TrimSpace(s)
	if s == "" || !(s[0] >= '0' && s[0] <= '9' || s[0] == '.') {
		return 0 // also rejects "NaN", "Inf" and negative values
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil && !math.IsInf(f, 1) || f <= 0 {
		return 0
	}
	if f >= maxExpiresIn.Seconds() {
		return maxExpiresIn
	}
	return time.Duration(f * float64(time.Second)).Round(time.Millisecond)
}

// errorCode returns the provider's error code if it is a plausible one
// (RFC 6749 §5.2 characters, at most 64 of them) and "malformed_error"
// otherwise, so that a code can be logged without risk of carrying a token
// or a page of HTML.
func errorCode(s string) string {
	if s == "" || len(s) > 64 {
		return "malformed_error"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == ' ' {
			return "malformed_error"
		}
	}
	return s
}

// Ops, for Error.Op.
const (
	opAuthorize = "authorize"
	opExchange  = "exchange"
	opRefresh   = "refresh"
	opRevoke    = "revoke"
	opValidate  = "validate"
	// opMigrate trades a credential for another of the same grant (Slack's
	// oauth.v2.exchange); unlike opExchange, a rejection blames the grant.
	opMigrate = "migrate"
)

// tokenError classifies a failed answer of a token endpoint (or of any
// OAuth endpoint with RFC 6749 §5.2 errors). status and h are the HTTP
// answer's, code is the sanitized error code from its body ("" if none). The
// rules, first match wins:
//
//	3xx                                        Config, "redirect"
//	429, 5xx                                   Transient, with RetryAfter
//	invalid_client, unauthorized_client,
//	unsupported_grant_type                     Config
//	temporarily_unavailable, server_error,
//	slow_down                                  Transient
//	2xx without a code                         Transient, "invalid_response"
//	  (garbage, or no access_token)
//	401, 404, 405 without a code               Config: the token endpoint
//	                                           authenticates only the client,
//	                                           and a missing endpoint is ours
//	408 without a code                         Transient
//	invalid_grant, any other code or 4xx,
//	or an error code at 2xx:
//	  op "refresh", "validate"                 Reauth
//	  op "exchange" and others                 InvalidRequest
//	anything else (1xx, ...)                   Transient
//
// invalid_grant and other 4xx mean Reauth for a refresh because the only
// input of a refresh is the grant's refresh token: if the provider refuses it
// without blaming the client, retrying cannot help. For an exchange they mean
// the code or the verifier was bad or spent (ClassInvalidRequest): the user
// can start the flow again, the grant never existed and the operator need not
// act. Provider files map their own codes before falling back to this.
func tokenError(provider, op string, status int, h http.Header, code string, now time.Time) *Error {
	e := &Error{Op: op, Provider: provider, Status: status, Code: code}
	if e.Code == "" {
		e.Code = "http_" + strconv.Itoa(status)
	}
	switch {
	case status >= 300 && status < 400:
		e.Class, e.Code = ClassConfig, "redirect"
	case status == http.StatusTooManyRequests || status >= 500:
		e.Class = ClassTransient
		e.RetryAfter = parseRetryAfter(h, now)
	case code == "invalid_client", code == "unauthorized_client", code == "unsupported_grant_type":
		e.Class = ClassConfig
	case code == "temporarily_unavailable", code == "server_error", code == "slow_down":
		e.Class = ClassTransient
		e.RetryAfter = parseRetryAfter(h, now)
	case code == "" && status >= 200 && status < 300:
		e.Class, e.Code = ClassTransient, "invalid_response"
	case code == "" && (status == http.StatusUnauthorized || status == http.StatusNotFound || status == http.StatusMethodNotAllowed):
		e.Class = ClassConfig
	case code == "" && status == http.StatusRequestTimeout:
		e.Class = ClassTransient
	case status >= 200 && status < 500:
		e.Class = ClassInvalidRequest
		if op == opRefresh || op == opValidate {
			e.Class = ClassReauth
		}
	default:
		e.Class = ClassTransient
	}
	return e
}

// readTokenResponse parses and checks a standard token endpoint answer: a 2xx
// with an access_token and no error. Anything else is a *Error from
// tokenError.
func readTokenResponse(provider, op string, res *httpResult, now time.Time) (*tokenResponse, error) {
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
	return nil, tokenError(provider, op, res.Status, res.Header, code, now)
}

// normalizeTokenType returns "Bearer" for any spelling of "bearer" and for an
// empty type (RFC 6749 requires token_type; the providers that omit it issue
// bearer tokens), and t unchanged otherwise.
func normalizeTokenType(t string) string {
	if t == "" || strings.EqualFold(t, "bearer") {
		return "Bearer"
	}
	return t
}

// normalizeScopes splits every element of s on spaces and commas, trims,
// removes duplicates and empty strings, and sorts. It returns nil if no scope
// remains. s is not modified.
func normalizeScopes(s []string) []string {
	var out []string
	for _, e := range s {
		for _, f := range strings.FieldsFunc(e, func(r rune) bool {
			return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r'
		}) {
			out = append(out, f)
		}
	}
	if len(out) == 0 {
		return nil
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// missingScopes returns the normalized scopes of requested that granted does
// not contain, or nil.
func missingScopes(requested, granted []string) []string {
	g := normalizeScopes(granted)
	var out []string
	for _, s := range normalizeScopes(requested) {
		if _, found := slices.BinarySearch(g, s); !found {
			out = append(out, s)
		}
	}
	return out
}
