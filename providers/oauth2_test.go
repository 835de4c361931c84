package providers_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/providers"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"golang.org/x/oauth2"
)

// clock is a settable clock for the fake and the provider.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// setup starts a fake with opts and returns it with a provider built from
// its Config, edited by edit if not nil.
func setup(t *testing.T, opts providertest.Options, edit func(*providers.OAuth2Config)) (*providertest.Server, *providers.OAuth2) {
	t.Helper()
	srv := providertest.Start(opts)
	t.Cleanup(srv.Close)
	cfg := srv.Config()
	if edit != nil {
		edit(&cfg)
	}
	p, err := providers.NewOAuth2(cfg)
	if err != nil {
		t.Fatalf("NewOAuth2: %v", err)
	}
	return srv, p
}

// authorize runs the browser's part: it gets p's authorization URL, follows
// it to the fake without following the final redirect, and returns the
// callback's query.
func authorize(t *testing.T, srv *providertest.Server, p providers.Provider, req providers.AuthRequest) url.Values {
	t.Helper()
	if req.State == "" {
		req.State = fmt.Sprintf("st-%d", states.Add(1))
	}
	u, err := p.AuthURL(req)
	if err != nil {
		t.Fatalf("AuthURL: %v", err)
	}
	hc := *srv.Client()
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := hc.Get(u)
	if err != nil {
		t.Fatalf("GET authorize: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("GET authorize: status %d; want 302", resp.StatusCode)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatalf("bad Location: %v", err)
	}
	if got, want := loc.Scheme+"://"+loc.Host+loc.Path, p.Info().RedirectURL; got != want {
		t.Fatalf("redirected to %q; want %q", got, want)
	}
	q := loc.Query()
	if q.Get("state") != req.State {
		t.Fatalf("callback state = %q; want %q", q.Get("state"), req.State)
	}
	return q
}

var states atomic.Int64

// connect runs the flow up to a grant.
func connect(t *testing.T, srv *providertest.Server, p providers.Provider, scopes ...string) providers.Grant {
	t.Helper()
	v := oauth2.GenerateVerifier()
	q := authorize(t, srv, p, providers.AuthRequest{Verifier: v, Scopes: scopes})
	g, err := p.Exchange(context.Background(), providers.ExchangeRequest{Code: q.Get("code"), Verifier: v, Scopes: scopes})
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	return g
}

// wantErr checks that err is a *providers.Error of class c (and code, if
// not empty).
func wantErr(t *testing.T, what string, err error, c providers.Class, code string) *providers.Error {
	t.Helper()
	var pe *providers.Error
	if !errors.As(err, &pe) {
		t.Fatalf("%s = %v; want a *providers.Error of class %v", what, err, c)
	}
	if pe.Class != c || code != "" && pe.Code != code {
		t.Fatalf("%s = %v (class %v, code %q); want class %v, code %q", what, err, pe.Class, pe.Code, c, code)
	}
	return pe
}

func TestOAuth2_FullFlow(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts providertest.Options
		tls  bool
	}{
		{"header", providertest.Options{AuthStyle: providers.AuthStyleInHeader}, false},
		{"params", providertest.Options{AuthStyle: providers.AuthStyleInParams}, false},
		{"tls", providertest.Options{}, true},
		{"form_encoded", providertest.Options{FormEncoded: true}, false},
		{"no_rotation", providertest.Options{DisableRotation: true}, false},
		{"prefix_secret_chars", providertest.Options{Prefix: "/sandbox", ClientSecret: "s3cr:t+/=%"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			tc.opts.Now = clk.Now
			tc.opts.RefreshTokenTTL = 30 * 24 * time.Hour
			var srv *providertest.Server
			if tc.tls {
				srv = providertest.StartTLS(tc.opts)
			} else {
				srv = providertest.Start(tc.opts)
			}
			defer srv.Close()
			p, err := providers.NewOAuth2(srv.Config())
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()

			g := connect(t, srv, p, "read", "write")
			tok, ok := g.Token("")
			if !ok {
				t.Fatalf("Exchange grant has no primary token: %+v", g)
			}
			if !strings.HasPrefix(tok.AccessToken, "sbx_at_") || !strings.HasPrefix(tok.RefreshToken, "sbx_rt_") {
				t.Errorf("tokens = %q, %q; want sbx_at_..., sbx_rt_...", tok.AccessToken, tok.RefreshToken)
			}
			if tok.TokenType != "Bearer" {
				t.Errorf("TokenType = %q; want Bearer", tok.TokenType)
			}
			if want := clk.Now().Add(time.Hour); !tok.Expiry.Equal(want) {
				t.Errorf("Expiry = %v; want %v", tok.Expiry, want)
			}
			if want := clk.Now().Add(30 * 24 * time.Hour); !tok.RefreshExpiry.Equal(want) {
				t.Errorf("RefreshExpiry = %v; want %v", tok.RefreshExpiry, want)
			}
			if want := []string{"read", "write"}; !slices.Equal(g.Scopes, want) || !slices.Equal(tok.Scopes, want) {
				t.Errorf("Scopes = %q, token %q; want %q", g.Scopes, tok.Scopes, want)
			}
			if !srv.IsActive(tok.AccessToken) {
				t.Errorf("IsActive(exchanged token) = false")
			}

			clk.Add(50 * time.Minute)
			g2, err := p.Refresh(ctx, g, "")
			if err != nil {
				t.Fatalf("Refresh: %v", err)
			}
			tok2, _ := g2.Token("")
			if tok2.AccessToken == tok.AccessToken {
				t.Errorf("Refresh returned the same access token")
			}
			rotated := tok2.RefreshToken != tok.RefreshToken
			if rotated == tc.opts.DisableRotation {
				t.Errorf("refresh token rotated = %v; want %v", rotated, !tc.opts.DisableRotation)
			}
			if want := clk.Now().Add(time.Hour); !tok2.Expiry.Equal(want) {
				t.Errorf("refreshed Expiry = %v; want %v", tok2.Expiry, want)
			}
			if gi := srv.Grants(); len(gi) != 1 || gi[0].RefreshToken != tok2.RefreshToken || gi[0].Account != providertest.DefaultAccount {
				t.Errorf("Grants() = %+v; want one grant of %q with refresh token %q", gi, providertest.DefaultAccount, tok2.RefreshToken)
			}

			if err := p.Revoke(ctx, g2); err != nil {
				t.Fatalf("Revoke: %v", err)
			}
			if srv.IsActive(tok2.AccessToken) || srv.IsActive(tok.AccessToken) {
				t.Errorf("access tokens still active after Revoke")
			}
			if err := p.Revoke(ctx, g2); err != nil {
				t.Errorf("second Revoke = %v; want nil", err)
			}
			_, err = p.Refresh(ctx, g2, "")
			wantErr(t, "Refresh after Revoke", err, providers.ClassReauth, "invalid_grant")

			st := srv.Stats()
			if st.Authorize != 1 || st.Token["authorization_code"] != 1 || st.Token["refresh_token"] != 2 || st.Refreshes != 1 || st.Revoke != 2 {
				t.Errorf("Stats = %+v; want 1 authorize, 1 code, 2 refresh requests, 1 refresh, 2 revokes", st)
			}
		})
	}
}

func TestOAuth2_Exchange_Errors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		opts     providertest.Options
		edit     func(*providers.OAuth2Config)
		verifier string // sent to Exchange instead of the right one; "-" for none
		before   func(*providertest.Server, *clock)
		class    providers.Class
		code     string
	}{
		{name: "pkce_wrong_verifier", verifier: oauth2.GenerateVerifier(), class: providers.ClassInvalidRequest, code: "invalid_grant"},
		{name: "pkce_missing_verifier", verifier: "-", class: providers.ClassInvalidRequest, code: "invalid_grant"},
		{name: "code_expired", before: func(_ *providertest.Server, c *clock) { c.Add(61 * time.Second) },
			class: providers.ClassInvalidRequest, code: "invalid_grant"},
		{name: "wrong_secret", edit: func(c *providers.OAuth2Config) { c.ClientSecret = "nope" },
			class: providers.ClassConfig, code: "invalid_client"},
		{name: "params_style_to_header_server", edit: func(c *providers.OAuth2Config) { c.AuthStyle = providers.AuthStyleInParams },
			class: providers.ClassConfig, code: "invalid_client"},
		{name: "header_style_to_params_server", opts: providertest.Options{AuthStyle: providers.AuthStyleInParams},
			edit:  func(c *providers.OAuth2Config) { c.AuthStyle = providers.AuthStyleInHeader },
			class: providers.ClassConfig, code: "invalid_client"},
		{name: "server_error_503", before: func(s *providertest.Server, _ *clock) {
			s.FailNext(providertest.Token, 1, providertest.ServerError(503))
		}, class: providers.ClassTransient, code: "http_503"},
		{name: "rate_limited", before: func(s *providertest.Server, _ *clock) {
			s.FailNext(providertest.Token, 1, providertest.RateLimited("7"))
		}, class: providers.ClassTransient, code: "http_429"},
		{name: "garbage", before: func(s *providertest.Server, _ *clock) {
			s.FailNext(providertest.Token, 1, providertest.Garbage())
		}, class: providers.ClassTransient, code: "invalid_response"},
		{name: "redirect", before: func(s *providertest.Server, _ *clock) {
			s.FailNext(providertest.Token, 1, providertest.Redirect(""))
		}, class: providers.ClassConfig, code: "redirect"},
		{name: "dropped", before: func(s *providertest.Server, _ *clock) {
			s.FailNext(providertest.Token, 1, providertest.DropAfterRotate())
		}, class: providers.ClassTransient, code: "network"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			tc.opts.Now = clk.Now
			srv, p := setup(t, tc.opts, tc.edit)
			v := oauth2.GenerateVerifier()
			q := authorize(t, srv, p, providers.AuthRequest{Verifier: v})
			if tc.before != nil {
				tc.before(srv, clk)
			}
			switch tc.verifier {
			case "":
			case "-":
				v = ""
			default:
				v = tc.verifier
			}
			_, err := p.Exchange(context.Background(), providers.ExchangeRequest{Code: q.Get("code"), Verifier: v})
			pe := wantErr(t, "Exchange", err, tc.class, tc.code)
			if tc.name == "rate_limited" && pe.RetryAfter != 7*time.Second {
				t.Errorf("RetryAfter = %v; want 7s", pe.RetryAfter)
			}
			for _, secret := range []string{q.Get("code"), v, providertest.DefaultClientSecret} {
				if secret != "" && strings.Contains(err.Error(), secret) {
					t.Errorf("error %q contains a secret", err)
				}
			}
			// The code is sent exactly once, whatever the outcome: no
			// auth-style auto-detection, no retry, no redirect followed.
			if n := srv.Stats().Token["authorization_code"]; n != 1 {
				t.Errorf("token requests = %d; want exactly 1", n)
			}
		})
	}
}

func TestOAuth2_Exchange_CodeReuse(t *testing.T) {
	t.Parallel()
	srv, p := setup(t, providertest.Options{}, nil)
	v := oauth2.GenerateVerifier()
	q := authorize(t, srv, p, providers.AuthRequest{Verifier: v})
	req := providers.ExchangeRequest{Code: q.Get("code"), Verifier: v}
	g, err := p.Exchange(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Exchange(context.Background(), req)
	wantErr(t, "second Exchange", err, providers.ClassInvalidRequest, "invalid_grant")
	st := srv.Stats()
	if st.Token["authorization_code"] != 2 || st.CodeReuses != 1 {
		t.Errorf("Stats = %+v; want 2 code requests (one per Exchange), 1 code reuse", st)
	}
	// RFC 6749 §4.1.2: the grant issued for a reused code is revoked.
	if tok, _ := g.Token(""); srv.IsActive(tok.AccessToken) {
		t.Errorf("grant of a reused code still active")
	}
}

func TestOAuth2_Refresh_ReuseDetection(t *testing.T) {
	t.Parallel()
	srv, p := setup(t, providertest.Options{}, nil)
	ctx := context.Background()
	g1 := connect(t, srv, p)
	g2, err := p.Refresh(ctx, g1, "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Refresh(ctx, g1, "") // the rotated-away refresh token
	wantErr(t, "Refresh(old refresh token)", err, providers.ClassReauth, "invalid_grant")
	if st := srv.Stats(); st.ReuseDetections != 1 {
		t.Errorf("ReuseDetections = %d; want 1", st.ReuseDetections)
	}
	if tok, _ := g2.Token(""); srv.IsActive(tok.AccessToken) {
		t.Errorf("newest access token still active after reuse detection")
	}
	_, err = p.Refresh(ctx, g2, "")
	wantErr(t, "Refresh(newest refresh token)", err, providers.ClassReauth, "invalid_grant")
	if gi := srv.Grants(); len(gi) != 1 || !gi[0].Revoked {
		t.Errorf("Grants() = %+v; want the grant revoked", gi)
	}
}

func TestOAuth2_Refresh_DropAfterRotate(t *testing.T) {
	t.Parallel()
	srv, p := setup(t, providertest.Options{}, nil)
	ctx := context.Background()
	g := connect(t, srv, p)
	old, _ := g.Token("")

	srv.FailNext(providertest.Token, 1, providertest.DropAfterRotate())
	_, err := p.Refresh(ctx, g, "")
	wantErr(t, "Refresh(dropped)", err, providers.ClassTransient, "network")
	if n := srv.Stats().Token["refresh_token"]; n != 1 {
		t.Fatalf("refresh requests = %d; want 1 (never resent)", n)
	}
	gi := srv.Grants()
	if len(gi) != 1 || gi[0].RefreshToken == old.RefreshToken || gi[0].Rotations != 1 {
		t.Fatalf("Grants() = %+v; want the refresh token rotated once", gi)
	}

	// The rotation the client never saw left the server's token the only
	// valid one.
	lost := g
	lost.Tokens = []providers.Token{old}
	lost.Tokens[0].RefreshToken = gi[0].RefreshToken
	if _, err := p.Refresh(ctx, lost, ""); err != nil {
		t.Fatalf("Refresh(rotated token) = %v; want success", err)
	}
	// and presenting the old one is a reuse, which kills the grant.
	_, err = p.Refresh(ctx, g, "")
	wantErr(t, "Refresh(old token)", err, providers.ClassReauth, "invalid_grant")
	if st := srv.Stats(); st.ReuseDetections != 1 || !srv.Grants()[0].Revoked {
		t.Errorf("ReuseDetections = %d, revoked = %v; want 1, true", st.ReuseDetections, srv.Grants()[0].Revoked)
	}
}

func TestOAuth2_Refresh_Transient(t *testing.T) {
	t.Parallel()
	date := time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)
	for _, tc := range []struct {
		name       string
		fault      providertest.Fault
		code       string
		retryAfter time.Duration // minimum
	}{
		{"503", providertest.ServerError(503), "http_503", 0},
		{"500_retry_after", providertest.ServerError(500).WithRetryAfter("120"), "http_500", 120 * time.Second},
		{"429_seconds", providertest.RateLimited("30"), "http_429", 30 * time.Second},
		{"429_date", providertest.RateLimited(date), "http_429", 80 * time.Second},
		{"429_capped", providertest.RateLimited("86400"), "http_429", time.Hour},
		{"garbage", providertest.Garbage(), "invalid_response", 0},
		{"slow", providertest.Slow(time.Minute), "timeout", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, p := setup(t, providertest.Options{}, func(c *providers.OAuth2Config) {
				// Long enough for the connect under -race on a loaded
				// machine; the slow fault outlasts it by far.
				hc := *http.DefaultClient
				hc.Timeout = 3 * time.Second
				c.HTTPClient = &hc
			})
			g := connect(t, srv, p)
			srv.FailNext(providertest.Token, 1, tc.fault)
			_, err := p.Refresh(context.Background(), g, "")
			pe := wantErr(t, "Refresh", err, providers.ClassTransient, tc.code)
			if pe.RetryAfter < tc.retryAfter || pe.RetryAfter > time.Hour {
				t.Errorf("RetryAfter = %v; want >= %v, <= 1h", pe.RetryAfter, tc.retryAfter)
			}
		})
	}
}

func TestOAuth2_Refresh_ContextCanceled(t *testing.T) {
	t.Parallel()
	srv, p := setup(t, providertest.Options{}, nil)
	g := connect(t, srv, p)
	srv.FailNext(providertest.Token, 1, providertest.Slow(5*time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := p.Refresh(ctx, g, "")
	wantErr(t, "Refresh", err, providers.ClassTransient, "timeout")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Refresh = %v; want it to wrap context.DeadlineExceeded", err)
	}
}

// TestOAuth2_Refresh_Oversized checks that a 10 MiB answer is refused after
// reading about 1 MiB of it. Not parallel: it measures allocations.
func TestOAuth2_Refresh_Oversized(t *testing.T) {
	srv, p := setup(t, providertest.Options{}, nil)
	g := connect(t, srv, p)
	srv.FailNext(providertest.Token, 1, providertest.Oversized(10<<20))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := p.Refresh(context.Background(), g, "")
	runtime.ReadMemStats(&after)
	wantErr(t, "Refresh", err, providers.ClassTransient, "body_too_large")
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
		t.Errorf("Refresh allocated %d bytes for a 10 MiB answer; want < 8 MiB", alloc)
	}
}

func TestOAuth2_TokenResponseShapes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		opts       providertest.Options
		scopes     []string
		wantType   string
		wantExpiry time.Duration // 0: zero Expiry
		wantScopes []string
	}{
		{"non_integer_expires_in", providertest.Options{EditTokenResponse: func(m map[string]any) { m["expires_in"] = 3599.5 }},
			nil, "Bearer", 3599500 * time.Millisecond, []string{"read"}},
		{"string_expires_in", providertest.Options{EditTokenResponse: func(m map[string]any) { m["expires_in"] = "1800" }},
			nil, "Bearer", 30 * time.Minute, []string{"read"}},
		{"garbage_expires_in", providertest.Options{EditTokenResponse: func(m map[string]any) { m["expires_in"] = "soon" }},
			nil, "Bearer", 0, []string{"read"}},
		{"missing_expires_in", providertest.Options{OmitExpiresIn: true}, nil, "Bearer", 0, []string{"read"}},
		{"lowercase_bearer", providertest.Options{TokenType: "bearer"}, nil, "Bearer", time.Hour, []string{"read"}},
		{"other_token_type", providertest.Options{TokenType: "mac"}, nil, "mac", time.Hour, []string{"read"}},
		{"missing_token_type", providertest.Options{EditTokenResponse: func(m map[string]any) { delete(m, "token_type") }},
			nil, "Bearer", time.Hour, []string{"read"}},
		{"scope_omitted_means_requested", providertest.Options{OmitScope: true, DeniedScopes: []string{"b"}},
			[]string{"b", "a"}, "Bearer", time.Hour, []string{"a", "b"}},
		{"partial_grant", providertest.Options{DeniedScopes: []string{"b"}},
			[]string{"a", "b", "c"}, "Bearer", time.Hour, []string{"a", "c"}},
		{"scope_array", providertest.Options{EditTokenResponse: func(m map[string]any) { m["scope"] = []string{"x", "y x"} }},
			nil, "Bearer", time.Hour, []string{"x", "y"}},
		{"comma_scope_form", providertest.Options{FormEncoded: true, EditTokenResponse: func(m map[string]any) { m["scope"] = "repo,user" }},
			nil, "Bearer", time.Hour, []string{"repo", "user"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			tc.opts.Now = clk.Now
			// Without introspection: the token response alone decides.
			srv, p := setup(t, tc.opts, func(c *providers.OAuth2Config) { c.IntrospectURL = "" })
			g := connect(t, srv, p, tc.scopes...)
			for i, g := range []providers.Grant{g, mustRefresh(t, p, g)} {
				tok, _ := g.Token("")
				var want time.Time
				if tc.wantExpiry > 0 {
					want = clk.Now().Add(tc.wantExpiry)
				}
				if !tok.Expiry.Equal(want) || tok.TokenType != tc.wantType || !slices.Equal(g.Scopes, tc.wantScopes) {
					t.Errorf("grant %d: Expiry %v, TokenType %q, Scopes %q; want %v, %q, %q",
						i, tok.Expiry, tok.TokenType, g.Scopes, want, tc.wantType, tc.wantScopes)
				}
			}
		})
	}
}

func mustRefresh(t *testing.T, p providers.Provider, g providers.Grant) providers.Grant {
	t.Helper()
	g2, err := p.Refresh(context.Background(), g, "")
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	return g2
}

func TestOAuth2_Refresh_KeepsGrant(t *testing.T) {
	t.Parallel()
	srv, p := setup(t, providertest.Options{DisableRotation: true}, nil)
	g := connect(t, srv, p)
	g.Metadata = map[string]string{"k": "v"}
	g.Secrets = map[string]string{"s": "x"}
	g.Account = "acct"
	old, _ := g.Token("")
	g2 := mustRefresh(t, p, g)
	tok, _ := g2.Token("")
	if tok.RefreshToken != old.RefreshToken {
		t.Errorf("refresh token = %q; want the old one kept", tok.RefreshToken)
	}
	if g2.Account != "acct" || g2.Metadata["k"] != "v" || g2.Secrets["s"] != "x" {
		t.Errorf("Refresh lost grant fields: %+v", g2)
	}
	g2.Metadata["k"] = "changed"
	if g.Metadata["k"] != "v" {
		t.Errorf("Refresh's grant shares maps with its input")
	}

	_, err := p.Refresh(context.Background(), g, "user")
	wantErr(t, `Refresh(credential "user")`, err, providers.ClassInvalidRequest, "unknown_credential")
	g.Tokens[0].RefreshToken = ""
	_, err = p.Refresh(context.Background(), g, "")
	wantErr(t, "Refresh(no refresh token)", err, providers.ClassReauth, "no_refresh_token")
}

func TestOAuth2_Revoke(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	t.Run("unsupported", func(t *testing.T) {
		_, p := setup(t, providertest.Options{}, func(c *providers.OAuth2Config) { c.RevokeURL = "" })
		if p.Info().Revocation {
			t.Errorf("Info().Revocation = true without a RevokeURL")
		}
		err := p.Revoke(ctx, providers.Grant{Tokens: []providers.Token{{AccessToken: "a"}}})
		wantErr(t, "Revoke", err, providers.ClassConfig, "revocation_unsupported")
	})
	t.Run("access_token_only", func(t *testing.T) {
		srv, p := setup(t, providertest.Options{}, nil)
		g := connect(t, srv, p)
		g.Tokens[0].RefreshToken = ""
		if err := p.Revoke(ctx, g); err != nil {
			t.Fatal(err)
		}
		if srv.IsActive(g.Tokens[0].AccessToken) {
			t.Errorf("access token active after Revoke")
		}
	})
	for _, tc := range []struct {
		name  string
		fault providertest.Fault
		class providers.Class
		code  string
	}{
		{"503", providertest.ServerError(503), providers.ClassTransient, "http_503"},
		{"429", providertest.RateLimited("5"), providers.ClassTransient, "http_429"},
		{"redirect", providertest.Redirect("https://elsewhere.example/"), providers.ClassConfig, "redirect"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, p := setup(t, providertest.Options{}, nil)
			g := connect(t, srv, p)
			srv.FailNext(providertest.Revoke, 1, tc.fault)
			wantErr(t, "Revoke", p.Revoke(ctx, g), tc.class, tc.code)
			if !srv.IsActive(g.Tokens[0].AccessToken) {
				t.Errorf("grant revoked by a failed Revoke")
			}
		})
	}
	t.Run("wrong_secret", func(t *testing.T) {
		srv, good := setup(t, providertest.Options{}, nil)
		cfg := srv.Config()
		cfg.ClientSecret = "nope"
		bad, err := providers.NewOAuth2(cfg)
		if err != nil {
			t.Fatal(err)
		}
		wantErr(t, "Revoke", bad.Revoke(ctx, connect(t, srv, good)), providers.ClassConfig, "invalid_client")
	})
}

func TestOAuth2_AuthURL(t *testing.T) {
	t.Parallel()
	srv, p := setup(t, providertest.Options{}, func(c *providers.OAuth2Config) {
		c.ScopeSeparator = ","
		c.Scopes = []string{"b", "a"}
		c.AuthParams = map[string]string{"prompt": "consent"}
	})
	v := oauth2.GenerateVerifier()
	u, err := p.AuthURL(providers.AuthRequest{State: "st", Verifier: v})
	if err != nil {
		t.Fatal(err)
	}
	pu, _ := url.Parse(u)
	q := pu.Query()
	cfg := srv.Config()
	want := map[string]string{
		"response_type":         "code",
		"client_id":             cfg.ClientID,
		"redirect_uri":          cfg.RedirectURL,
		"scope":                 "a,b",
		"state":                 "st",
		"prompt":                "consent",
		"code_challenge":        oauth2.S256ChallengeFromVerifier(v),
		"code_challenge_method": "S256",
	}
	for k, w := range want {
		if got := q.Get(k); got != w {
			t.Errorf("AuthURL param %s = %q; want %q", k, got, w)
		}
	}
	if len(q) != len(want) {
		t.Errorf("AuthURL params = %v; want exactly %v", q, want)
	}
	if strings.Contains(u, v) {
		t.Errorf("AuthURL contains the verifier")
	}

	for _, tc := range []struct {
		name string
		req  providers.AuthRequest
		code string
	}{
		{"unknown_option", providers.AuthRequest{State: "s", Options: map[string]string{"host": "x"}}, "unknown_option"},
		{"no_state", providers.AuthRequest{}, "missing_state"},
		{"short_verifier", providers.AuthRequest{State: "s", Verifier: "abc"}, "invalid_verifier"},
	} {
		_, err := p.AuthURL(tc.req)
		wantErr(t, "AuthURL("+tc.name+")", err, providers.ClassInvalidRequest, tc.code)
	}
	_, err = p.Exchange(context.Background(), providers.ExchangeRequest{Code: "c", Verifier: strings.Repeat("~", 129)})
	wantErr(t, "Exchange(long verifier)", err, providers.ClassInvalidRequest, "invalid_verifier")
	_, err = p.Exchange(context.Background(), providers.ExchangeRequest{Code: "c", Options: map[string]string{"x": "y"}})
	wantErr(t, "Exchange(unknown option)", err, providers.ClassInvalidRequest, "unknown_option")
	if n := srv.Stats().Token["authorization_code"]; n != 0 {
		t.Errorf("invalid Exchange calls sent %d requests; want 0", n)
	}
}

func TestOAuth2_Authorize_Denied(t *testing.T) {
	t.Parallel()
	srv, p := setup(t, providertest.Options{}, nil)
	srv.DenyNext()
	if q := authorize(t, srv, p, providers.AuthRequest{}); q.Get("error") != "access_denied" || q.Has("code") {
		t.Errorf("callback = %v; want error=access_denied and no code", q)
	}
	if q := authorize(t, srv, p, providers.AuthRequest{}); q.Get("code") == "" {
		t.Errorf("callback after one denial = %v; want a code", q)
	}
}

func TestOAuth2_Exchange_RedirectURIMismatch(t *testing.T) {
	t.Parallel()
	const other = "https://other.example.test/cb"
	srv, p := setup(t, providertest.Options{RedirectURIs: []string{providertest.DefaultRedirectURI, other}}, nil)
	cfg := srv.Config()
	cfg.RedirectURL = other
	p2, err := providers.NewOAuth2(cfg)
	if err != nil {
		t.Fatal(err)
	}
	q := authorize(t, srv, p, providers.AuthRequest{})
	_, err = p2.Exchange(context.Background(), providers.ExchangeRequest{Code: q.Get("code")})
	wantErr(t, "Exchange", err, providers.ClassInvalidRequest, "invalid_grant")
}

func TestNewOAuth2_Invalid(t *testing.T) {
	t.Parallel()
	valid := providers.OAuth2Config{
		Name: "acme", ClientID: "id", ClientSecret: "secret",
		AuthURL: "https://acme.example/authorize", TokenURL: "https://acme.example/token",
		RedirectURL: "https://app.example/cb", AuthStyle: providers.AuthStyleInParams,
	}
	if _, err := providers.NewOAuth2(valid); err != nil {
		t.Fatalf("NewOAuth2(valid) = %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*providers.OAuth2Config)
	}{
		{"no_name", func(c *providers.OAuth2Config) { c.Name = "" }},
		{"name_with_space", func(c *providers.OAuth2Config) { c.Name = "a b" }},
		{"no_client_id", func(c *providers.OAuth2Config) { c.ClientID = "" }},
		{"no_secret", func(c *providers.OAuth2Config) { c.ClientSecret = "" }},
		{"no_auth_style", func(c *providers.OAuth2Config) { c.AuthStyle = 0 }},
		{"bad_auth_style", func(c *providers.OAuth2Config) { c.AuthStyle = 7 }},
		{"relative_token_url", func(c *providers.OAuth2Config) { c.TokenURL = "/token" }},
		{"ftp_auth_url", func(c *providers.OAuth2Config) { c.AuthURL = "ftp://acme.example/a" }},
		{"no_redirect", func(c *providers.OAuth2Config) { c.RedirectURL = "" }},
		{"bad_revoke_url", func(c *providers.OAuth2Config) { c.RevokeURL = "acme.example/revoke" }},
		{"userinfo_in_url", func(c *providers.OAuth2Config) { c.TokenURL = "https://u:p@acme.example/token" }},
		{"separator", func(c *providers.OAuth2Config) { c.ScopeSeparator = ";" }},
		{"reserved_auth_param", func(c *providers.OAuth2Config) { c.AuthParams = map[string]string{"state": "x"} }},
		{"reserved_token_param", func(c *providers.OAuth2Config) { c.TokenParams = map[string]string{"grant_type": "x"} }},
	} {
		c := valid
		tc.edit(&c)
		if p, err := providers.NewOAuth2(c); err == nil {
			t.Errorf("NewOAuth2(%s) = %v, nil; want an error", tc.name, p)
		} else if strings.Contains(err.Error(), "secret\"") {
			t.Errorf("NewOAuth2(%s) error %q names the secret", tc.name, err)
		}
	}
	pub := valid
	pub.ClientSecret, pub.PKCE = "", true
	if _, err := providers.NewOAuth2(pub); err != nil {
		t.Errorf("NewOAuth2(public PKCE client) = %v; want nil", err)
	}
}
