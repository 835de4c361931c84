package main

import (
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// A secretSet collects the secrets an end-to-end test comes across:
// tokens it was served, API keys, the master key, and the states, codes and
// PKCE verifiers of its connect flows (from the fake authorization
// server's Secrets, or from the redirects a browser followed). Safe for
// concurrent use.
type secretSet struct {
	mu sync.Mutex
	m  map[string]string // secret -> what it is
}

func newSecretSet() *secretSet { return &secretSet{m: map[string]string{}} }

// add remembers values as secrets of the given kind. Values shorter than 8
// characters are not secrets of ours and would match by accident.
func (s *secretSet) add(kind string, values ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range values {
		if len(v) >= 8 {
			s.m[v] = kind
		}
	}
}

// addURL remembers the state and code in u's query.
func (s *secretSet) addURL(u *url.URL) {
	q := u.Query()
	s.add("state", q.Get("state"))
	s.add("authorization code", q.Get("code"))
	s.add("code verifier", q.Get("code_verifier"))
}

// browser returns an HTTP client that remembers the state and code of
// every URL it is redirected to, and otherwise redirects as check says (nil:
// follow every redirect).
func (s *secretSet) browser(check func(*http.Request, []*http.Request) error) *http.Client {
	jar, _ := cookiejar.New(nil) // the start URL binds the flow to this browser's cookie
	return &http.Client{Jar: jar, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		s.addURL(req.URL)
		if check != nil {
			return check(req, via)
		}
		return nil
	}}
}

// assertNoSecretLogged fails t for every log line that holds one of the
// secrets of s, naming the kind of secret and the line number, never the
// secret. It fails too if s is empty: the caller collected nothing.
func assertNoSecretLogged(t *testing.T, logs string, s *secretSet) {
	t.Helper()
	if s.len() == 0 {
		t.Error("assertNoSecretLogged: no secrets collected; the test would check nothing")
	}
	for _, f := range loggedSecrets(logs, s) {
		t.Errorf("a log line holds a secret: %s", f)
	}
}

func (s *secretSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// loggedSecrets returns "line N: kind" for each secret of s in each line
// of logs.
func loggedSecrets(logs string, s *secretSet) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for i, line := range strings.Split(logs, "\n") {
		for secret, kind := range s.m {
			if strings.Contains(line, secret) {
				out = append(out, fmt.Sprintf("line %d: %s", i+1, kind))
			}
		}
	}
	return out
}

// TestLoggedSecrets: the helper finds each kind of secret in any line, and
// nothing in logs without one.
func TestLoggedSecrets(t *testing.T) {
	s := newSecretSet()
	s.add("access token", "sbx_at_0123456789")
	s.addURL(&url.URL{RawQuery: "state=st_abcdefghij&code=sbx_code_abcdefgh&code_verifier=verifier_0123456789"})
	for _, tc := range []struct {
		logs string
		want []string
	}{
		{`{"msg":"refreshed","connection":"conn_1"}`, nil},
		{`{"msg":"ok"}` + "\n" + `{"msg":"x","tok":"sbx_at_0123456789"}`, []string{"line 2: access token"}},
		{`state=st_abcdefghij`, []string{"line 1: state"}},
		{`{"err":"bad code sbx_code_abcdefgh"}`, []string{"line 1: authorization code"}},
		{`verifier_0123456789`, []string{"line 1: code verifier"}},
	} {
		if got := loggedSecrets(tc.logs, s); fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("loggedSecrets(%q) = %q; want %q", tc.logs, got, tc.want)
		}
	}
}
