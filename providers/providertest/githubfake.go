package providertest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// GitHub's endpoints: /login/oauth/authorize and /login/oauth/access_token
// (client credentials in the body; errors at HTTP 200; JSON only if asked
// with Accept: application/json, else a form), and under /api: GET /user,
// and /applications/{client_id}/grant (DELETE), /token (DELETE, POST),
// which take HTTP Basic with the client's credentials and
// {"access_token": ...}. By default it is a GitHub App with expiring user
// tokens (AccessTokenTTL; GitHub says 8 h) and rotating refresh tokens;
// NonExpiring makes it an OAuth App.
func (s *Service) githubRoutes(mux *http.ServeMux) {
	mux.HandleFunc("/login/oauth/authorize", func(w http.ResponseWriter, r *http.Request) {
		s.authorizeReq(w, r, splitScopes(r.URL.Query().Get("scope")), nil)
	})
	mux.HandleFunc("POST /login/oauth/access_token", s.githubToken)
	mux.HandleFunc("GET /api/user", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.stats.Identity++
		g := s.activeLocked(bearer(r))
		if g == nil {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Bad credentials"})
			return
		}
		writeJSON(w, 200, map[string]any{"login": g.account, "id": 1000001, "type": "User"})
	})
	app := "/api/applications/" + url.PathEscape(s.opts.ClientID)
	mux.HandleFunc("DELETE "+app+"/grant", func(w http.ResponseWriter, r *http.Request) { s.githubApp(w, r, "grant") })
	mux.HandleFunc("DELETE "+app+"/token", func(w http.ResponseWriter, r *http.Request) { s.githubApp(w, r, "token") })
	mux.HandleFunc("POST "+app+"/token", func(w http.ResponseWriter, r *http.Request) { s.githubApp(w, r, "check") })
}

func (s *Service) githubToken(w http.ResponseWriter, r *http.Request) {
	asJSON := r.Header.Get("Accept") == "application/json"
	answer := func(fields map[string]any) {
		if asJSON {
			writeJSON(w, 200, fields)
			return
		}
		v := url.Values{}
		for k, x := range fields {
			v.Set(k, fmt.Sprint(x))
		}
		w.Header().Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
		io.WriteString(w, v.Encode())
	}
	fail := func(code string) { answer(map[string]any{"error": code, "error_description": code}) }
	form, ok := readServiceForm(w, r)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !ok {
		fail("invalid_request")
		return
	}
	if !s.clientInBody(r, form) {
		s.stats.ClientRejections++
		fail("incorrect_client_credentials")
		return
	}
	app := !s.opts.NonExpiring
	issue := func(g *svcGrant, rt string) map[string]any {
		resp := map[string]any{"token_type": "bearer", "scope": strings.Join(g.scopes, ",")}
		if app {
			at, _ := s.issueLocked(g, s.opts.AccessTokenTTL, false)
			resp["access_token"], resp["expires_in"], resp["scope"] = at, int64(s.opts.AccessTokenTTL/time.Second), ""
			resp["refresh_token"], resp["refresh_token_expires_in"] = rt, 15811200
		} else {
			resp["access_token"], _ = s.issueLocked(g, 0, false)
		}
		return resp
	}
	switch form.Get("grant_type") {
	case "", "authorization_code":
		s.stats.Exchanges++
		c, why := s.redeemLocked(form)
		if c == nil {
			if strings.HasPrefix(why, "redirect_uri") {
				s.stats.ClientRejections++
				fail("redirect_uri_mismatch")
			} else {
				fail("bad_verification_code")
			}
			return
		}
		g := s.newGrantLocked(c, "", c.scopes)
		rt := ""
		if app {
			rt = s.rotateLocked(g)
		}
		answer(issue(g, rt))
	case "refresh_token":
		if !app {
			fail("unsupported_grant_type")
			return
		}
		g, _ := s.useRefreshLocked(form.Get("refresh_token"))
		if g == nil {
			fail("bad_refresh_token")
			return
		}
		// "Once you use a refresh token, that refresh token and the old
		// user access token will no longer work."
		for at, a := range s.access {
			if a.grant == g {
				delete(s.access, at)
			}
		}
		rt := s.rotateLocked(g)
		s.stats.Refreshes++
		answer(issue(g, rt))
	default:
		fail("unsupported_grant_type")
	}
}

// githubApp serves /applications/{client_id}/{grant,token}.
func (s *Service) githubApp(w http.ResponseWriter, r *http.Request, what string) {
	var body struct {
		AccessToken string `json:"access_token"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	bodyOK := dec.Decode(&body) == nil && body.AccessToken != ""
	id, secret, basic := r.BasicAuth()
	s.mu.Lock()
	defer s.mu.Unlock()
	if what == "check" {
		s.stats.Validations++
	} else {
		s.stats.Revocations++
	}
	if !basic || id != s.opts.ClientID || secret != s.opts.ClientSecret {
		s.stats.ClientRejections++
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Requires authentication"})
		return
	}
	if !bodyOK {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"message": "Validation Failed"})
		return
	}
	g := s.activeLocked(body.AccessToken)
	if g == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
		return
	}
	switch what {
	case "check":
		writeJSON(w, 200, map[string]any{"token": body.AccessToken, "user": map[string]any{"login": g.account}})
		return
	case "grant":
		// The whole authorization: every grant of this user for the app.
		for _, x := range s.grants {
			if x.account == g.account {
				x.revoked = true
			}
		}
	default:
		delete(s.access, body.AccessToken)
	}
	w.WriteHeader(http.StatusNoContent)
}
