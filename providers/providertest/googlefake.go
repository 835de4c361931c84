package providertest

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Google's endpoints: /o/oauth2/v2/auth (space-separated scopes; a refresh
// token only with access_type=offline), /token (client credentials in the
// body; an id token when "openid" was granted; refresh answers carry no
// refresh_token: Google does not rotate), /revoke (token=...; 400
// invalid_token for an unknown one) and /tokeninfo.
func (s *Service) googleRoutes(mux *http.ServeMux) {
	mux.HandleFunc("/o/oauth2/v2/auth", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("response_type") != "code" || strings.Contains(q.Get("scope"), ",") {
			http.Error(w, "Error 400: invalid_request", http.StatusBadRequest)
			return
		}
		s.authorizeReq(w, r, splitScopes(q.Get("scope")), nil)
	})
	mux.HandleFunc("POST /token", s.googleToken)
	mux.HandleFunc("POST /revoke", func(w http.ResponseWriter, r *http.Request) {
		form, ok := readServiceForm(w, r)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.stats.Revocations++
		if !ok || !s.revokeLocked(form.Get("token")) {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_token", "error_description": "Token expired or revoked"})
			return
		}
		writeJSON(w, 200, map[string]string{})
	})
	mux.HandleFunc("POST /tokeninfo", func(w http.ResponseWriter, r *http.Request) {
		form, _ := readServiceForm(w, r)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.stats.Validations++
		g := s.activeLocked(form.Get("access_token"))
		if g == nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_token", "error_description": "Invalid Value"})
			return
		}
		writeJSON(w, 200, map[string]string{"aud": s.opts.ClientID, "azp": s.opts.ClientID, "sub": googleSub, "scope": strings.Join(g.scopes, " ")})
	})
}

const googleSub = "110000000000000000001"

func (s *Service) googleToken(w http.ResponseWriter, r *http.Request) {
	fail := func(status int, code, desc string) {
		writeJSON(w, status, map[string]string{"error": code, "error_description": desc})
	}
	form, ok := readServiceForm(w, r)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !ok {
		fail(http.StatusBadRequest, "invalid_request", "Bad Request")
		return
	}
	if !s.clientInBody(r, form) {
		s.stats.ClientRejections++
		fail(http.StatusUnauthorized, "invalid_client", "The OAuth client was not found.")
		return
	}
	ttl := s.opts.AccessTokenTTL
	switch form.Get("grant_type") {
	case "authorization_code":
		s.stats.Exchanges++
		c, why := s.redeemLocked(form)
		if c == nil {
			if strings.HasPrefix(why, "redirect_uri") {
				s.stats.ClientRejections++
				fail(http.StatusBadRequest, "redirect_uri_mismatch", "Bad Request")
			} else {
				fail(http.StatusBadRequest, "invalid_grant", "Bad Request")
			}
			return
		}
		g := s.newGrantLocked(c, "", c.scopes)
		offline := c.params.Get("access_type") == "offline"
		at, rt := s.issueLocked(g, ttl, offline)
		resp := map[string]any{"access_token": at, "expires_in": int64(ttl / time.Second), "token_type": "Bearer",
			"scope": strings.Join(googleGranted(g.scopes), " ")}
		if offline {
			resp["refresh_token"] = rt
		}
		if slices.Contains(g.scopes, "openid") {
			resp["id_token"] = s.googleIDToken(g)
		}
		writeJSON(w, 200, resp)
	case "refresh_token":
		g, _ := s.useRefreshLocked(form.Get("refresh_token"))
		if g == nil {
			fail(http.StatusBadRequest, "invalid_grant", "Token has been expired or revoked.")
			return
		}
		at, _ := s.issueLocked(g, ttl, false)
		s.stats.Refreshes++
		writeJSON(w, 200, map[string]any{"access_token": at, "expires_in": int64(ttl / time.Second), "token_type": "Bearer",
			"scope": strings.Join(googleGranted(g.scopes), " ")})
	default:
		fail(http.StatusBadRequest, "unsupported_grant_type", "Invalid grant_type")
	}
}

// googleGranted spells scopes as Google answers them.
func googleGranted(scopes []string) []string {
	out := make([]string, 0, len(scopes))
	for _, sc := range scopes {
		switch sc {
		case "email", "profile":
			sc = "https://www.googleapis.com/auth/userinfo." + sc
		}
		out = append(out, sc)
	}
	return out
}

// googleIDToken is an unsigned-looking JWT with the claims tokenvault reads.
func (s *Service) googleIDToken(g *svcGrant) string {
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	now := s.opts.Now().Unix()
	claims := map[string]any{"iss": "https://accounts.google.com", "aud": s.opts.ClientID, "azp": s.opts.ClientID,
		"sub": googleSub, "iat": now, "exp": now + 3600}
	if slices.Contains(g.scopes, "email") {
		claims["email"], claims["email_verified"] = g.account+"@example.test", true
	}
	return enc(map[string]string{"alg": "RS256", "typ": "JWT"}) + "." + enc(claims) + "." + base64.RawURLEncoding.EncodeToString([]byte("fake-signature"))
}
