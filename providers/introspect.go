package providers

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// introspection is the part of an RFC 7662 §2.2 answer tokenvault reads.
type introspection struct {
	Active   bool            `json:"active"`
	Exp      json.RawMessage `json:"exp"`
	Username string          `json:"username"`
	Subject  string          `json:"sub"`
}

// maxAccount bounds the account name an introspection answer may give: it
// is shown on the connect page and stored with the grant.
const maxAccount = 256

// account returns the active token's username, or its subject, if it is
// short printable text; "" otherwise (a hostile or broken endpoint names
// no account rather than a megabyte or a control sequence).
func (in *introspection) account() string {
	if in == nil || !in.Active {
		return ""
	}
	for _, s := range []string{in.Username, in.Subject} {
		if s != "" && len(s) <= maxAccount && utf8.ValidString(s) && !strings.ContainsFunc(s, unicode.IsControl) {
			return s
		}
	}
	return ""
}

// readIntrospection decodes res if it is a 200 answer with a JSON object;
// anything else gives nil, for the caller to classify.
func readIntrospection(res *httpResult) *introspection {
	var in introspection
	if res.Status != http.StatusOK || !decodeJSON(res.Body, &in) {
		return nil
	}
	return &in
}

// expiry returns the token's exp (seconds since the epoch, a JSON number or
// numeric string) if the token is active and exp falls after now and no
// later than now+max. A value outside that window is more likely a unit
// mistake (milliseconds) than a lifetime, so it is not used.
func (in *introspection) expiry(now time.Time, max time.Duration) (time.Time, bool) {
	if in == nil || !in.Active {
		return time.Time{}, false
	}
	s, ok := rawString(in.Exp)
	if !ok {
		return time.Time{}, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	exp := time.Unix(n, 0)
	if !exp.After(now) || exp.After(now.Add(max)) {
		return time.Time{}, false
	}
	return exp, true
}

// introspectionError classifies an introspection answer that readIntrospection
// could not read. The endpoint judges the client, never the grant: an
// inactive token is a 200 with "active": false. So 401 and 403, and any
// other refusal, are ClassConfig; 429, 5xx and an unreadable 200 are
// transient, as tokenError has them.
func introspectionError(provider, op string, res *httpResult, now time.Time) *Error {
	code := ""
	if tr, err := parseTokenResponse(res.Header.Get("Content-Type"), res.Body); err == nil {
		code = tr.Error
	}
	e := tokenError(provider, op, res.Status, res.Header, code, now)
	if e.Class == ClassReauth || e.Class == ClassInvalidRequest {
		e.Class = ClassConfig
	}
	return e
}

// introspectTimeout bounds an introspection made only to learn an expiry:
// the token response it follows has already spent a code or rotated a
// refresh token, and must reach the vault before the caller's deadline.
const introspectTimeout = 5 * time.Second

// boundedContext returns ctx limited to introspectTimeout, and to half of
// what is left of ctx's own deadline.
func boundedContext(ctx context.Context) (context.Context, context.CancelFunc) {
	d := introspectTimeout
	if dl, ok := ctx.Deadline(); ok {
		d = min(d, time.Until(dl)/2)
	}
	return context.WithTimeout(ctx, d)
}
