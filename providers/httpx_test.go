package providers

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"7", 7 * time.Second},
		{" 120 ", 2 * time.Minute},
		{"3600", time.Hour},
		{"3601", time.Hour},
		{"99999999999999999999999", time.Hour},
		{"-5", 0},
		{"1.5", 0},
		{"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{now.Add(48 * time.Hour).Format(http.TimeFormat), time.Hour},
		{now.Add(30 * time.Second).Format(time.RFC850), 30 * time.Second},
	} {
		h := http.Header{}
		if tc.in != "" {
			h.Set("Retry-After", tc.in)
		}
		if got := parseRetryAfter(h, now); got != tc.want {
			t.Errorf("parseRetryAfter(%q) = %v; want %v", tc.in, got, tc.want)
		}
	}
}

func TestParseTokenResponse(t *testing.T) {
	const js = "application/json"
	const form = "application/x-www-form-urlencoded"
	for _, tc := range []struct {
		name, ctype, body string
		want              tokenResponse // Extra is not compared
		wantErr           bool
	}{
		{"standard", js, `{"access_token":"at","token_type":"bearer","expires_in":3600,"refresh_token":"rt","scope":"b a"}`,
			tokenResponse{AccessToken: "at", TokenType: "bearer", RefreshToken: "rt", ExpiresIn: time.Hour, Scope: []string{"a", "b"}, HasScope: true}, false},
		{"non_integer_expires_in", js, `{"access_token":"at","expires_in":3599.5}`,
			tokenResponse{AccessToken: "at", ExpiresIn: 3599500 * time.Millisecond}, false},
		{"string_expires_in", js, `{"access_token":"at","expires_in":"60"}`,
			tokenResponse{AccessToken: "at", ExpiresIn: time.Minute}, false},
		{"negative_expires_in", js, `{"access_token":"at","expires_in":-1}`, tokenResponse{AccessToken: "at"}, false},
		{"nan_expires_in", js, `{"access_token":"at","expires_in":"NaN"}`, tokenResponse{AccessToken: "at"}, false},
		{"bool_expires_in", js, `{"access_token":"at","expires_in":true}`, tokenResponse{AccessToken: "at"}, false},
		{"huge_expires_in", js, `{"access_token":"at","expires_in":1e400}`, tokenResponse{AccessToken: "at", ExpiresIn: maxExpiresIn}, false},
		{"refresh_expires_in", js, `{"access_token":"at","refresh_token_expires_in":"15811200"}`,
			tokenResponse{AccessToken: "at", RefreshExpiresIn: 15811200 * time.Second}, false},
		{"scope_array", js, `{"access_token":"at","scope":["b","a b"]}`,
			tokenResponse{AccessToken: "at", Scope: []string{"a", "b"}, HasScope: true}, false},
		{"scope_commas", js, `{"access_token":"at","scope":"chat:write, users:read"}`,
			tokenResponse{AccessToken: "at", Scope: []string{"chat:write", "users:read"}, HasScope: true}, false},
		{"scope_empty", js, `{"access_token":"at","scope":""}`, tokenResponse{AccessToken: "at", HasScope: true}, false},
		{"scope_null", js, `{"access_token":"at","scope":null}`, tokenResponse{AccessToken: "at"}, false},
		{"scope_wrong_type", js, `{"access_token":"at","scope":5}`, tokenResponse{AccessToken: "at"}, false},
		{"id_token", js, `{"access_token":"at","id_token":"x.y.z"}`, tokenResponse{AccessToken: "at", IDToken: "x.y.z"}, false},
		{"error", js, `{"error":"invalid_grant","error_description":"Bad refresh token sbx_rt_123"}`,
			tokenResponse{Error: "invalid_grant"}, false},
		{"error_object", js, `{"error":{"code":401}}`, tokenResponse{Error: "malformed_error"}, false},
		{"error_sentence", js, `{"error":"token sbx_rt_123 is bad"}`, tokenResponse{Error: "malformed_error"}, false},
		{"github_form", form, `access_token=gho_x&scope=repo%2Cgist&token_type=bearer`,
			tokenResponse{AccessToken: "gho_x", TokenType: "bearer", Scope: []string{"gist", "repo"}, HasScope: true}, false},
		{"github_form_error", "application/x-www-form-urlencoded; charset=utf-8", `error=bad_verification_code&error_description=The+code`,
			tokenResponse{Error: "bad_verification_code"}, false},
		{"form_expires_in", "text/plain", `access_token=a&expires_in=28800`, tokenResponse{AccessToken: "a", ExpiresIn: 8 * time.Hour}, false},
		{"no_content_type_json", "", `{"access_token":"at"}`, tokenResponse{AccessToken: "at"}, false},
		{"html", js, `<html>502</html>`, tokenResponse{}, true},
		{"array", js, `[1,2]`, tokenResponse{}, true},
		{"null", js, `null`, tokenResponse{}, true},
		{"trailing", js, `{"access_token":"at"} {}`, tokenResponse{}, true},
		{"empty", js, ``, tokenResponse{}, true},
		{"access_token_number", js, `{"access_token":5}`, tokenResponse{}, false},
	} {
		got, err := parseTokenResponse(tc.ctype, []byte(tc.body))
		if tc.wantErr {
			if err == nil {
				t.Errorf("parseTokenResponse(%s) = %+v; want an error", tc.name, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseTokenResponse(%s) = %v", tc.name, err)
			continue
		}
		got.Extra = nil
		if !equalTR(*got, tc.want) {
			t.Errorf("parseTokenResponse(%s) = %+v; want %+v", tc.name, *got, tc.want)
		}
	}
}

func equalTR(a, b tokenResponse) bool {
	as, bs := a.Scope, b.Scope
	a.Scope, b.Scope = nil, nil
	a.Extra, b.Extra = nil, nil
	return slices.Equal(as, bs) && func() bool {
		x, _ := json.Marshal(a)
		y, _ := json.Marshal(b)
		return string(x) == string(y)
	}()
}

func TestTokenResponse_String(t *testing.T) {
	tr, err := parseTokenResponse("application/json", []byte(`{"access_token":"a","instance_url":"https://x.my.salesforce.com","n":15,"o":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key, want string
		ok        bool
	}{
		{"instance_url", "https://x.my.salesforce.com", true},
		{"n", "15", true},
		{"o", "", false},
		{"missing", "", false},
	} {
		if got, ok := tr.String(tc.key); got != tc.want || ok != tc.ok {
			t.Errorf("String(%q) = %q, %v; want %q, %v", tc.key, got, ok, tc.want, tc.ok)
		}
	}
}

func FuzzParseTokenResponse(f *testing.F) {
	for _, s := range []string{
		`{"access_token":"at","token_type":"bearer","expires_in":3599.5,"refresh_token":"rt","scope":"a b"}`,
		`{"access_token":"at","expires_in":"3600","scope":["a","b"]}`,
		`{"error":"invalid_grant"}`,
		`{"error":{"x":1},"expires_in":1e999}`,
		`access_token=a&scope=a%2Cb&expires_in=12.5`,
		`null`, `[]`, `"x"`, `{"expires_in":"-Inf"}`,
	} {
		f.Add("application/json", []byte(s))
		f.Add("application/x-www-form-urlencoded", []byte(s))
	}
	f.Fuzz(func(t *testing.T, ctype string, body []byte) {
		tr, err := parseTokenResponse(ctype, body)
		if err != nil {
			return
		}
		if tr.ExpiresIn < 0 || tr.ExpiresIn > maxExpiresIn || tr.RefreshExpiresIn < 0 || tr.RefreshExpiresIn > maxExpiresIn {
			t.Errorf("lifetimes out of range: %v, %v", tr.ExpiresIn, tr.RefreshExpiresIn)
		}
		if tr.Error != "" && errorCode(tr.Error) != tr.Error {
			t.Errorf("unsanitized error code %q", tr.Error)
		}
		if !slices.IsSorted(tr.Scope) || len(slices.Compact(slices.Clone(tr.Scope))) != len(tr.Scope) {
			t.Errorf("scopes not normalized: %q", tr.Scope)
		}
		for _, s := range tr.Scope {
			if s == "" || strings.ContainsAny(s, " ,") {
				t.Errorf("bad scope %q", s)
			}
		}
		now := time.Unix(0, 0)
		res := &httpResult{Status: 200, Header: http.Header{"Content-Type": {ctype}}, Body: body}
		readTokenResponse("p", opRefresh, res, now) // must not panic
	})
}

func TestTokenError(t *testing.T) {
	now := time.Unix(1000, 0)
	ra := http.Header{"Retry-After": {"5"}}
	for _, tc := range []struct {
		op, code string
		status   int
		h        http.Header
		class    Class
		wantCode string
		retry    time.Duration
	}{
		{opRefresh, "invalid_grant", 400, nil, ClassReauth, "invalid_grant", 0},
		{opExchange, "invalid_grant", 400, nil, ClassInvalidRequest, "invalid_grant", 0},
		{opRefresh, "invalid_client", 401, nil, ClassConfig, "invalid_client", 0},
		{opExchange, "invalid_client", 400, nil, ClassConfig, "invalid_client", 0},
		{opRefresh, "unauthorized_client", 400, nil, ClassConfig, "unauthorized_client", 0},
		{opRefresh, "unsupported_grant_type", 400, nil, ClassConfig, "unsupported_grant_type", 0},
		{opRefresh, "invalid_request", 400, nil, ClassReauth, "invalid_request", 0},
		{opExchange, "invalid_request", 400, nil, ClassInvalidRequest, "invalid_request", 0},
		{opRefresh, "invalid_scope", 400, nil, ClassReauth, "invalid_scope", 0},
		{opRefresh, "", 400, nil, ClassReauth, "http_400", 0},
		{opExchange, "", 403, nil, ClassInvalidRequest, "http_403", 0},
		{opRevoke, "", 400, nil, ClassInvalidRequest, "http_400", 0},
		{opRefresh, "", 401, nil, ClassConfig, "http_401", 0},
		{opRefresh, "", 404, nil, ClassConfig, "http_404", 0},
		{opRefresh, "", 405, nil, ClassConfig, "http_405", 0},
		{opRefresh, "", 408, nil, ClassTransient, "http_408", 0},
		{opRefresh, "", 429, ra, ClassTransient, "http_429", 5 * time.Second},
		{opRefresh, "", 503, ra, ClassTransient, "http_503", 5 * time.Second},
		{opRefresh, "invalid_grant", 500, nil, ClassTransient, "invalid_grant", 0},
		{opRefresh, "temporarily_unavailable", 400, ra, ClassTransient, "temporarily_unavailable", 5 * time.Second},
		{opRefresh, "", 302, nil, ClassConfig, "redirect", 0},
		{opExchange, "", 307, nil, ClassConfig, "redirect", 0},
		{opRefresh, "", 200, nil, ClassTransient, "invalid_response", 0},
		{opRefresh, "bad_refresh_token", 200, nil, ClassReauth, "bad_refresh_token", 0},
		{opExchange, "bad_verification_code", 200, nil, ClassInvalidRequest, "bad_verification_code", 0},
		{opRefresh, "", 101, nil, ClassTransient, "http_101", 0},
	} {
		e := tokenError("acme", tc.op, tc.status, tc.h, tc.code, now)
		if e.Class != tc.class || e.Code != tc.wantCode || e.RetryAfter != tc.retry || e.Status != tc.status || e.Op != tc.op || e.Provider != "acme" {
			t.Errorf("tokenError(%s, %d, %q) = %+v; want class %v, code %q, retry %v", tc.op, tc.status, tc.code, e, tc.class, tc.wantCode, tc.retry)
		}
	}
}

func TestNormalizeScopes(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want []string
	}{
		{nil, nil},
		{[]string{"", " ", ","}, nil},
		{[]string{"b a", "a,c", " d ,\te"}, []string{"a", "b", "c", "d", "e"}},
		{[]string{"https://www.googleapis.com/auth/drive", "openid"}, []string{"https://www.googleapis.com/auth/drive", "openid"}},
	} {
		in := slices.Clone(tc.in)
		if got := normalizeScopes(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("normalizeScopes(%q) = %q; want %q", tc.in, got, tc.want)
		}
		if !slices.Equal(in, tc.in) {
			t.Errorf("normalizeScopes modified its input")
		}
	}
}

func TestMissingScopes(t *testing.T) {
	for _, tc := range []struct {
		requested, granted, want []string
	}{
		{nil, []string{"a"}, nil},
		{[]string{"a b"}, []string{"b,a"}, nil},
		{[]string{"a", "b", "c"}, []string{"b"}, []string{"a", "c"}},
		{[]string{"a"}, nil, []string{"a"}},
	} {
		if got := missingScopes(tc.requested, tc.granted); !slices.Equal(got, tc.want) {
			t.Errorf("missingScopes(%q, %q) = %q; want %q", tc.requested, tc.granted, got, tc.want)
		}
	}
}

func TestNewHTTPClient(t *testing.T) {
	var hits atomic.Int32
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
	}))
	defer ts.Close()
	base := &http.Client{}
	hc := newHTTPClient(base)
	if base.CheckRedirect != nil || base.Timeout != 0 {
		t.Errorf("newHTTPClient modified its argument")
	}
	if hc.Timeout != defaultTimeout {
		t.Errorf("Timeout = %v; want %v", hc.Timeout, defaultTimeout)
	}
	if newHTTPClient(&http.Client{Timeout: time.Second}).Timeout != time.Second {
		t.Errorf("newHTTPClient overrode a set timeout")
	}
	res, err := postForm(context.Background(), hc, ts.URL, url.Values{"a": {"b"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != http.StatusTemporaryRedirect || hits.Load() != 1 {
		t.Errorf("postForm to a redirect: status %d after %d requests; want 307 after 1", res.Status, hits.Load())
	}
}

func TestPostForm_ClientAuth(t *testing.T) {
	type seen struct {
		user, pass string
		basic      bool
		form       url.Values
		accept     string
	}
	ch := make(chan seen, 1)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		r.ParseForm()
		ch <- seen{u, p, ok, r.PostForm, r.Header.Get("Accept")}
	}))
	defer ts.Close()
	form := url.Values{"grant_type": {"refresh_token"}}
	for _, tc := range []struct {
		auth *clientAuth
		want seen
	}{
		{nil, seen{form: url.Values{"grant_type": {"refresh_token"}}}},
		{&clientAuth{"id:1", "s&c=t", AuthStyleInHeader},
			seen{user: "id%3A1", pass: "s%26c%3Dt", basic: true, form: url.Values{"grant_type": {"refresh_token"}}}},
		{&clientAuth{"id", "sec", AuthStyleInParams},
			seen{form: url.Values{"grant_type": {"refresh_token"}, "client_id": {"id"}, "client_secret": {"sec"}}}},
		{&clientAuth{"id", "", AuthStyleInParams},
			seen{form: url.Values{"grant_type": {"refresh_token"}, "client_id": {"id"}}}},
	} {
		if _, err := postForm(context.Background(), newHTTPClient(nil), ts.URL, form, tc.auth); err != nil {
			t.Fatal(err)
		}
		got := <-ch
		if got.user != tc.want.user || got.pass != tc.want.pass || got.basic != tc.want.basic || got.accept != "application/json" ||
			len(got.form) != len(tc.want.form) || got.form.Encode() != tc.want.form.Encode() {
			t.Errorf("postForm(%+v) sent %+v; want %+v", tc.auth, got, tc.want)
		}
	}
	if len(form) != 1 {
		t.Errorf("postForm modified its form: %v", form)
	}
	if _, err := postForm(context.Background(), newHTTPClient(nil), ts.URL, form, &clientAuth{"id", "s", 0}); err == nil {
		t.Errorf("postForm with an unset auth style = nil error")
	}
}

func TestDo_Bounded(t *testing.T) {
	for _, tc := range []struct {
		name    string
		size    int
		declare bool // send a Content-Length
		wantErr bool
	}{
		{"limit", maxBodySize, true, false},
		{"limit_chunked", maxBodySize, false, false},
		{"over_declared", maxBodySize + 1, true, true},
		{"over_chunked", maxBodySize + 1, false, true},
	} {
		ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if tc.declare {
				w.Header().Set("Content-Length", strconv.Itoa(tc.size))
			}
			w.WriteHeader(200)
			buf := make([]byte, 64<<10)
			for left := tc.size; left > 0; left -= len(buf) {
				if _, err := w.Write(buf[:min(left, len(buf))]); err != nil {
					return
				}
				if !tc.declare {
					http.NewResponseController(w).Flush()
				}
			}
		}))
		req, _ := http.NewRequest("GET", ts.URL, nil)
		res, err := do(newHTTPClient(nil), req)
		ts.Close()
		if tc.wantErr {
			if !errors.Is(err, errBodyTooLarge) {
				t.Errorf("do(%s) = %v; want errBodyTooLarge", tc.name, err)
			}
			continue
		}
		if err != nil || len(res.Body) != tc.size {
			t.Errorf("do(%s) = %d bytes, %v; want %d bytes", tc.name, len(res.Body), err, tc.size)
		}
	}
}

func TestTransportError(t *testing.T) {
	ctx := context.Background()
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		err  error
		code string
		is   error
	}{
		{"canceled", canceled, context.Canceled, "canceled", context.Canceled},
		{"too_large", ctx, errBodyTooLarge, "body_too_large", nil},
		{"dns", ctx, &url.Error{Op: "Post", URL: "https://x/token?secret", Err: &net.DNSError{Err: "no such host", Name: "x"}}, "dns", nil},
		{"timeout", ctx, &url.Error{Op: "Post", URL: "u", Err: timeoutErr{}}, "timeout", nil},
		{"refused", ctx, &url.Error{Op: "Post", URL: "u", Err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}}, "network", nil},
		{"eof", ctx, io.ErrUnexpectedEOF, "network", nil},
	} {
		err := transportError(tc.ctx, "acme", opRefresh, tc.err)
		var pe *Error
		if !errors.As(err, &pe) || pe.Class != ClassTransient || pe.Code != tc.code {
			t.Errorf("transportError(%s) = %v; want transient %q", tc.name, err, tc.code)
		}
		if tc.is != nil && !errors.Is(err, tc.is) {
			t.Errorf("transportError(%s) = %v; want it to wrap %v", tc.name, err, tc.is)
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("transportError(%s) = %q leaks the URL", tc.name, err)
		}
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }
