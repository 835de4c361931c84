package providertest

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"
)

// Linear's endpoints: /oauth/authorize (comma-separated scopes, actor),
// /oauth/token (a form body only; client credentials in it; redirect_uri
// required; RFC 6749 errors; scope answered space-separated; refresh
// tokens rotate), /oauth/revoke (the access token as a bearer, or a
// refresh_token field; 400 if it cannot revoke) and /graphql (the viewer
// query, with a bearer token).
func (s *Service) linearRoutes(mux *http.ServeMux) {
	mux.HandleFunc("/oauth/authorize", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("response_type") != "code" || strings.Contains(q.Get("scope"), " ") ||
			q.Get("actor") != "" && q.Get("actor") != "user" && q.Get("actor") != "app" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		s.authorizeReq(w, r, splitScopes(q.Get("scope")), nil)
	})
	mux.HandleFunc("POST /oauth/token", s.linearToken)
	mux.HandleFunc("POST /oauth/revoke", func(w http.ResponseWriter, r *http.Request) {
		form, ok := readServiceForm(w, r)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.stats.Revocations++
		tok := bearer(r)
		if ok && tok == "" {
			tok = form.Get("refresh_token")
		}
		if !ok || tok == "" || !s.revokeLocked(tok) {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "could not revoke"})
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("POST /graphql", func(w http.ResponseWriter, r *http.Request) {
		var q struct{ Query string }
		_ = json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&q)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.stats.Identity++
		g := s.activeLocked(bearer(r))
		if g == nil {
			writeJSON(w, http.StatusUnauthorized, map[string]any{"errors": []any{map[string]any{
				"message": "Authentication required, not authenticated", "extensions": map[string]string{"code": "AUTHENTICATION_ERROR"}}}})
			return
		}
		if !strings.Contains(q.Query, "viewer") {
			writeJSON(w, http.StatusBadRequest, map[string]any{"errors": []any{map[string]string{"message": "unsupported query"}}})
			return
		}
		writeJSON(w, 200, map[string]any{"data": map[string]any{"viewer": map[string]any{
			"id": "fake-user-" + g.account, "name": g.account,
			"organization": map[string]string{"id": "fake-org-id", "name": "Fake Org", "urlKey": "fake-org"}}}})
	})
}

func (s *Service) linearToken(w http.ResponseWriter, r *http.Request) {
	fail := func(status int, code string) {
		writeJSON(w, status, map[string]string{"error": code, "error_description": code})
	}
	form, ok := readServiceForm(w, r)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !ok {
		fail(http.StatusBadRequest, "invalid_request")
		return
	}
	if !s.clientInBody(r, form) {
		s.stats.ClientRejections++
		fail(http.StatusUnauthorized, "invalid_client")
		return
	}
	ttl := s.opts.AccessTokenTTL
	issue := func(g *svcGrant) map[string]any {
		at, _ := s.issueLocked(g, ttl, false)
		return map[string]any{"access_token": at, "token_type": "Bearer", "expires_in": int64(ttl / time.Second),
			"scope": strings.Join(g.scopes, " "), "refresh_token": s.rotateLocked(g)}
	}
	switch form.Get("grant_type") {
	case "authorization_code":
		s.stats.Exchanges++
		if !form.Has("redirect_uri") {
			fail(http.StatusBadRequest, "invalid_request")
			return
		}
		c, _ := s.redeemLocked(form)
		if c == nil {
			fail(http.StatusBadRequest, "invalid_grant")
			return
		}
		writeJSON(w, 200, issue(s.newGrantLocked(c, "", c.scopes)))
	case "refresh_token":
		g, _ := s.useRefreshLocked(form.Get("refresh_token"))
		if g == nil {
			fail(http.StatusBadRequest, "invalid_grant")
			return
		}
		s.stats.Refreshes++
		writeJSON(w, 200, issue(g))
	default:
		fail(http.StatusBadRequest, "unsupported_grant_type")
	}
}
