package providertest

import (
	"crypto/rand"
	"net/http"
	"slices"
	"strings"
)

// Slack's endpoints: /oauth/v2/authorize, and under /api oauth.v2.access,
// auth.revoke and auth.test. Client authentication is HTTP Basic only
// (what Slack prefers). Every answer is HTTP 200 with "ok"; failures are
// {"ok":false,"error":code}. A code with bot scopes yields a bot token at
// the top level; user scopes yield a user token in authed_user; a
// user-scopes-only install has no top-level access_token. With rotation
// (the default; see NonExpiring) each token has its own refresh token,
// rotated on use.
func (s *Service) slackRoutes(mux *http.ServeMux) {
	mux.HandleFunc("/oauth/v2/authorize", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		bot, user := splitScopes(q.Get("scope")), splitScopes(q.Get("user_scope"))
		if strings.Contains(q.Get("scope")+q.Get("user_scope"), " ") {
			http.Error(w, "scopes are comma-separated", http.StatusBadRequest)
			return
		}
		s.authorizeReq(w, r, bot, user)
	})
	mux.HandleFunc("POST /api/oauth.v2.access", s.slackAccess)
	mux.HandleFunc("POST /api/auth.revoke", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.stats.Revocations++
		g := s.activeLocked(bearer(r))
		if g == nil {
			writeJSON(w, 200, map[string]any{"ok": false, "error": "invalid_auth"})
			return
		}
		g.revoked = true
		writeJSON(w, 200, map[string]any{"ok": true, "revoked": true})
	})
	mux.HandleFunc("POST /api/auth.test", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.stats.Validations++
		if s.activeLocked(bearer(r)) == nil {
			writeJSON(w, 200, map[string]any{"ok": false, "error": "invalid_auth"})
			return
		}
		writeJSON(w, 200, map[string]any{"ok": true, "team_id": "T0FAKETEAM", "user_id": "U0FAKEUSER"})
	})
}

func (s *Service) slackAccess(w http.ResponseWriter, r *http.Request) {
	fail := func(code string) { writeJSON(w, 200, map[string]any{"ok": false, "error": code}) }
	form, ok := readServiceForm(w, r)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !ok {
		fail("invalid_arguments")
		return
	}
	if !s.clientInBasic(r, form, true) {
		s.stats.ClientRejections++
		fail("bad_client_secret")
		return
	}
	ttl := s.opts.AccessTokenTTL
	rotating := !s.opts.NonExpiring
	if !rotating {
		ttl = 0
	}
	team := map[string]any{"id": "T0FAKETEAM", "name": "Fake Team"}
	switch form.Get("grant_type") {
	case "", "authorization_code":
		s.stats.Exchanges++
		c, why := s.redeemLocked(form)
		if c == nil {
			if strings.HasPrefix(why, "redirect_uri") {
				s.stats.ClientRejections++
				fail("bad_redirect_uri")
			} else if strings.HasPrefix(why, "code_verifier") {
				fail("invalid_code_verifier")
			} else {
				fail("invalid_code")
			}
			return
		}
		resp := map[string]any{"ok": true, "app_id": "A0FAKEAPP", "team": team, "enterprise": nil, "is_enterprise_install": false}
		authed := map[string]any{"id": "U0FAKEUSER"}
		if len(c.scopes) > 0 {
			g := s.newGrantLocked(c, "bot", c.scopes)
			at, rt := s.issueLocked(g, ttl, rotating)
			resp["access_token"], resp["token_type"], resp["scope"], resp["bot_user_id"] = at, "bot", strings.Join(c.scopes, ","), "U0FAKEBOT"
			if rotating {
				resp["refresh_token"], resp["expires_in"] = rt, int64(ttl.Seconds())
			}
			if slices.Contains(c.scopes, "incoming-webhook") {
				resp["incoming_webhook"] = map[string]any{"channel": "#general", "channel_id": "C0FAKECHAN",
					"configuration_url": "https://fake-team.slack.example/services/B0FAKE",
					"url":               "https://hooks.slack.example/services/T0FAKETEAM/B0FAKE/" + rand.Text()}
			}
		}
		if len(c.userScopes) > 0 {
			g := s.newGrantLocked(c, "user", c.userScopes)
			at, rt := s.issueLocked(g, ttl, rotating)
			authed["access_token"], authed["token_type"], authed["scope"] = at, "user", strings.Join(c.userScopes, ",")
			if rotating {
				authed["refresh_token"], authed["expires_in"] = rt, int64(ttl.Seconds())
			}
		}
		resp["authed_user"] = authed
		writeJSON(w, 200, resp)
	case "refresh_token":
		if !rotating {
			fail("token_rotation_not_enabled")
			return
		}
		g, _ := s.useRefreshLocked(form.Get("refresh_token"))
		if g == nil {
			fail("invalid_refresh_token")
			return
		}
		at, _ := s.issueLocked(g, ttl, false)
		rt := s.rotateLocked(g)
		s.stats.Refreshes++
		resp := map[string]any{"ok": true, "app_id": "A0FAKEAPP", "access_token": at, "refresh_token": rt,
			"expires_in": int64(ttl.Seconds()), "token_type": g.kind, "scope": strings.Join(g.scopes, ","), "team": team}
		if g.kind == "bot" {
			resp["bot_user_id"] = "U0FAKEBOT"
		}
		writeJSON(w, 200, resp)
	default:
		fail("invalid_grant_type")
	}
}
