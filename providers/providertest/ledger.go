package providertest

import (
	"net/http"
	"strings"
)

// IssueGrant records a grant made outside the fake's authorization flow (as
// if another broker had run it) and returns its tokens: the access token,
// and a refresh token unless the fake issues non-expiring tokens. kind is
// "" or, for Slack, "bot" or "user". Tests use it to import grants that
// the fake will then refresh, validate and revoke like its own.
func (s *Service) IssueGrant(kind string, scopes []string) (accessToken, refreshToken string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := &svcGrant{kind: kind, account: s.opts.Account, scopes: scopes}
	s.grants = append(s.grants, g)
	ttl := s.opts.AccessTokenTTL
	if s.opts.NonExpiring {
		ttl = 0
	}
	return s.issueLocked(g, ttl, !s.opts.NonExpiring)
}

// EnableRotation turns token rotation on for the app, as a Slack admin can
// (one-way): new tokens expire and come with refresh tokens, and
// oauth.v2.exchange trades the non-expiring ones issued before for
// rotating ones.
func (s *Service) EnableRotation() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.NonExpiring = false
}

// slackExchange is oauth.v2.exchange: client_id and client_secret in the
// body (the method's documented arguments) and the legacy token in
// "token". A token that already expires, or was exchanged, is refused as
// Slack documents; the legacy token stops working once exchanged.
func (s *Service) slackExchange(w http.ResponseWriter, r *http.Request) {
	fail := func(code string) { writeJSON(w, 200, map[string]any{"ok": false, "error": code}) }
	form, ok := readServiceForm(w, r)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !ok {
		fail("invalid_arguments")
		return
	}
	if !s.clientInBody(r, form) {
		s.stats.ClientRejections++
		fail("bad_client_secret")
		return
	}
	if s.opts.NonExpiring {
		fail("token_rotation_not_enabled")
		return
	}
	old := form.Get("token")
	a, known := s.access[old]
	switch {
	case !known:
		fail("invalid_token")
		return
	case a.grant.revoked:
		fail("authorization_not_found")
		return
	case !a.expiry.IsZero() || a.grant.refresh != "":
		fail("token_already_exchanged")
		return
	}
	s.stats.Exchanges++
	delete(s.access, old)
	ttl := s.opts.AccessTokenTTL
	at, rt := s.issueLocked(a.grant, ttl, true)
	kind := a.grant.kind
	if kind == "" {
		kind = "bot"
	}
	writeJSON(w, 200, map[string]any{"ok": true, "app_id": "A0FAKEAPP", "access_token": at, "refresh_token": rt,
		"expires_in": int64(ttl.Seconds()), "token_type": kind, "scope": strings.Join(a.grant.scopes, ","),
		"team": map[string]any{"id": "T0FAKETEAM", "name": "Fake Team"}})
}

// RevokeToken revokes the grant of an access or refresh token the fake
// issued, as a user removing the app at the provider does. It reports
// whether the token was known.
func (s *Service) RevokeToken(tok string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.revokeLocked(tok)
}
