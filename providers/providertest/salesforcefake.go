package providertest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// Salesforce's endpoints under /services/oauth2: authorize, token (client
// credentials in the body; no expires_in; every answer signed with
// Base64(HMAC-SHA256(id + issued_at)) keyed by the client secret; the same
// refresh token kept unless RotateRefreshTokens), introspect (RFC 7662,
// client credentials in the body), revoke (token=...; 400 invalid_token for
// an unknown one) and userinfo. The session timeout is AccessTokenTTL.
func (s *Service) salesforceRoutes(mux *http.ServeMux) {
	const p = "/services/oauth2/"
	mux.HandleFunc(p+"authorize", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("response_type") != "code" {
			http.Error(w, "unsupported_response_type", http.StatusBadRequest)
			return
		}
		s.authorizeReq(w, r, splitScopes(q.Get("scope")), nil)
	})
	mux.HandleFunc("POST "+p+"token", s.salesforceToken)
	mux.HandleFunc("POST "+p+"introspect", func(w http.ResponseWriter, r *http.Request) {
		form, ok := readServiceForm(w, r)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.stats.Validations++
		if !ok || !s.clientInBody(r, form) {
			s.stats.ClientRejections++
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_client"})
			return
		}
		tok := form.Get("token")
		if a, ok := s.access[tok]; ok && s.activeLocked(tok) != nil {
			writeJSON(w, 200, map[string]any{"active": true, "client_id": s.opts.ClientID, "username": a.grant.account + "@fakeorg.example.test",
				"token_type": "access_token", "exp": a.expiry.Unix(), "scope": strings.Join(a.grant.scopes, " ")})
			return
		}
		if t, ok := s.refresh[tok]; ok && !t.rotated && !t.grant.revoked {
			writeJSON(w, 200, map[string]any{"active": true, "client_id": s.opts.ClientID, "token_type": "refresh_token"})
			return
		}
		writeJSON(w, 200, map[string]any{"active": false})
	})
	mux.HandleFunc("POST "+p+"revoke", func(w http.ResponseWriter, r *http.Request) {
		form, ok := readServiceForm(w, r)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.stats.Revocations++
		if !ok || !s.revokeLocked(form.Get("token")) {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_token", "error_description": "invalid token"})
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("GET "+p+"userinfo", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.stats.Identity++
		if s.activeLocked(bearer(r)) == nil {
			writeJSON(w, http.StatusUnauthorized, []map[string]string{{"errorCode": "INVALID_SESSION_ID", "message": "Session expired or invalid"}})
			return
		}
		writeJSON(w, 200, map[string]string{"user_id": "005FAKE000000001AAA", "organization_id": "00DFAKE000000001AAA"})
	})
}

func (s *Service) salesforceToken(w http.ResponseWriter, r *http.Request) {
	fail := func(status int, code, desc string) {
		writeJSON(w, status, map[string]string{"error": code, "error_description": desc})
	}
	form, ok := readServiceForm(w, r)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !ok {
		fail(http.StatusBadRequest, "invalid_request", "bad request")
		return
	}
	if !s.clientInBody(r, form) {
		s.stats.ClientRejections++
		fail(http.StatusBadRequest, "invalid_client_id", "client identifier invalid")
		return
	}
	issue := func(g *svcGrant) map[string]any {
		at, _ := s.issueLocked(g, s.opts.AccessTokenTTL, false)
		id := s.hs.URL + "/id/00DFAKE000000001AAA/005FAKE000000001AAA"
		issued := strconv.FormatInt(s.opts.Now().UnixMilli(), 10)
		mac := hmac.New(sha256.New, []byte(s.opts.ClientSecret))
		mac.Write([]byte(id + issued))
		return map[string]any{"access_token": at, "instance_url": s.hs.URL, "id": id, "token_type": "Bearer",
			"issued_at": issued, "signature": base64.StdEncoding.EncodeToString(mac.Sum(nil)), "scope": strings.Join(g.scopes, " ")}
	}
	switch form.Get("grant_type") {
	case "authorization_code":
		s.stats.Exchanges++
		c, why := s.redeemLocked(form)
		if c == nil {
			if strings.HasPrefix(why, "redirect_uri") {
				s.stats.ClientRejections++
				fail(http.StatusBadRequest, "redirect_uri_mismatch", "redirect_uri must match configuration")
			} else {
				fail(http.StatusBadRequest, "invalid_grant", "authentication failure")
			}
			return
		}
		g := s.newGrantLocked(c, "", c.scopes)
		resp := issue(g)
		if slices.Contains(g.scopes, "refresh_token") || slices.Contains(g.scopes, "offline_access") {
			resp["refresh_token"] = s.rotateLocked(g)
		}
		writeJSON(w, 200, resp)
	case "refresh_token":
		g, _ := s.useRefreshLocked(form.Get("refresh_token"))
		if g == nil {
			fail(http.StatusBadRequest, "invalid_grant", "expired access/refresh token")
			return
		}
		resp := issue(g)
		if s.opts.RotateRefreshTokens {
			resp["refresh_token"] = s.rotateLocked(g)
		}
		s.stats.Refreshes++
		writeJSON(w, 200, resp)
	default:
		fail(http.StatusBadRequest, "unsupported_grant_type", "grant type not supported")
	}
}
