package providers_test

// The contract suite: every named provider passes the same cases, each
// against an httptest server on 127.0.0.1 that replays the response shapes
// of PROVIDERS.md, kept as fixtures under testdata/<provider>/. Quirks of
// one provider are tested in its own <provider>_test.go.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/providers"
)

// Shared by the contract suite and the per-provider tests.
const (
	fakeClientID     = "fake-client-id"
	fakeClientSecret = "fake-client-secret"
	fakeRedirect     = "https://tv.example.test/oauth/callback/"
)

// fixedNow is the clock of every provider under test (the Salesforce
// fixtures are signed and introspected relative to it).
var fixedNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// replayed is one canned answer.
type replayed struct {
	status int
	header map[string]string
	body   []byte
	stream int64 // if > 0: a JSON body of about this size, streamed
}

// seen is a request the replay server received.
type seen struct {
	Method, Path string
	Header       http.Header
	Query        url.Values
	Body         []byte
}

// Form parses the request body as a form.
func (s seen) Form() url.Values {
	v, _ := url.ParseQuery(string(s.Body))
	return v
}

// replayServer answers each route with its queue of canned answers (the
// last one repeats) and records every request. Unknown routes get a 404.
type replayServer struct {
	*httptest.Server
	mu     sync.Mutex
	routes map[string][]replayed // "METHOD /path" or "/path"
	reqs   []seen
}

func newReplay(t *testing.T) *replayServer {
	t.Helper()
	rs := &replayServer{routes: map[string][]replayed{}}
	rs.Server = httptest.NewServer(http.HandlerFunc(rs.serve)) // 127.0.0.1
	t.Cleanup(rs.Close)
	return rs
}

func (rs *replayServer) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	rs.mu.Lock()
	rs.reqs = append(rs.reqs, seen{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Query: r.URL.Query(), Body: body})
	key := r.Method + " " + r.URL.Path
	q, ok := rs.routes[key]
	if !ok {
		key = r.URL.Path
		q, ok = rs.routes[key]
	}
	var a replayed
	if ok && len(q) > 0 {
		a = q[0]
		if len(q) > 1 {
			rs.routes[key] = q[1:]
		}
	}
	rs.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	if _, set := a.header["Content-Type"]; !set && a.stream == 0 {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
	}
	for k, v := range a.header {
		w.Header().Set(k, v)
	}
	if a.stream > 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, `{"access_token":"`)
		chunk := bytes.Repeat([]byte("A"), 64<<10)
		for n := int64(0); n < a.stream; n += int64(len(chunk)) {
			if _, err := w.Write(chunk); err != nil {
				return // the client stopped reading
			}
		}
		io.WriteString(w, `"}`)
		return
	}
	w.WriteHeader(a.status)
	w.Write(a.body)
}

// on sets the answers of route ("/path" or "METHOD /path").
func (rs *replayServer) on(route string, answers ...replayed) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.routes[route] = answers
}

// requests returns the requests received at path.
func (rs *replayServer) requests(path string) []seen {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	var out []seen
	for _, r := range rs.reqs {
		if r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

// fixture reads testdata/<provider>/<name>.
func fixture(t *testing.T, provider, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", provider, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// answer is a canned answer with a fixture body.
func answer(t *testing.T, provider string, status int, name string) replayed {
	t.Helper()
	return replayed{status: status, body: fixture(t, provider, name)}
}

// contractProvider is what the suite needs to know about one provider.
type contractProvider struct {
	kind string
	// build returns the provider with its endpoints on base.
	build func(t *testing.T, base string) providers.Provider
	// token is the token endpoint's path; revoke the revocation route.
	token, revoke string
	// setup sets the routes an exchange needs besides the token endpoint
	// (identity, introspection).
	setup func(t *testing.T, rs *replayServer)
	// grant is a stored grant to refresh and revoke, issued by base.
	grant func(base string) providers.Grant
	// Statuses of the documented failures (200 for Slack's ok:false and
	// GitHub's 200 errors).
	rejectedStatus, configStatus, exchangeRejectedStatus int
	// revokeOK is the revocation endpoint's success answer.
	revokeOK func(t *testing.T) replayed
	// rotates: the refresh fixture carries a new refresh token. Otherwise
	// refresh_rotated.json, if present, does.
	rotates bool
	// validate is the route Validate calls, with its live and dead answers.
	validate           string
	validLive, valDead func(t *testing.T) replayed
}

func svcConfig(name string, opts map[string]string, scopes ...string) providers.ServiceConfig {
	return providers.ServiceConfig{
		Name: name, ClientID: fakeClientID, ClientSecret: fakeClientSecret,
		RedirectURL: fakeRedirect + name, Scopes: scopes, Options: opts,
		Now: func() time.Time { return fixedNow },
	}
}

// mustBuild fails the test on a constructor error.
func mustBuild[P providers.Provider](t *testing.T) func(P, error) providers.Provider {
	return func(p P, err error) providers.Provider {
		t.Helper()
		if err != nil {
			t.Fatalf("building provider: %v", err)
		}
		return p
	}
}

func oneToken(at, rt string, scopes ...string) providers.Token {
	return providers.Token{AccessToken: at, RefreshToken: rt, TokenType: "Bearer", Expiry: fixedNow.Add(time.Hour), Scopes: scopes}
}

var contractProviders = []contractProvider{
	{
		kind: "slack",
		build: func(t *testing.T, base string) providers.Provider {
			return mustBuild[*providers.Slack](t)(providers.NewSlack(svcConfig("slack",
				map[string]string{"auth_base": base, "api_base": base + "/api", "user_scopes": "search:read"}, "chat:write", "channels:read", "incoming-webhook")))
		},
		token: "/api/oauth.v2.access", revoke: "/api/auth.revoke",
		grant: func(string) providers.Grant {
			user := oneToken("xoxe.xoxp-1-FAKE-user-access-0", "xoxe-1-FAKE-user-refresh-0", "search:read")
			user.Name = "user"
			return providers.Grant{
				Tokens:   []providers.Token{oneToken("xoxe.xoxb-1-FAKE-bot-access-0", "xoxe-1-FAKE-bot-refresh-0", "channels:read", "chat:write"), user},
				Metadata: map[string]string{"primary_token": "bot", "team_id": "T0FAKETEAM"},
			}
		},
		rejectedStatus: 200, configStatus: 200, exchangeRejectedStatus: 200,
		revokeOK:  func(t *testing.T) replayed { return answer(t, "slack", 200, "revoke.json") },
		rotates:   true,
		validate:  "/api/auth.test",
		validLive: func(t *testing.T) replayed { return answer(t, "slack", 200, "auth_test.json") },
		valDead:   func(t *testing.T) replayed { return answer(t, "slack", 200, "auth_test_revoked.json") },
	},
	{
		kind: "github",
		build: func(t *testing.T, base string) providers.Provider {
			return mustBuild[*providers.GitHub](t)(providers.NewGitHub(svcConfig("github",
				map[string]string{"auth_base": base, "api_base": base + "/api"})))
		},
		token: "/login/oauth/access_token", revoke: "DELETE /api/applications/fake-client-id/grant",
		setup: func(t *testing.T, rs *replayServer) { rs.on("GET /api/user", answer(t, "github", 200, "user.json")) },
		grant: func(string) providers.Grant {
			return providers.Grant{Tokens: []providers.Token{oneToken("ghu_FAKEgithubAppUserAccess0000", "ghr_FAKEgithubAppRefresh0000")},
				Metadata: map[string]string{"login": "octocat-fake", "user_id": "1000001"}}
		},
		rejectedStatus: 200, configStatus: 200, exchangeRejectedStatus: 200,
		revokeOK:  func(t *testing.T) replayed { return replayed{status: http.StatusNoContent} },
		rotates:   true,
		validate:  "POST /api/applications/fake-client-id/token",
		validLive: func(t *testing.T) replayed { return answer(t, "github", 200, "token_check.json") },
		valDead:   func(t *testing.T) replayed { return answer(t, "github", 404, "not_found.json") },
	},
	{
		kind: "linear",
		build: func(t *testing.T, base string) providers.Provider {
			return mustBuild[*providers.Linear](t)(providers.NewLinear(svcConfig("linear",
				map[string]string{"auth_base": base, "api_base": base}, "read", "write")))
		},
		token: "/oauth/token", revoke: "/oauth/revoke",
		setup: func(t *testing.T, rs *replayServer) { rs.on("POST /graphql", answer(t, "linear", 200, "viewer.json")) },
		grant: func(string) providers.Grant {
			return providers.Grant{Tokens: []providers.Token{oneToken("lin_oauth_FAKEaccess0000", "lin_refresh_FAKE0000", "read", "write")},
				Metadata: map[string]string{"actor": "user", "organization_url_key": "fake-org"}}
		},
		rejectedStatus: 400, configStatus: 401, exchangeRejectedStatus: 400,
		revokeOK:  func(t *testing.T) replayed { return replayed{status: 200} },
		rotates:   true,
		validate:  "POST /graphql",
		validLive: func(t *testing.T) replayed { return answer(t, "linear", 200, "viewer.json") },
		valDead:   func(t *testing.T) replayed { return answer(t, "linear", 401, "viewer_unauthenticated.json") },
	},
	{
		kind: "google",
		build: func(t *testing.T, base string) providers.Provider {
			return mustBuild[*providers.Google](t)(providers.NewGoogle(svcConfig("google",
				map[string]string{"auth_base": base, "api_base": base}, "openid", "email", "https://www.googleapis.com/auth/calendar.readonly")))
		},
		token: "/token", revoke: "/revoke",
		grant: func(string) providers.Grant {
			return providers.Grant{Tokens: []providers.Token{oneToken("ya29.FAKE-access-0", "1//FAKE-refresh-0", "email", "openid")},
				Metadata: map[string]string{"sub": "110000000000000000001"}}
		},
		rejectedStatus: 400, configStatus: 401, exchangeRejectedStatus: 400,
		revokeOK:  func(t *testing.T) replayed { return replayed{status: 200, body: []byte("{}")} },
		rotates:   false,
		validate:  "POST /tokeninfo",
		validLive: func(t *testing.T) replayed { return answer(t, "google", 200, "tokeninfo.json") },
		valDead:   func(t *testing.T) replayed { return answer(t, "google", 400, "tokeninfo_invalid.json") },
	},
	{
		kind: "salesforce",
		build: func(t *testing.T, base string) providers.Provider {
			return mustBuild[*providers.Salesforce](t)(providers.NewSalesforce(svcConfig("salesforce",
				map[string]string{"host": base}, "refresh_token", "api", "id")))
		},
		token: "/services/oauth2/token", revoke: "/services/oauth2/revoke",
		setup: func(t *testing.T, rs *replayServer) {
			rs.on("POST /services/oauth2/introspect", answer(t, "salesforce", 200, "introspect.json"))
		},
		grant: func(base string) providers.Grant {
			return providers.Grant{Tokens: []providers.Token{oneToken("00DFAKE!fake-sf-access-0", "5Aep-fake-sf-refresh-0", "api", "id", "refresh_token")},
				Metadata: map[string]string{"host": base, "instance_url": "https://fakeorg.my.salesforce.com"}}
		},
		rejectedStatus: 400, configStatus: 400, exchangeRejectedStatus: 400,
		revokeOK:  func(t *testing.T) replayed { return replayed{status: 200} },
		rotates:   false,
		validate:  "POST /services/oauth2/introspect",
		validLive: func(t *testing.T) replayed { return answer(t, "salesforce", 200, "introspect.json") },
		valDead:   func(t *testing.T) replayed { return answer(t, "salesforce", 200, "introspect_inactive.json") },
	},
}

// wantClass fails unless err is a *providers.Error of class c (and code,
// if not empty), and returns it.
func wantClass(t *testing.T, what string, err error, c providers.Class, code string) *providers.Error {
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

// noSecrets fails if err's message carries any of the secrets.
func noSecrets(t *testing.T, err error, secrets ...string) {
	t.Helper()
	if err == nil {
		return
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(err.Error(), s) {
			t.Errorf("error %q reveals a secret", err)
		}
	}
}

// route returns the path of a route.
func routePath(route string) string {
	if _, p, ok := strings.Cut(route, " "); ok {
		return p
	}
	return route
}

func TestContract(t *testing.T) {
	ctx := context.Background()
	for _, cp := range contractProviders {
		t.Run(cp.kind, func(t *testing.T) {
			t.Parallel()
			start := func(t *testing.T) (*replayServer, providers.Provider) {
				rs := newReplay(t)
				if cp.setup != nil {
					cp.setup(t, rs)
				}
				return rs, cp.build(t, rs.URL)
			}
			exchange := func(p providers.Provider) (providers.Grant, error) {
				return p.Exchange(ctx, providers.ExchangeRequest{Code: "fake-code-1", Scopes: p.Info().DefaultScopes})
			}

			t.Run("info", func(t *testing.T) {
				_, p := start(t)
				in := p.Info()
				if in.Kind != cp.kind || in.Name != cp.kind || in.ClientID != fakeClientID || in.DisplayName == "" || !in.Revocation {
					t.Errorf("Info() = %+v", in)
				}
				if strings.Contains(strings.ToLower(strings.Join([]string{in.Name, in.DisplayName, in.RedirectURL, in.ClientID}, " ")), fakeClientSecret) {
					t.Errorf("Info() reveals the client secret")
				}
			})

			t.Run("exchange ok", func(t *testing.T) {
				rs, p := start(t)
				rs.on(cp.token, answer(t, cp.kind, 200, "exchange.json"))
				g, err := exchange(p)
				if err != nil {
					t.Fatalf("Exchange = %v", err)
				}
				if n := len(rs.requests(cp.token)); n != 1 {
					t.Errorf("token endpoint saw %d requests; want the code sent once", n)
				}
				f := rs.requests(cp.token)[0].Form()
				if f.Get("code") != "fake-code-1" || f.Get("redirect_uri") != fakeRedirect+cp.kind || f.Get("grant_type") != "authorization_code" {
					t.Errorf("token request form = %v", f)
				}
				pt, ok := g.Token("")
				if !ok || pt.AccessToken == "" || pt.TokenType != "Bearer" {
					t.Fatalf("primary token = %+v, %v; want a Bearer token", pt, ok)
				}
				if len(g.Scopes) == 0 && cp.kind != "github" { // GitHub App tokens have scope ""
					t.Errorf("Scopes = %v; want the granted ones", g.Scopes)
				}
				if g.Account == "" {
					t.Errorf("Account is empty; want the provider account's id")
				}
				if cp.kind != "github" && pt.Expiry.IsZero() {
					t.Errorf("Expiry is zero; every fixture expires")
				}
			})

			t.Run("exchange rejected", func(t *testing.T) {
				rs, p := start(t)
				rs.on(cp.token, answer(t, cp.kind, cp.exchangeRejectedStatus, "exchange_rejected.json"))
				_, err := exchange(p)
				wantClass(t, "Exchange", err, providers.ClassInvalidRequest, "")
				noSecrets(t, err, "fake-code-1", fakeClientSecret)
			})

			t.Run("refresh ok", func(t *testing.T) {
				rs, p := start(t)
				body := fixture(t, cp.kind, "refresh.json")
				rs.on(cp.token, replayed{status: 200, body: body})
				old := cp.grant(rs.URL)
				g, err := p.Refresh(ctx, old, "")
				if err != nil {
					t.Fatalf("Refresh = %v", err)
				}
				if n := len(rs.requests(cp.token)); n != 1 {
					t.Errorf("token endpoint saw %d requests; want 1", n)
				}
				f := rs.requests(cp.token)[0].Form()
				if f.Get("grant_type") != "refresh_token" || f.Get("refresh_token") != old.Tokens[0].RefreshToken {
					t.Errorf("refresh form = %v", f)
				}
				nt, _ := g.Token("")
				if nt.AccessToken == old.Tokens[0].AccessToken || nt.AccessToken == "" || !strings.Contains(string(body), nt.AccessToken) {
					t.Errorf("access token %q; want the one in refresh.json", nt.AccessToken)
				}
				if nt.Expiry.IsZero() || !nt.Expiry.After(fixedNow) {
					t.Errorf("Expiry = %v; want in the future", nt.Expiry)
				}
				if len(g.Tokens) != len(old.Tokens) {
					t.Errorf("Refresh changed the number of credentials: %d -> %d", len(old.Tokens), len(g.Tokens))
				}
				if old.Tokens[0].AccessToken != cp.grant(rs.URL).Tokens[0].AccessToken {
					t.Errorf("Refresh modified its argument")
				}
			})

			t.Run("refresh rotated", func(t *testing.T) {
				rs, p := start(t)
				name := "refresh.json"
				if !cp.rotates {
					if _, err := os.Stat(filepath.Join("testdata", cp.kind, "refresh_rotated.json")); err == nil {
						name = "refresh_rotated.json"
					}
				}
				body := fixture(t, cp.kind, name)
				rs.on(cp.token, replayed{status: 200, body: body})
				old := cp.grant(rs.URL)
				g, err := p.Refresh(ctx, old, "")
				if err != nil {
					t.Fatalf("Refresh = %v", err)
				}
				nt, _ := g.Token("")
				if strings.Contains(string(body), `"refresh_token"`) {
					if nt.RefreshToken == old.Tokens[0].RefreshToken || !strings.Contains(string(body), nt.RefreshToken) {
						t.Errorf("refresh token %q; want the rotated one of %s", nt.RefreshToken, name)
					}
				} else if nt.RefreshToken != old.Tokens[0].RefreshToken {
					t.Errorf("refresh token %q; want the old one kept (%s has none)", nt.RefreshToken, name)
				}
			})

			t.Run("refresh rejected", func(t *testing.T) {
				rs, p := start(t)
				rs.on(cp.token, answer(t, cp.kind, cp.rejectedStatus, "refresh_rejected.json"))
				g := cp.grant(rs.URL)
				_, err := p.Refresh(ctx, g, "")
				wantClass(t, "Refresh", err, providers.ClassReauth, "")
				noSecrets(t, err, g.Tokens[0].RefreshToken, fakeClientSecret)
				if n := len(rs.requests(cp.token)); n != 1 {
					t.Errorf("token endpoint saw %d requests; want 1 (no retry)", n)
				}
			})

			for _, tc := range []struct {
				name   string
				status int
				header map[string]string
				want   time.Duration
			}{
				{"5xx", 503, map[string]string{"Retry-After": "7"}, 7 * time.Second},
				{"429", 429, map[string]string{"Retry-After": "30"}, 30 * time.Second},
			} {
				t.Run("refresh "+tc.name, func(t *testing.T) {
					rs, p := start(t)
					rs.on(cp.token, replayed{status: tc.status, header: tc.header, body: []byte("<html>busy</html>")})
					_, err := p.Refresh(ctx, cp.grant(rs.URL), "")
					pe := wantClass(t, "Refresh", err, providers.ClassTransient, "")
					if pe.RetryAfter != tc.want {
						t.Errorf("RetryAfter = %v; want %v", pe.RetryAfter, tc.want)
					}
				})
			}

			t.Run("exchange 429", func(t *testing.T) {
				rs, p := start(t)
				rs.on(cp.token, replayed{status: 429, header: map[string]string{"Retry-After": "12"}, body: []byte(`{}`)})
				_, err := exchange(p)
				if pe := wantClass(t, "Exchange", err, providers.ClassTransient, ""); pe.RetryAfter != 12*time.Second {
					t.Errorf("RetryAfter = %v; want 12s", pe.RetryAfter)
				}
			})

			for _, op := range []string{"exchange", "refresh"} {
				t.Run(op+" config error", func(t *testing.T) {
					rs, p := start(t)
					rs.on(cp.token, answer(t, cp.kind, cp.configStatus, "config_error.json"))
					var err error
					if op == "exchange" {
						_, err = exchange(p)
					} else {
						_, err = p.Refresh(ctx, cp.grant(rs.URL), "")
					}
					wantClass(t, op, err, providers.ClassConfig, "")
				})
			}

			t.Run("revoke ok", func(t *testing.T) {
				rs, p := start(t)
				rs.on(cp.revoke, cp.revokeOK(t))
				g := cp.grant(rs.URL)
				if err := p.Revoke(ctx, g); err != nil {
					t.Fatalf("Revoke = %v", err)
				}
				reqs := rs.requests(routePath(cp.revoke))
				if len(reqs) == 0 {
					t.Fatalf("the revocation endpoint saw no request")
				}
				// The request names one of the grant's tokens, in the body
				// or in the Authorization header.
				var named bool
				for _, r := range reqs {
					for _, tok := range g.Tokens {
						for _, s := range []string{tok.AccessToken, tok.RefreshToken} {
							if s != "" && (bytes.Contains(r.Body, []byte(url.QueryEscape(s))) || bytes.Contains(r.Body, []byte(s)) ||
								strings.Contains(r.Header.Get("Authorization"), s)) {
								named = true
							}
						}
					}
				}
				if !named {
					t.Errorf("no revocation request carried a token of the grant")
				}
			})

			t.Run("revoke failing", func(t *testing.T) {
				rs, p := start(t)
				rs.on(cp.revoke, replayed{status: 503, header: map[string]string{"Retry-After": "5"}, body: []byte("<html>down</html>")})
				err := p.Revoke(ctx, cp.grant(rs.URL))
				if pe := wantClass(t, "Revoke", err, providers.ClassTransient, ""); pe.RetryAfter != 5*time.Second {
					t.Errorf("RetryAfter = %v; want 5s", pe.RetryAfter)
				}
			})

			t.Run("garbage body", func(t *testing.T) {
				rs, p := start(t)
				rs.on(cp.token, replayed{status: 200, body: []byte("<html><body>502 Bad Gateway\x00\xff</body></html>")})
				_, err := p.Refresh(ctx, cp.grant(rs.URL), "")
				wantClass(t, "Refresh", err, providers.ClassTransient, "")
				_, err = exchange(p)
				wantClass(t, "Exchange", err, providers.ClassTransient, "")
			})

			t.Run("redirect not followed", func(t *testing.T) {
				rs, p := start(t)
				rs.on(cp.token, replayed{status: http.StatusTemporaryRedirect, header: map[string]string{"Location": rs.URL + "/elsewhere"}})
				rs.on("/elsewhere", answer(t, cp.kind, 200, "refresh.json"))
				_, err := p.Refresh(ctx, cp.grant(rs.URL), "")
				wantClass(t, "Refresh", err, providers.ClassConfig, "redirect")
				_, err = exchange(p)
				wantClass(t, "Exchange", err, providers.ClassConfig, "redirect")
				if n := len(rs.requests("/elsewhere")); n != 0 {
					t.Errorf("the redirect target saw %d requests; want 0", n)
				}
			})

			t.Run("validate", func(t *testing.T) {
				rs, p := start(t)
				v, ok := p.(providers.Validator)
				if !ok {
					t.Fatalf("%T is not a providers.Validator", p)
				}
				rs.on(cp.validate, cp.validLive(t))
				if err := v.Validate(ctx, cp.grant(rs.URL)); err != nil {
					t.Errorf("Validate(live) = %v; want nil", err)
				}
				rs.on(cp.validate, cp.valDead(t))
				wantClass(t, "Validate(dead)", v.Validate(ctx, cp.grant(rs.URL)), providers.ClassReauth, "")
				rs.on(cp.validate, replayed{status: 503, body: []byte("down")})
				wantClass(t, "Validate(503)", v.Validate(ctx, cp.grant(rs.URL)), providers.ClassTransient, "")
			})

			t.Run("unknown credential", func(t *testing.T) {
				rs, p := start(t)
				_, err := p.Refresh(ctx, cp.grant(rs.URL), "nope")
				wantClass(t, "Refresh(nope)", err, providers.ClassInvalidRequest, "unknown_credential")
				if len(rs.requests(cp.token)) != 0 {
					t.Errorf("an unknown credential reached the provider")
				}
			})

			t.Run("unknown flow option", func(t *testing.T) {
				_, p := start(t)
				_, err := p.AuthURL(providers.AuthRequest{State: "s", Options: map[string]string{"bogus": "1"}})
				wantClass(t, "AuthURL", err, providers.ClassInvalidRequest, "unknown_option")
			})
		})
	}
}

// TestContract_OversizedBody checks that an endless token response is cut
// off after maxBodySize, classified as transient, and never held in
// memory: reading 32 MiB must not allocate anywhere near that. It is not
// parallel, so that the allocation count is this test's.
func TestContract_OversizedBody(t *testing.T) {
	ctx := context.Background()
	for _, cp := range contractProviders {
		t.Run(cp.kind, func(t *testing.T) {
			rs := newReplay(t)
			p := cp.build(t, rs.URL)
			rs.on(cp.token, replayed{stream: 32 << 20})
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := p.Refresh(ctx, cp.grant(rs.URL), "")
			runtime.ReadMemStats(&after)
			wantClass(t, "Refresh", err, providers.ClassTransient, "body_too_large")
			if got := after.TotalAlloc - before.TotalAlloc; got > 12<<20 {
				t.Errorf("Refresh allocated %d MiB reading a 32 MiB answer; want it bounded", got>>20)
			}
		})
	}
}
