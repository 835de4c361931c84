package server_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/tokenvault/tokenvault/providers/providertest"
)

// FuzzCallbackQuery sends the OAuth callback arbitrary queries (state,
// code, error and anything else, raw) for a known and an unknown provider,
// on a real vault: the handler never panics, never answers 5xx (nothing
// reaches a provider without a valid state), never echoes a state or code
// into its page, and its pages are not cached.
func FuzzCallbackQuery(f *testing.F) {
	for _, q := range []string{
		"code=abc&state=def",
		"error=access_denied&state=x",
		"state=" + strings.Repeat("s", 200),
		"code=%00&state=%ff%fe",
		"state=a&state=b&code=c&code=d",
		"error_description=<script>alert(1)</script>&state=<b>",
		";;&&==%",
	} {
		f.Add("acme", q)
		f.Add("nope", q)
	}
	e := newEnv(f, providertest.Options{})
	h := e.http.Config.Handler
	f.Fuzz(func(t *testing.T, provider, rawQuery string) {
		if provider == "" || strings.ContainsAny(provider, "/?#%") {
			provider = "acme"
		}
		u := &url.URL{Path: "/oauth/callback/" + provider, RawQuery: rawQuery}
		req, err := http.NewRequest(http.MethodGet, u.String(), nil)
		if err != nil {
			return // not a request a client can send
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("GET %s = %d; want no server error without a valid state", u, rec.Code)
		}
		if rec.Code == http.StatusNotFound {
			return // the mux's, for paths it does not route
		}
		if cc := rec.Header().Get("Cache-Control"); rec.Code != http.StatusSeeOther && cc != "no-store" {
			t.Fatalf("GET %s: Cache-Control %q; want no-store", u, cc)
		}
		body := rec.Body.String()
		q, _ := url.ParseQuery(rawQuery)
		for _, k := range []string{"state", "code", "error_description"} {
			for _, v := range q[k] {
				if len(v) >= 8 && strings.Contains(body, v) {
					t.Fatalf("GET %s: the page echoes the %s", u, k)
				}
			}
		}
	})
}
