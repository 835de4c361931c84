package server_test

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/server"
)

// authorizeOnly asks the fake for a code and returns the callback URL it
// redirects to, without following it.
func (e *env) authorizeOnly(authURL string) *url.URL {
	e.t.Helper()
	c := &http.Client{Jar: e.browser.Jar, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if strings.Contains(req.URL.Path, "/oauth/callback/") {
			return http.ErrUseLastResponse
		}
		return nil
	}}
	resp, err := c.Get(authURL)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	u, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || !strings.Contains(u.Path, "/oauth/callback/") {
		e.t.Fatalf("authorize redirected to %q; want the callback", resp.Header.Get("Location"))
	}
	return u
}

func TestCallback_HEADDoesNotRunIt(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	sc, err := e.api.StartConnect(context.Background(), &tvv1.StartConnectRequest{Owner: "a", Provider: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	cb := e.authorizeOnly(sc.AuthorizationUrl)
	resp, err := http.Head(cb.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("HEAD callback = %d; want 405", resp.StatusCode)
	}
	if n := e.fake.Stats().Token["authorization_code"]; n != 0 {
		t.Fatalf("HEAD callback made %d token requests; want 0", n)
	}
	// The state and the code are still good for the browser's GET.
	if code, err := e.browserGet(cb.String()); err != nil || code != http.StatusOK {
		t.Errorf("GET callback after HEAD = %d, %v; want 200", code, err)
	}
}

func TestCallback_StateWithoutCodeIs400(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	sc, err := e.api.StartConnect(context.Background(), &tvv1.StartConnectRequest{Owner: "a", Provider: "acme", ReturnTo: "https://app.example/done"})
	if err != nil {
		t.Fatal(err)
	}
	cb := e.authorizeOnly(sc.AuthorizationUrl)
	q := cb.Query()
	q.Del("code")
	cb.RawQuery = q.Encode()
	resp, err := e.browser.Get(cb.String())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "Connection failed") {
		t.Errorf("callback without code = %d %q; want a 400 page", resp.StatusCode, b)
	}
	if n := e.fake.Stats().Token["authorization_code"]; n != 0 {
		t.Errorf("token requests = %d; want 0", n)
	}
}

func TestCallback_FloodWritesBoundedAudit(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	const flood = 300
	for i := range flood {
		if code, err := httpGet(e.http.URL + "/oauth/callback/acme?code=x&state=forged" + strings.Repeat("x", i%5)); err != nil || code != 400 {
			t.Fatalf("forged callback %d = %d, %v", i, code, err)
		}
	}
	e.audit.Flush(context.Background())
	r, err := e.admin.ListAuditEvents(context.Background(), &tvv1.ListAuditEventsRequest{Method: "http:callback", PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(r.Events); n > 25 || n < 20 {
		t.Errorf("%d forged callbacks wrote %d audit records; want the window's 20 (and no more than a summary beside)", flood, n)
	}
	// A minute later the count of what was not written is recorded once.
	e.clock.Add(61e9)
	httpGet(e.http.URL + "/oauth/callback/acme?code=x&state=forged")
	e.audit.Flush(context.Background())
	r, _ = e.admin.ListAuditEvents(context.Background(), &tvv1.ListAuditEventsRequest{Method: "http:callback", PageSize: 1000})
	var summaries int
	for _, ev := range r.Events {
		if ev.Reason == server.ReasonCallbackFailuresSuppressed {
			summaries++
		}
	}
	if summaries != 1 || len(r.Events) != 22 {
		t.Errorf("after the window: %d records, %d summaries; want 22 and 1", len(r.Events), summaries)
	}
	body := scrape(t, e)
	if !strings.Contains(body, "tokenvault_callback_failures_total 301") {
		t.Errorf("metrics do not count every failed callback:\n%s", grepLines(body, "callback"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
