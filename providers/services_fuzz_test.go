package providers

import (
	"strings"
	"testing"
)

// Fuzz tests for the parsers of outside input the named providers add.

func FuzzIDTokenClaims(f *testing.F) {
	f.Add("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIiwiZW1haWwiOiJhQGIifQ.c2ln")
	f.Add("a.b.c")
	f.Add("..")
	f.Add("x.eyJlbWFpbF92ZXJpZmllZCI6InRydWUifQ==.y")
	f.Fuzz(func(t *testing.T, jwt string) {
		c, ok := idTokenClaims(jwt)
		if ok && c.Sub == "" {
			t.Errorf("idTokenClaims(%q) ok without a sub", jwt)
		}
	})
}

func FuzzParseSFHost(f *testing.F) {
	for _, s := range []string{"login.salesforce.com", "https://a.my.salesforce.com", "http://127.0.0.1:8080", "a..b", "https://u@x", "x:99999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := parseSFHost(s)
		if err != nil {
			return
		}
		if !strings.HasPrefix(h.base, "https://") && !strings.HasPrefix(h.base, "http://") {
			t.Errorf("parseSFHost(%q).base = %q", s, h.base)
		}
		if strings.ContainsAny(h.canon, "/?#@ ") && !strings.HasPrefix(h.canon, "http://") {
			t.Errorf("parseSFHost(%q).canon = %q", s, h.canon)
		}
		// Canonical forms are fixed points.
		if h2, err := parseSFHost(h.canon); err != nil || h2 != h {
			t.Errorf("parseSFHost(%q) = %+v; parsing its canon gives %+v, %v", s, h, h2, err)
		}
	})
}

func FuzzSFIdentity(f *testing.F) {
	f.Add("https://login.salesforce.com/id/00D000000000001AAA/005000000000001AAA")
	f.Add("https://x/id//")
	f.Add("%zz")
	f.Fuzz(func(t *testing.T, s string) {
		org, user, ok := sfIdentity(s)
		if ok && (org == "" || user == "") {
			t.Errorf("sfIdentity(%q) = %q, %q, true", s, org, user)
		}
	})
}

func FuzzSlackRead(f *testing.F) {
	f.Add([]byte(`{"ok":true,"access_token":"xoxb-1","authed_user":{"id":"U1","access_token":"xoxp-1"}}`))
	f.Add([]byte(`{"ok":false,"error":"invalid_code"}`))
	f.Add([]byte(`{"ok":"true"}`))
	p, err := NewSlack(ServiceConfig{ClientID: "c", ClientSecret: "s", RedirectURL: "https://x/cb", Scopes: []string{"chat:write"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		tr, err := p.read(opRefresh, &httpResult{Status: 200, Body: body})
		if err == nil && string(tr.Extra["ok"]) != "true" {
			t.Errorf("read accepted an answer without ok:true")
		}
		if err != nil && ClassOf(err) == ClassTransient && strings.Contains(err.Error(), string(body)) && len(body) > 20 {
			t.Errorf("error carries the body")
		}
	})
}
