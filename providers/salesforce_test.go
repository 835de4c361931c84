package providers_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/providers"
)

const (
	sfToken      = "/services/oauth2/token"
	sfIntrospect = "/services/oauth2/introspect"
	sfRevoke     = "/services/oauth2/revoke"
)

func newSalesforce(t *testing.T, opts map[string]string) *providers.Salesforce {
	t.Helper()
	p, err := providers.NewSalesforce(svcConfig("salesforce", opts, "refresh_token", "api", "id"))
	if err != nil {
		t.Fatalf("NewSalesforce: %v", err)
	}
	return p
}

func sfExchange(t *testing.T, p *providers.Salesforce, opts map[string]string) providers.Grant {
	t.Helper()
	g, err := p.Exchange(context.Background(), providers.ExchangeRequest{Code: "c", Options: opts})
	if err != nil {
		t.Fatalf("Exchange = %v", err)
	}
	return g
}

func TestSalesforce_Exchange(t *testing.T) {
	rs := newReplay(t)
	p := newSalesforce(t, map[string]string{"host": rs.URL})
	rs.on(sfToken, answer(t, "salesforce", 200, "exchange.json"))
	rs.on(sfIntrospect, answer(t, "salesforce", 200, "introspect.json"))
	g := sfExchange(t, p, nil)
	want := map[string]string{
		"host": rs.URL, "instance_url": "https://fakeorg.my.salesforce.com",
		"org_id": "00DFAKE000000001AAA", "user_id": "005FAKE000000001AAA", "issued_at": "1772366400000",
		"expiry_source": "introspect", "username": "alice@fakeorg.example.test",
	}
	for k, v := range want {
		if g.Metadata[k] != v {
			t.Errorf("Metadata[%q] = %q; want %q", k, g.Metadata[k], v)
		}
	}
	tok := mustToken(t, g, "")
	if !tok.Expiry.Equal(time.Unix(1772373600, 0)) {
		t.Errorf("Expiry = %v; want introspection's exp", tok.Expiry)
	}
	if g.Account != "alice@fakeorg.example.test" {
		t.Errorf("Account = %q", g.Account)
	}
	in := rs.requests(sfIntrospect)
	if len(in) != 1 || in[0].Form().Get("token") != "00DFAKE!fake-sf-access-1" || in[0].Form().Get("client_secret") != fakeClientSecret {
		t.Errorf("introspection = %v", in)
	}
}

// TestSalesforce_BadSignature: a response whose signature does not verify
// is rejected, at exchange and at refresh.
func TestSalesforce_BadSignature(t *testing.T) {
	rs := newReplay(t)
	p := newSalesforce(t, map[string]string{"host": rs.URL, "introspect": "false"})
	rs.on(sfToken, answer(t, "salesforce", 200, "exchange_bad_signature.json"))
	_, err := p.Exchange(context.Background(), providers.ExchangeRequest{Code: "c"})
	wantClass(t, "Exchange", err, providers.ClassConfig, "invalid_signature")
	noSecrets(t, err, "00DFAKE!fake-sf-access-1", fakeClientSecret)

	g := providers.Grant{Tokens: []providers.Token{{AccessToken: "a", RefreshToken: "r"}}, Metadata: map[string]string{"host": rs.URL}}
	_, err = p.Refresh(context.Background(), g, "")
	wantClass(t, "Refresh", err, providers.ClassConfig, "invalid_signature")

	// The same answer verifies under the secret that signed it: a wrong
	// secret configured here is the other way to get a mismatch.
	cfg := svcConfig("salesforce", map[string]string{"host": rs.URL, "introspect": "false"})
	cfg.ClientSecret = "another-secret"
	p2, _ := providers.NewSalesforce(cfg)
	rs.on(sfToken, answer(t, "salesforce", 200, "exchange.json"))
	_, err = p2.Exchange(context.Background(), providers.ExchangeRequest{Code: "c"})
	wantClass(t, "Exchange(wrong secret)", err, providers.ClassConfig, "invalid_signature")
}

// TestSalesforce_Refresh_InstanceURL: instance_url comes from every
// refresh (orgs migrate), the refresh token is kept when not rotated, and
// the expiry is set every time.
func TestSalesforce_Refresh_InstanceURL(t *testing.T) {
	rs := newReplay(t)
	p := newSalesforce(t, map[string]string{"host": rs.URL, "introspect": "false", "session_timeout": "30m"})
	rs.on(sfToken, answer(t, "salesforce", 200, "exchange.json"), answer(t, "salesforce", 200, "refresh.json"))
	g := sfExchange(t, p, nil)
	g2, err := p.Refresh(context.Background(), g, "")
	if err != nil {
		t.Fatal(err)
	}
	if g2.Metadata["instance_url"] != "https://fakeorg-migrated.my.salesforce.com" || g2.Metadata["issued_at"] != "1772370000000" {
		t.Errorf("Metadata = %v; want the refresh's instance_url and issued_at", g2.Metadata)
	}
	tok := mustToken(t, g2, "")
	if tok.RefreshToken != "5Aep-fake-sf-refresh-1" || tok.AccessToken != "00DFAKE!fake-sf-access-2" {
		t.Errorf("token = %+v", tok)
	}
	if tok.Expiry.IsZero() || g2.Metadata["expiry_source"] != "session_timeout" {
		t.Errorf("Expiry = %v (%s); want from the session timeout", tok.Expiry, g2.Metadata["expiry_source"])
	}
}

// TestSalesforce_ExpiryNeverZero: whatever introspection does, the access
// token gets an expiry.
func TestSalesforce_ExpiryNeverZero(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opts    map[string]string
		intro   replayed
		want    time.Time
		wantSrc string
	}{
		{"introspect", nil, replayed{status: 200, body: fixture(t, "salesforce", "introspect.json")}, time.Unix(1772373600, 0), "introspect"},
		{"introspect down", nil, replayed{status: 503}, fixedNow.Add(2 * time.Hour), "session_timeout"},
		{"introspect inactive", nil, replayed{status: 200, body: []byte(`{"active":false}`)}, fixedNow.Add(2 * time.Hour), "session_timeout"},
		{"introspect exp absurd", nil, replayed{status: 200, body: []byte(`{"active":true,"exp":4102444800}`)}, fixedNow.Add(2 * time.Hour), "session_timeout"},
		{"introspect garbage", nil, replayed{status: 200, body: []byte(`<html>`)}, fixedNow.Add(2 * time.Hour), "session_timeout"},
		{"off, 45m", map[string]string{"introspect": "false", "session_timeout": "45m"}, replayed{status: 500}, fixedNow.Add(45 * time.Minute), "session_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := newReplay(t)
			opts := map[string]string{"host": rs.URL}
			for k, v := range tc.opts {
				opts[k] = v
			}
			p := newSalesforce(t, opts)
			rs.on(sfToken, answer(t, "salesforce", 200, "exchange.json"))
			rs.on(sfIntrospect, tc.intro)
			g := sfExchange(t, p, nil)
			tok := mustToken(t, g, "")
			if !tok.Expiry.Equal(tc.want) || g.Metadata["expiry_source"] != tc.wantSrc {
				t.Errorf("Expiry = %v (%s); want %v (%s)", tok.Expiry, g.Metadata["expiry_source"], tc.want, tc.wantSrc)
			}
		})
	}
}

// TestSalesforce_HostRemembered: a flow names a My Domain host; the
// exchange, every refresh and the revocation go to it, not to the default.
func TestSalesforce_HostRemembered(t *testing.T) {
	login, mydomain := newReplay(t), newReplay(t)
	p := newSalesforce(t, map[string]string{"host": login.URL, "allowed_hosts": mydomain.URL, "introspect": "false"})
	mydomain.on(sfToken, answer(t, "salesforce", 200, "exchange.json"), answer(t, "salesforce", 200, "refresh_rotated.json"))
	mydomain.on(sfRevoke, replayed{status: 200})

	raw, err := p.AuthURL(providers.AuthRequest{State: "st", Options: map[string]string{"host": mydomain.URL}})
	if err != nil || !strings.HasPrefix(raw, mydomain.URL+"/services/oauth2/authorize?") {
		t.Fatalf("AuthURL = %s, %v; want at the flow's host", raw, err)
	}
	g := sfExchange(t, p, map[string]string{"host": mydomain.URL})
	if g.Metadata["host"] != mydomain.URL {
		t.Fatalf("Metadata[host] = %q; want %q", g.Metadata["host"], mydomain.URL)
	}
	g, err = p.Refresh(context.Background(), g, "")
	if err != nil {
		t.Fatal(err)
	}
	if tok := mustToken(t, g, ""); tok.RefreshToken != "5Aep-fake-sf-refresh-2" {
		t.Errorf("refresh token = %q; want the rotated one", tok.RefreshToken)
	}
	if err := p.Revoke(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	if r := mydomain.requests(sfRevoke); len(r) != 1 || r[0].Form().Get("token") != "5Aep-fake-sf-refresh-2" {
		t.Errorf("revocation = %v; want the refresh token at the issuing host", r)
	}
	if n := len(login.requests(sfToken)) + len(login.requests(sfRevoke)); n != 0 {
		t.Errorf("the default host saw %d requests for a My Domain grant", n)
	}

	// A stored host the operator no longer allows is a configuration
	// problem, never a request to it.
	p2 := newSalesforce(t, map[string]string{"host": login.URL})
	_, err = p2.Refresh(context.Background(), g, "")
	wantClass(t, "Refresh(host no longer allowed)", err, providers.ClassConfig, "host_not_allowed")
	if n := len(mydomain.requests(sfToken)); n != 2 {
		t.Errorf("token requests at the disallowed host = %d; want still 2", n)
	}
}

func TestSalesforce_HostAllowlist(t *testing.T) {
	p := newSalesforce(t, map[string]string{"allowed_hosts": "sso.example.test, *.force.example.test"})
	for host, ok := range map[string]bool{
		"":                                    true,
		"login.salesforce.com":                true,
		"test.salesforce.com":                 true,
		"https://login.salesforce.com":        true,
		"Acme.my.salesforce.com":              true,
		"acme--dev.sandbox.my.salesforce.com": true,
		"sso.example.test":                    true,
		"eu.force.example.test":               true,
		"my.salesforce.com":                   false,
		"a.b.my.salesforce.com":               false,
		"login.salesforce.com.evil.test":      false,
		"evil.test":                           false,
		"http://login.salesforce.com":         false,
		"https://login.salesforce.com/path":   false,
		"https://user@login.salesforce.com":   false,
		"login.salesforce.com/x":              false,
		"a.b.force.example.test":              false,
		"ftp://login.salesforce.com":          false,
	} {
		raw, err := p.AuthURL(providers.AuthRequest{State: "st", Options: map[string]string{"host": host}})
		if host == "" {
			raw, err = p.AuthURL(providers.AuthRequest{State: "st"})
		}
		if ok {
			if err != nil {
				t.Errorf("AuthURL(host %q) = %v; want allowed", host, err)
			} else if u, _ := url.Parse(raw); u.Scheme != "https" {
				t.Errorf("AuthURL(host %q) = %s; want https", host, raw)
			}
			continue
		}
		if err == nil {
			t.Errorf("AuthURL(host %q) = %s; want refused", host, raw)
		} else {
			wantClass(t, "AuthURL("+host+")", err, providers.ClassInvalidRequest, "host_not_allowed")
		}
	}
	for _, bad := range []map[string]string{
		{"allowed_hosts": "*.http://x"},
		{"host": "not a host"},
		{"session_timeout": "10s"},
		{"introspect": "maybe"},
	} {
		if _, err := providers.NewSalesforce(svcConfig("salesforce", bad)); err == nil {
			t.Errorf("NewSalesforce(%v) = nil error", bad)
		}
	}
}

func TestSalesforce_Validate(t *testing.T) {
	ctx := context.Background()
	rs := newReplay(t)
	p := newSalesforce(t, map[string]string{"host": rs.URL})
	// No refresh token: userinfo with the access token decides.
	g := providers.Grant{Tokens: []providers.Token{{AccessToken: "00D!a", Expiry: fixedNow.Add(time.Hour)}}, Metadata: map[string]string{"host": rs.URL}}
	rs.on("GET /services/oauth2/userinfo", answer(t, "salesforce", 401, "userinfo_invalid_session.json"))
	wantClass(t, "Validate(no refresh token, invalid session)", p.Validate(ctx, g), providers.ClassReauth, "INVALID_SESSION_ID")
	rs.on("GET /services/oauth2/userinfo", replayed{status: 403, body: []byte(`[{"errorCode":"REQUEST_LIMIT_EXCEEDED","message":"TotalRequests Limit exceeded."}]`)})
	wantClass(t, "Validate(limit)", p.Validate(ctx, g), providers.ClassTransient, "REQUEST_LIMIT_EXCEEDED")
	rs.on("GET /services/oauth2/userinfo", replayed{status: 200, body: []byte(`{"sub":"x"}`)})
	if err := p.Validate(ctx, g); err != nil {
		t.Errorf("Validate(live) = %v", err)
	}
	// Introspection answering 401 blames our client.
	g.Tokens[0].RefreshToken = "5Aep-r"
	rs.on(sfIntrospect, replayed{status: 401, body: []byte(`{"error":"invalid_client"}`)})
	wantClass(t, "Validate(introspect 401)", p.Validate(ctx, g), providers.ClassConfig, "")
}
