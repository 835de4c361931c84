package providertest_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/providers"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"golang.org/x/oauth2"
)

// noRedirect is a client that returns redirects instead of following them.
var noRedirect = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Timeout:       10 * time.Second,
}

// authorizeQuery is a valid authorization request for the default options.
func authorizeQuery(verifier string) url.Values {
	q := url.Values{
		"response_type": {"code"},
		"client_id":     {providertest.DefaultClientID},
		"redirect_uri":  {providertest.DefaultRedirectURI},
		"state":         {"st"},
		"scope":         {"read write"},
	}
	if verifier != "" {
		q.Set("code_challenge", oauth2.S256ChallengeFromVerifier(verifier))
		q.Set("code_challenge_method", "S256")
	}
	return q
}

// getAuthorize sends q to the authorize endpoint; it returns the status and
// the callback's query if redirected.
func getAuthorize(t *testing.T, srv *providertest.Server, q url.Values) (int, url.Values) {
	t.Helper()
	resp, err := noRedirect.Get(srv.URL(providertest.Authorize) + "?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		return resp.StatusCode, nil
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(loc.String(), providertest.DefaultRedirectURI+"?") {
		t.Fatalf("redirected to %q; want the redirect URI", loc)
	}
	return resp.StatusCode, loc.Query()
}

func code(t *testing.T, srv *providertest.Server, verifier string) string {
	t.Helper()
	_, cb := getAuthorize(t, srv, authorizeQuery(verifier))
	if cb.Get("code") == "" {
		t.Fatalf("authorize: callback %v; want a code", cb)
	}
	return cb.Get("code")
}

// post sends form to ep with Basic credentials (if basic) and returns the
// status and the decoded JSON answer.
func post(t *testing.T, srv *providertest.Server, ep providertest.Endpoint, form url.Values, basic bool) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", srv.URL(ep), strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if basic {
		req.SetBasicAuth(providertest.DefaultClientID, providertest.DefaultClientSecret)
	}
	return send(t, req)
}

func send(t *testing.T, req *http.Request) (int, map[string]any) {
	t.Helper()
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	b, _ := io.ReadAll(resp.Body)
	json.Unmarshal(b, &m)
	return resp.StatusCode, m
}

func exchange(t *testing.T, srv *providertest.Server) map[string]any {
	t.Helper()
	v := oauth2.GenerateVerifier()
	st, m := post(t, srv, providertest.Token, url.Values{
		"grant_type": {"authorization_code"}, "code": {code(t, srv, v)},
		"redirect_uri": {providertest.DefaultRedirectURI}, "code_verifier": {v},
	}, true)
	if st != 200 {
		t.Fatalf("exchange: %d %v", st, m)
	}
	return m
}

func TestServer_Authorize(t *testing.T) {
	srv := providertest.Start(providertest.Options{})
	defer srv.Close()
	v := oauth2.GenerateVerifier()
	for _, tc := range []struct {
		name      string
		edit      func(url.Values)
		status    int
		wantError string // in the callback; "" means a code
	}{
		{"ok", nil, 302, ""},
		{"ok_without_pkce", func(q url.Values) { q.Del("code_challenge"); q.Del("code_challenge_method") }, 302, ""},
		{"unknown_client", func(q url.Values) { q.Set("client_id", "evil") }, 400, ""},
		{"unregistered_redirect", func(q url.Values) { q.Set("redirect_uri", providertest.DefaultRedirectURI+"/x") }, 400, ""},
		{"repeated_param", func(q url.Values) { q.Add("scope", "admin") }, 400, ""},
		{"no_state", func(q url.Values) { q.Del("state") }, 302, "invalid_request"},
		{"implicit", func(q url.Values) { q.Set("response_type", "token") }, 302, "unsupported_response_type"},
		{"plain_pkce", func(q url.Values) { q.Set("code_challenge_method", "plain") }, 302, "invalid_request"},
		{"no_pkce_method", func(q url.Values) { q.Del("code_challenge_method") }, 302, "invalid_request"},
		{"bad_challenge", func(q url.Values) { q.Set("code_challenge", "short") }, 302, "invalid_request"},
	} {
		q := authorizeQuery(v)
		if tc.edit != nil {
			tc.edit(q)
		}
		st, cb := getAuthorize(t, srv, q)
		if st != tc.status {
			t.Errorf("authorize(%s): status %d; want %d", tc.name, st, tc.status)
			continue
		}
		if st != 302 {
			continue
		}
		if got := cb.Get("error"); got != tc.wantError || (tc.wantError == "") != cb.Has("code") {
			t.Errorf("authorize(%s): callback %v; want error %q", tc.name, cb, tc.wantError)
		}
	}

	strict := providertest.Start(providertest.Options{RequirePKCE: true})
	defer strict.Close()
	q := authorizeQuery("")
	q.Set("client_id", providertest.DefaultClientID)
	if _, cb := getAuthorize(t, strict, q); cb.Get("error") != "invalid_request" {
		t.Errorf("authorize without PKCE when required: callback %v; want invalid_request", cb)
	}
	if st := srv.Stats(); st.Authorize != 10 {
		t.Errorf("Stats().Authorize = %d; want 10", st.Authorize)
	}
}

func TestServer_Token_Strict(t *testing.T) {
	srv := providertest.Start(providertest.Options{})
	defer srv.Close()
	for _, tc := range []struct {
		name   string
		req    func(codeForm url.Values) *http.Request
		status int
		err    string
	}{
		{"basic_and_params", func(f url.Values) *http.Request {
			f.Set("client_secret", providertest.DefaultClientSecret)
			return formReq(f, true, "")
		}, 401, "invalid_client"},
		{"params_only", func(f url.Values) *http.Request {
			f.Set("client_id", providertest.DefaultClientID)
			f.Set("client_secret", providertest.DefaultClientSecret)
			return formReq(f, false, "")
		}, 401, "invalid_client"},
		{"wrong_secret", func(f url.Values) *http.Request {
			r := formReq(f, false, "")
			r.SetBasicAuth(providertest.DefaultClientID, "nope")
			return r
		}, 401, "invalid_client"},
		{"query_params", func(f url.Values) *http.Request { return formReq(url.Values{}, true, f.Encode()) }, 400, "invalid_request"},
		{"repeated_param", func(f url.Values) *http.Request { f.Add("code", "x"); return formReq(f, true, "") }, 400, "invalid_request"},
		{"json_body", func(f url.Values) *http.Request {
			b, _ := json.Marshal(f)
			r := formReq(nil, true, "")
			r.Body = io.NopCloser(strings.NewReader(string(b)))
			r.ContentLength = int64(len(b))
			r.Header.Set("Content-Type", "application/json")
			return r
		}, 400, "invalid_request"},
		{"no_grant_type", func(f url.Values) *http.Request { f.Del("grant_type"); return formReq(f, true, "") }, 400, "invalid_request"},
		{"password_grant", func(f url.Values) *http.Request { f.Set("grant_type", "password"); return formReq(f, true, "") }, 400, "unsupported_grant_type"},
		{"no_redirect_uri", func(f url.Values) *http.Request { f.Del("redirect_uri"); return formReq(f, true, "") }, 400, "invalid_grant"},
		{"other_redirect_uri", func(f url.Values) *http.Request {
			f.Set("redirect_uri", "https://x.test/cb")
			return formReq(f, true, "")
		}, 400, "invalid_grant"},
		{"verifier_without_challenge", func(f url.Values) *http.Request {
			f.Set("code", code(t, srv, ""))
			f.Set("code_verifier", oauth2.GenerateVerifier())
			return formReq(f, true, "")
		}, 400, "invalid_grant"},
		{"ok", func(f url.Values) *http.Request { return formReq(f, true, "") }, 200, ""},
	} {
		v := oauth2.GenerateVerifier()
		f := url.Values{
			"grant_type": {"authorization_code"}, "code": {code(t, srv, v)},
			"redirect_uri": {providertest.DefaultRedirectURI}, "code_verifier": {v},
		}
		req := tc.req(f)
		req.URL, _ = url.Parse(srv.URL(providertest.Token) + "?" + req.URL.RawQuery)
		st, m := send(t, req)
		if st != tc.status || tc.err != "" && m["error"] != tc.err {
			t.Errorf("token(%s) = %d %v; want %d %q", tc.name, st, m, tc.status, tc.err)
		}
	}
	resp, err := http.Get(srv.URL(providertest.Token))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /token = %d; want 405", resp.StatusCode)
	}
}

// formReq builds a token request with form as its body; the URL is set by
// the caller.
func formReq(form url.Values, basic bool, rawQuery string) *http.Request {
	r, _ := http.NewRequest("POST", "http://placeholder/?"+rawQuery, strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if basic {
		r.SetBasicAuth(providertest.DefaultClientID, providertest.DefaultClientSecret)
	}
	return r
}

func TestServer_ParamsAuthStyle(t *testing.T) {
	srv := providertest.Start(providertest.Options{AuthStyle: providers.AuthStyleInParams})
	defer srv.Close()
	v := oauth2.GenerateVerifier()
	f := url.Values{
		"grant_type": {"authorization_code"}, "code": {code(t, srv, v)},
		"redirect_uri": {providertest.DefaultRedirectURI}, "code_verifier": {v},
	}
	if st, m := post(t, srv, providertest.Token, f, true); st != 401 || m["error"] != "invalid_client" {
		t.Errorf("Basic to a params server = %d %v; want 401 invalid_client", st, m)
	}
	f.Set("client_id", providertest.DefaultClientID)
	f.Set("client_secret", providertest.DefaultClientSecret)
	f.Set("code", code(t, srv, v))
	if st, m := post(t, srv, providertest.Token, f, false); st != 200 {
		t.Errorf("params to a params server = %d %v; want 200", st, m)
	}
}

func TestServer_UserInfo(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	srv := providertest.Start(providertest.Options{Now: clock, Account: "alice"})
	defer srv.Close()
	at := exchange(t, srv)["access_token"].(string)

	get := func(auth string) (int, map[string]any) {
		req, _ := http.NewRequest("GET", srv.URL(providertest.UserInfo), nil)
		req.Header.Set("Authorization", auth)
		return send(t, req)
	}
	st, m := get("Bearer " + at)
	if st != 200 || m["login"] != "alice" || !strings.HasPrefix(m["sub"].(string), "sbx_") || m["scope"] != "read write" {
		t.Errorf("userinfo = %d %v; want alice's", st, m)
	}
	if st, _ := get("bearer " + at); st != 200 {
		t.Errorf("userinfo with lowercase scheme = %d; want 200", st)
	}
	for _, auth := range []string{"", "Basic " + at, "Bearer nope"} {
		if st, _ := get(auth); st != 401 {
			t.Errorf("userinfo(%q) = %d; want 401", auth, st)
		}
	}
	mu.Lock()
	now = now.Add(time.Hour)
	mu.Unlock()
	if st, _ := get("Bearer " + at); st != 401 || srv.IsActive(at) {
		t.Errorf("userinfo with an expired token = %d; want 401", st)
	}
	if st := srv.Stats(); st.UserInfo != 6 {
		t.Errorf("Stats().UserInfo = %d; want 6", st.UserInfo)
	}
}

// TestServer_Introspect checks RFC 7662: the client authenticates; an
// active access or current refresh token is described; a rotated, expired,
// revoked or unknown one is {"active": false} and nothing else.
func TestServer_Introspect(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	srv := providertest.Start(providertest.Options{Now: clock, Account: "alice", RefreshTokenTTL: 48 * time.Hour})
	defer srv.Close()
	m := exchange(t, srv)
	at, rt := m["access_token"].(string), m["refresh_token"].(string)
	in := func(tok, hint string) map[string]any {
		t.Helper()
		f := url.Values{"token": {tok}}
		if hint != "" {
			f.Set("token_type_hint", hint)
		}
		st, r := post(t, srv, providertest.Introspect, f, true)
		if st != 200 {
			t.Fatalf("introspect = %d %v; want 200", st, r)
		}
		return r
	}
	inactive := func(what string, r map[string]any) {
		t.Helper()
		if len(r) != 1 || r["active"] != false {
			t.Errorf("introspect(%s) = %v; want only active=false", what, r)
		}
	}
	r := in(at, "access_token")
	if r["active"] != true || r["exp"] != float64(now.Add(time.Hour).Unix()) || r["username"] != "alice" ||
		r["token_type"] != "Bearer" || r["client_id"] != providertest.DefaultClientID || r["scope"] != "read write" {
		t.Errorf("introspect(access) = %v", r)
	}
	// The hint is only a hint (§2.1).
	if r := in(rt, "access_token"); r["active"] != true || r["token_type"] != "refresh_token" || r["exp"] != float64(now.Add(48*time.Hour).Unix()) {
		t.Errorf("introspect(refresh, wrong hint) = %v", r)
	}
	inactive("unknown", in("nope", ""))
	if st, _ := post(t, srv, providertest.Introspect, url.Values{"token": {at}}, false); st != 401 {
		t.Errorf("introspect without client auth = %d; want 401", st)
	}
	if st, r := post(t, srv, providertest.Introspect, url.Values{}, true); st != 400 || r["error"] != "invalid_request" {
		t.Errorf("introspect without a token = %d %v; want invalid_request", st, r)
	}

	// Rotation retires the old refresh token; expiry ends the access token.
	st, r2 := post(t, srv, providertest.Token, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, true)
	if st != 200 {
		t.Fatalf("refresh = %d %v", st, r2)
	}
	inactive("rotated refresh token", in(rt, "refresh_token"))
	mu.Lock()
	now = now.Add(time.Hour)
	mu.Unlock()
	inactive("expired access token", in(at, ""))
	rt2 := r2["refresh_token"].(string)
	if r := in(rt2, ""); r["active"] != true {
		t.Errorf("introspect(new refresh token) = %v; want active", r)
	}
	srv.RevokeGrant(srv.Grants()[0].ID)
	inactive("refresh token of a revoked grant", in(rt2, ""))
	if st := srv.Stats(); st.Introspect != 9 {
		t.Errorf("Stats().Introspect = %d; want 9", st.Introspect)
	}
}

func TestServer_RevokeGrant(t *testing.T) {
	srv := providertest.Start(providertest.Options{Account: "bob"})
	defer srv.Close()
	m := exchange(t, srv)
	gi := srv.Grants()
	if len(gi) != 1 || gi[0].Account != "bob" || gi[0].RefreshToken != m["refresh_token"] {
		t.Fatalf("Grants() = %+v", gi)
	}
	if !srv.RevokeGrant(gi[0].ID) || srv.RevokeGrant("nope") {
		t.Errorf("RevokeGrant: wrong result")
	}
	if srv.IsActive(m["access_token"].(string)) {
		t.Errorf("access token active after RevokeGrant")
	}
	st, r := post(t, srv, providertest.Token, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {m["refresh_token"].(string)}}, true)
	if st != 400 || r["error"] != "invalid_grant" {
		t.Errorf("refresh of a revoked grant = %d %v; want invalid_grant", st, r)
	}
	// RFC 7009 §2.2: unknown tokens are revoked successfully.
	if st, _ := post(t, srv, providertest.Revoke, url.Values{"token": {"unknown"}}, true); st != 200 {
		t.Errorf("revoke(unknown) = %d; want 200", st)
	}
	if st, _ := post(t, srv, providertest.Revoke, url.Values{"token": {"x"}}, false); st != 401 {
		t.Errorf("revoke without client auth = %d; want 401", st)
	}
}

func TestServer_RefreshTokenExpiry(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	srv := providertest.Start(providertest.Options{Now: clock, RefreshTokenTTL: 24 * time.Hour, DisableRotation: true})
	defer srv.Close()
	m := exchange(t, srv)
	if m["refresh_token_expires_in"] != float64(86400) {
		t.Errorf("refresh_token_expires_in = %v; want 86400", m["refresh_token_expires_in"])
	}
	refresh := func() (int, map[string]any) {
		return post(t, srv, providertest.Token, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {m["refresh_token"].(string)}}, true)
	}
	if st, r := refresh(); st != 200 || r["refresh_token"] != nil {
		t.Errorf("refresh without rotation = %d %v; want 200 without refresh_token", st, r)
	}
	mu.Lock()
	now = now.Add(24 * time.Hour)
	mu.Unlock()
	if st, r := refresh(); st != 400 || r["error"] != "invalid_grant" {
		t.Errorf("refresh with an expired token = %d %v; want invalid_grant", st, r)
	}
}

// TestServer_ConcurrentReuse presents one refresh token from many goroutines:
// exactly one wins, every other is a reuse, and the grant ends revoked.
func TestServer_ConcurrentReuse(t *testing.T) {
	srv := providertest.Start(providertest.Options{})
	defer srv.Close()
	rt := exchange(t, srv)["refresh_token"].(string)
	const n = 16
	var (
		wg sync.WaitGroup
		mu sync.Mutex
		ok int
	)
	for range n {
		wg.Go(func() {
			st, _ := post(t, srv, providertest.Token, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, true)
			if st == 200 {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	st := srv.Stats()
	if ok != 1 || st.Refreshes != 1 || st.ReuseDetections < 1 || st.Token["refresh_token"] != n || !srv.Grants()[0].Revoked {
		t.Errorf("%d successes, Stats %+v, grant %+v; want 1 success, reuse detected, grant revoked", ok, st, srv.Grants()[0])
	}
}

func TestServer_FailNext(t *testing.T) {
	srv := providertest.Start(providertest.Options{})
	defer srv.Close()
	srv.FailNext(providertest.Token, 2, providertest.ServerError(500))
	srv.FailNext(providertest.Token, 1, providertest.RateLimited("3"))
	srv.FailNext(providertest.UserInfo, 1, providertest.ServerError(0))
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"x"}}
	for i, want := range []int{500, 500, 429, 400} {
		if st, _ := post(t, srv, providertest.Token, form, true); st != want {
			t.Errorf("token request %d = %d; want %d", i, st, want)
		}
	}
	srv.FailNext(providertest.Token, 5, providertest.Garbage())
	srv.ClearFaults()
	if st, _ := post(t, srv, providertest.Token, form, true); st != 400 {
		t.Errorf("after ClearFaults = %d; want 400", st)
	}
	if st := srv.Stats(); st.Token["refresh_token"] != 5 {
		t.Errorf("Stats().Token = %v; want 5 refresh requests counted, faulted or not", st.Token)
	}
}

func TestServer_SlowStillProcesses(t *testing.T) {
	srv := providertest.Start(providertest.Options{})
	defer srv.Close()
	m := exchange(t, srv)
	srv.FailNext(providertest.Token, 1, providertest.Slow(20*time.Millisecond))
	start := time.Now()
	st, r := post(t, srv, providertest.Token, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {m["refresh_token"].(string)}}, true)
	if st != 200 || r["refresh_token"] == m["refresh_token"] || time.Since(start) < 20*time.Millisecond {
		t.Errorf("slow refresh = %d %v after %v; want a rotated token after 20ms", st, r, time.Since(start))
	}
}

func TestServer_Oversized_ValidIfReadWhole(t *testing.T) {
	srv := providertest.Start(providertest.Options{})
	defer srv.Close()
	srv.FailNext(providertest.Token, 1, providertest.Oversized(100<<10))
	st, m := post(t, srv, providertest.Token, url.Values{}, true)
	if at, _ := m["access_token"].(string); st != 200 || len(at) != len("sbx_at_")+100<<10 {
		t.Errorf("oversized answer: %d, access_token of %d bytes", st, len(at))
	}
}

// TestServer_Mounted mounts the server on a mux under a prefix, as dev mode
// does, and runs the generic provider against it.
func TestServer_Mounted(t *testing.T) {
	ts := httptest.NewUnstartedServer(nil)
	base := "http://" + ts.Listener.Addr().String()
	srv := providertest.New(providertest.Options{Prefix: "/sandbox/", BaseURL: base + "/"})
	mux := http.NewServeMux()
	mux.Handle("/sandbox/", srv)
	ts.Config.Handler = mux
	ts.Start()
	defer ts.Close()

	if got, want := srv.URL(providertest.Token), base+"/sandbox/token"; got != want {
		t.Errorf("URL(Token) = %q; want %q", got, want)
	}
	p, err := providers.NewOAuth2(srv.Config())
	if err != nil {
		t.Fatal(err)
	}
	v := oauth2.GenerateVerifier()
	u, err := p.AuthURL(providers.AuthRequest{State: "s", Verifier: v})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := noRedirect.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, _ := url.Parse(resp.Header.Get("Location"))
	g, err := p.Exchange(context.Background(), providers.ExchangeRequest{Code: loc.Query().Get("code"), Verifier: v})
	if err != nil {
		t.Fatalf("Exchange = %v", err)
	}
	if !srv.IsActive(g.Tokens[0].AccessToken) {
		t.Errorf("token not active")
	}
	for _, path := range []string{"/token", "/sandbox/nope", "/sandbox"} {
		resp, err := http.Post(base+path, "application/x-www-form-urlencoded", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("POST %s = %d; want 404", path, resp.StatusCode)
		}
	}
}
