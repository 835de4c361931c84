package providers_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/providers"
	"github.com/tokenvault/tokenvault/providers/providertest"
)

// introspector is an RFC 7662 endpoint that answers what a test tells it
// and records the forms it was sent.
type introspector struct {
	*httptest.Server
	mu     sync.Mutex
	status int
	header http.Header
	body   string
	forms  []url.Values
}

func newIntrospector(t *testing.T) *introspector {
	in := &introspector{status: http.StatusOK}
	in.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		in.mu.Lock()
		defer in.mu.Unlock()
		if id, secret, ok := r.BasicAuth(); ok && id == providertest.DefaultClientID && secret == providertest.DefaultClientSecret {
			in.forms = append(in.forms, r.PostForm)
		}
		for k, v := range in.header {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(in.status)
		w.Write([]byte(in.body))
	}))
	t.Cleanup(in.Close)
	return in
}

func (in *introspector) answer(status int, body string, header http.Header) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.status, in.body, in.header = status, body, header
}

// sent returns the forms received with the client's credentials.
func (in *introspector) sent() []url.Values {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]url.Values(nil), in.forms...)
}

// TestOAuth2_IntrospectedExpiry: a token response without expires_in gets
// the expiry the introspection endpoint reports, at the exchange and at
// every refresh, and the grant says where it came from; with expires_in
// nothing is introspected.
func TestOAuth2_IntrospectedExpiry(t *testing.T) {
	t.Parallel()
	clk := newClock()
	srv, p := setup(t, providertest.Options{Now: clk.Now, OmitExpiresIn: true, AccessTokenTTL: 2 * time.Hour}, nil)
	g := connect(t, srv, p)
	for i := range 2 {
		tok, _ := g.Token("")
		if want := clk.Now().Add(2 * time.Hour); !tok.Expiry.Equal(want) || g.Metadata["expiry_source"] != "introspect" {
			t.Errorf("grant %d: Expiry %v, metadata %v; want %v from introspection", i, tok.Expiry, g.Metadata, want)
		}
		if st := srv.Stats(); st.Introspect != i+1 {
			t.Errorf("grant %d: %d introspections; want %d", i, st.Introspect, i+1)
		}
		clk.Add(90 * time.Minute)
		g = mustRefresh(t, p, g)
	}
	if !p.Info().Validation {
		t.Error("Info().Validation = false with an introspection endpoint")
	}

	// expires_in wins, without a call at refresh; a stale expiry_source
	// goes. The exchange introspects once, for the account's name.
	srv2, p2 := setup(t, providertest.Options{Now: clk.Now}, nil)
	g2 := connect(t, srv2, p2)
	if n := srv2.Stats().Introspect; n != 1 || g2.Account != providertest.DefaultAccount {
		t.Errorf("exchange: %d introspections, account %q; want 1 and %q", n, g2.Account, providertest.DefaultAccount)
	}
	g2.Metadata = map[string]string{"expiry_source": "introspect", "kept": "yes"}
	g2 = mustRefresh(t, p2, g2)
	if tok, _ := g2.Token(""); !tok.Expiry.Equal(clk.Now().Add(time.Hour)) || len(g2.Metadata) != 1 || g2.Metadata["kept"] != "yes" {
		t.Errorf("with expires_in: Expiry %v, metadata %v; want an hour from expires_in, only the other metadata", tok.Expiry, g2.Metadata)
	}
	if n := srv2.Stats().Introspect; n != 1 {
		t.Errorf("with expires_in: %d introspections; want only the exchange's", n)
	}
}

// TestOAuth2_IntrospectionUnusable: whatever the introspection endpoint
// answers, the token response (which spent a refresh token) is returned;
// an answer that is not a usable expiry leaves Expiry zero.
func TestOAuth2_IntrospectionUnusable(t *testing.T) {
	t.Parallel()
	clk := newClock()
	now := clk.Now()
	sec := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).Unix(), 10) }
	for _, tc := range []struct {
		name, body string
		status     int
		want       time.Duration // 0: zero Expiry
	}{
		{"usable", `{"active":true,"exp":` + sec(time.Hour) + `}`, 200, time.Hour},
		{"exp as a string", `{"active":true,"exp":"` + sec(30*time.Minute) + `"}`, 200, 30 * time.Minute},
		{"inactive", `{"active":false}`, 200, 0},
		{"active without exp", `{"active":true}`, 200, 0},
		{"exp in the past", `{"active":true,"exp":` + sec(-time.Minute) + `}`, 200, 0},
		{"exp in milliseconds", `{"active":true,"exp":` + strconv.FormatInt(now.Add(time.Hour).UnixMilli(), 10) + `}`, 200, 0},
		{"exp not a number", `{"active":true,"exp":"soon"}`, 200, 0},
		{"not JSON", `<html>`, 200, 0},
		{"refused", `{"error":"invalid_client"}`, 401, 0},
		{"server error", `oops`, 503, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := newIntrospector(t)
			in.answer(tc.status, tc.body, nil)
			srv, p := setup(t, providertest.Options{Now: clk.Now, OmitExpiresIn: true}, func(c *providers.OAuth2Config) { c.IntrospectURL = in.URL })
			g := connect(t, srv, p)
			g2, err := p.Refresh(context.Background(), g, "")
			if err != nil {
				t.Fatalf("Refresh = %v; want the refreshed grant whatever introspection says", err)
			}
			for i, g := range []providers.Grant{g, g2} {
				tok, _ := g.Token("")
				var want time.Time
				if tc.want > 0 {
					want = now.Add(tc.want)
				}
				if !tok.Expiry.Equal(want) || (g.Metadata["expiry_source"] == "introspect") != (tc.want > 0) {
					t.Errorf("grant %d: Expiry %v, metadata %v; want %v", i, tok.Expiry, g.Metadata, want)
				}
			}
			if gi := srv.Grants(); gi[0].RefreshToken != tokenOf(g2).RefreshToken {
				t.Error("the refreshed grant does not hold the server's current refresh token")
			}
			forms := in.sent()
			if len(forms) != 2 || forms[1].Get("token") != tokenOf(g2).AccessToken || forms[1].Get("token_type_hint") != "access_token" {
				t.Errorf("introspection requests %v; want the new access token, authenticated, twice", forms)
			}
		})
	}
}

// TestOAuth2_IntrospectionBounded: a hanging introspection endpoint delays
// a refresh by at most half of what is left of its deadline.
func TestOAuth2_IntrospectionBounded(t *testing.T) {
	t.Parallel()
	srv, p := setup(t, providertest.Options{OmitExpiresIn: true}, nil)
	g := connect(t, srv, p)
	srv.FailNext(providertest.Introspect, 1, providertest.Slow(10*time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	g2, err := p.Refresh(ctx, g, "")
	if err != nil || ctx.Err() != nil {
		t.Fatalf("Refresh = %v with %v left; want the grant before the deadline", err, time.Until(deadline(ctx)))
	}
	if tok := tokenOf(g2); !tok.Expiry.IsZero() || tok.AccessToken == "" {
		t.Errorf("Expiry = %v; want zero when introspection times out", tok.Expiry)
	}
}

func deadline(ctx context.Context) time.Time { d, _ := ctx.Deadline(); return d }

func tokenOf(g providers.Grant) providers.Token { t, _ := g.Token(""); return t }

// TestOAuth2_Validate checks a grant by introspection: its refresh token,
// or its access token when it has none; a dead one is ClassReauth.
func TestOAuth2_Validate(t *testing.T) {
	t.Parallel()
	clk := newClock()
	srv, p := setup(t, providertest.Options{Now: clk.Now}, nil)
	g := connect(t, srv, p)
	if err := p.Validate(context.Background(), g); err != nil {
		t.Fatalf("Validate(live) = %v", err)
	}
	accessOnly := providers.Grant{Tokens: []providers.Token{{AccessToken: tokenOf(g).AccessToken, TokenType: "Bearer"}}}
	if err := p.Validate(context.Background(), accessOnly); err != nil {
		t.Fatalf("Validate(live access token, no refresh token) = %v", err)
	}
	clk.Add(time.Hour)
	err := p.Validate(context.Background(), accessOnly)
	wantErr(t, "Validate(expired access token, no refresh token)", err, providers.ClassReauth, "inactive")
	if err := p.Validate(context.Background(), g); err != nil {
		t.Errorf("Validate(expired access token, live refresh token) = %v; want nil", err)
	}
	srv.RevokeGrant(srv.Grants()[0].ID)
	err = p.Validate(context.Background(), g)
	wantErr(t, "Validate(revoked)", err, providers.ClassReauth, "inactive")
	if s := err.Error(); strings.Contains(s, tokenOf(g).RefreshToken) || strings.Contains(s, tokenOf(g).AccessToken) {
		t.Errorf("the error %q names a token", s)
	}
	wantErr(t, "Validate(no tokens)", p.Validate(context.Background(), providers.Grant{}), providers.ClassReauth, "no_token")
	if n := srv.Stats().Introspect; n != 6 {
		t.Errorf("%d introspections; want 6 (the exchange's and 5 validations)", n)
	}

	_, plain := setup(t, providertest.Options{}, func(c *providers.OAuth2Config) { c.IntrospectURL = "" })
	if plain.Info().Validation {
		t.Error("Info().Validation = true without an introspection endpoint")
	}
	wantErr(t, "Validate without an endpoint", plain.Validate(context.Background(), g), providers.ClassConfig, "validation_unsupported")
}

// TestOAuth2_Validate_Failures: the introspection endpoint judges the
// client, never the grant, so only "active": false is ClassReauth.
func TestOAuth2_Validate_Failures(t *testing.T) {
	t.Parallel()
	in := newIntrospector(t)
	srv, p := setup(t, providertest.Options{}, func(c *providers.OAuth2Config) { c.IntrospectURL = in.URL })
	g := connect(t, srv, p)
	for _, tc := range []struct {
		name   string
		status int
		body   string
		header http.Header
		class  providers.Class
		code   string
	}{
		{"wrong client", 401, `{"error":"invalid_client"}`, nil, providers.ClassConfig, "invalid_client"},
		{"forbidden", 403, ``, nil, providers.ClassConfig, "http_403"},
		{"bad request", 400, `{"error":"invalid_request"}`, nil, providers.ClassConfig, "invalid_request"},
		{"not found", 404, ``, nil, providers.ClassConfig, "http_404"},
		{"redirect", 302, ``, http.Header{"Location": {"https://elsewhere.test/"}}, providers.ClassConfig, "redirect"},
		{"rate limited", 429, ``, http.Header{"Retry-After": {"30"}}, providers.ClassTransient, "http_429"},
		{"unavailable", 503, `<html>`, nil, providers.ClassTransient, "http_503"},
		{"garbage", 200, `<html>`, nil, providers.ClassTransient, "invalid_response"},
	} {
		in.answer(tc.status, tc.body, tc.header)
		err := p.Validate(context.Background(), g)
		pe := wantErr(t, "Validate("+tc.name+")", err, tc.class, tc.code)
		if tc.status == 429 && pe.RetryAfter != 30*time.Second {
			t.Errorf("Validate(%s).RetryAfter = %v; want 30s", tc.name, pe.RetryAfter)
		}
	}
	forms := in.sent()
	if len(forms) < 2 || forms[1].Get("token") != tokenOf(g).RefreshToken || forms[1].Get("token_type_hint") != "refresh_token" {
		t.Errorf("introspection requests %v; want the refresh token, authenticated", forms)
	}
	in.Close()
	wantErr(t, "Validate(endpoint down)", p.Validate(context.Background(), g), providers.ClassTransient, "")
}
