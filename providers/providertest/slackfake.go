package providertest

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"slices"
	"strconv"
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
//
// Two Web API methods let an application be tested against the fake:
// conversations.list (the workspace's channels, SlackChannels) and
// chat.postMessage (recorded, see SlackMessages).
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
	mux.HandleFunc("POST /api/oauth.v2.exchange", s.slackExchange)
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
	mux.HandleFunc("/api/conversations.list", s.slackConversationsList)
	mux.HandleFunc("POST /api/chat.postMessage", s.slackPostMessage)
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

// A SlackChannel is a channel of the fake's workspace.
type SlackChannel struct {
	ID, Name  string
	IsPrivate bool
	// IsMember: the app's bot is in the channel, so it may post there.
	IsMember bool
}

// SlackChannels are the fake workspace's channels, in conversations.list
// order: #general and #deploys have the bot in them, #random does not
// (chat.postMessage answers not_in_channel), #incidents is private.
var SlackChannels = []SlackChannel{
	{ID: "C0FAKEGENERAL", Name: "general", IsMember: true},
	{ID: "C0FAKEDEPLOYS", Name: "deploys", IsMember: true},
	{ID: "C0FAKERANDOM", Name: "random"},
	{ID: "G0FAKEINCIDENTS", Name: "incidents", IsPrivate: true, IsMember: true},
}

// A SlackMessage is one message chat.postMessage accepted.
type SlackMessage struct {
	Channel, Text, TS string
	// User is who posted it: the bot user (U0FAKEBOT) with a bot token,
	// the installing user (U0FAKEUSER) with a user token.
	User string
}

// SlackMessages returns the messages posted to channel (its id), oldest
// first; every channel's if channel is "".
func (s *Service) SlackMessages(channel string) []SlackMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []SlackMessage
	for _, m := range s.slackMessages {
		if channel == "" || m.Channel == channel {
			out = append(out, m)
		}
	}
	return out
}

// slackArgs reads a Web API method's arguments the ways Slack accepts
// them: the query string, a form body, or (for write methods) a JSON body.
// It reports whether a JSON body came without a charset, which Slack
// answers with a missing_charset warning.
func slackArgs(w http.ResponseWriter, r *http.Request) (args map[string]string, noCharset bool, ok bool) {
	args = map[string]string{}
	for k, vs := range r.URL.Query() {
		args[k] = vs[0]
	}
	if r.Method != http.MethodPost {
		return args, false, true
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch mt {
	case "application/json":
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			return nil, false, false
		}
		for k, v := range body {
			switch v := v.(type) {
			case string:
				args[k] = v
			case bool, float64:
				args[k] = fmt.Sprint(v)
			default: // blocks, attachments: kept as JSON
				b, _ := json.Marshal(v)
				args[k] = string(b)
			}
		}
		return args, params["charset"] == "", true
	case "application/x-www-form-urlencoded", "":
		if err := r.ParseForm(); err != nil {
			return nil, false, false
		}
		for k, vs := range r.PostForm {
			args[k] = vs[0]
		}
		return args, false, true
	}
	return nil, false, false
}

// slackAuthLocked checks the request's bearer token and that its grant has
// scope. It writes Slack's error answer and returns nil if not.
func (s *Service) slackAuthLocked(w http.ResponseWriter, r *http.Request, scope string) *svcGrant {
	tok := bearer(r)
	if tok == "" {
		writeJSON(w, 200, map[string]any{"ok": false, "error": "not_authed"})
		return nil
	}
	g := s.activeLocked(tok)
	if g == nil {
		writeJSON(w, 200, map[string]any{"ok": false, "error": "invalid_auth"})
		return nil
	}
	if !slices.Contains(g.scopes, scope) {
		writeJSON(w, 200, map[string]any{"ok": false, "error": "missing_scope", "needed": scope, "provided": strings.Join(g.scopes, ",")})
		return nil
	}
	return g
}

// slackConversationsList is conversations.list: types (default
// public_channel; private_channel needs groups:read), exclude_archived,
// limit (1 to 1000, default 100) and cursor (an opaque next_cursor).
func (s *Service) slackConversationsList(w http.ResponseWriter, r *http.Request) {
	args, _, ok := slackArgs(w, r)
	if !ok {
		writeJSON(w, 200, map[string]any{"ok": false, "error": "invalid_arguments"})
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.slackAuthLocked(w, r, "channels:read") == nil {
		return
	}
	public, private := true, false
	if t, ok := args["types"]; ok && t != "" {
		public, private = false, false
		for _, typ := range strings.Split(t, ",") {
			switch typ {
			case "public_channel":
				public = true
			case "private_channel":
				private = true
			case "im", "mpim":
			default:
				writeJSON(w, 200, map[string]any{"ok": false, "error": "invalid_types"})
				return
			}
		}
	}
	if private && s.slackAuthLocked(w, r, "groups:read") == nil {
		return
	}
	limit := 100
	if l, ok := args["limit"]; ok {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 1000 {
			writeJSON(w, 200, map[string]any{"ok": false, "error": "invalid_limit"})
			return
		}
		limit = n
	}
	start := 0
	if c := args["cursor"]; c != "" {
		b, err := base64.StdEncoding.DecodeString(c)
		id, found := strings.CutPrefix(string(b), "next:")
		i := slices.IndexFunc(SlackChannels, func(ch SlackChannel) bool { return ch.ID == id })
		if err != nil || !found || i < 0 {
			writeJSON(w, 200, map[string]any{"ok": false, "error": "invalid_cursor"})
			return
		}
		start = i
	}
	channels := []map[string]any{}
	next := ""
	for _, ch := range SlackChannels[start:] {
		if ch.IsPrivate && !private || !ch.IsPrivate && !public {
			continue
		}
		if len(channels) == limit {
			next = base64.StdEncoding.EncodeToString([]byte("next:" + ch.ID))
			break
		}
		channels = append(channels, map[string]any{
			"id": ch.ID, "name": ch.Name, "name_normalized": ch.Name,
			"is_channel": !ch.IsPrivate, "is_group": ch.IsPrivate, "is_im": false, "is_mpim": false,
			"is_private": ch.IsPrivate, "is_archived": false, "is_general": ch.Name == "general",
			"is_shared": false, "is_ext_shared": false, "is_org_shared": false,
			"is_member": ch.IsMember, "created": 1449252889, "creator": "U0FAKEUSER", "num_members": 4,
			"topic":   map[string]any{"value": "", "creator": "", "last_set": 0},
			"purpose": map[string]any{"value": "", "creator": "", "last_set": 0},
		})
	}
	writeJSON(w, 200, map[string]any{"ok": true, "channels": channels, "response_metadata": map[string]any{"next_cursor": next}})
}

// slackPostMessage is chat.postMessage: channel (an id, or a #name) and
// text or blocks; the token's grant needs chat:write, and a bot token's
// bot must be in the channel.
func (s *Service) slackPostMessage(w http.ResponseWriter, r *http.Request) {
	args, noCharset, ok := slackArgs(w, r)
	if !ok {
		writeJSON(w, 200, map[string]any{"ok": false, "error": "invalid_arguments"})
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.slackAuthLocked(w, r, "chat:write")
	if g == nil {
		return
	}
	name := strings.TrimPrefix(args["channel"], "#")
	i := slices.IndexFunc(SlackChannels, func(ch SlackChannel) bool { return ch.ID == args["channel"] || ch.Name == name })
	switch {
	case i < 0:
		writeJSON(w, 200, map[string]any{"ok": false, "error": "channel_not_found"})
		return
	case g.kind == "bot" && !SlackChannels[i].IsMember:
		writeJSON(w, 200, map[string]any{"ok": false, "error": "not_in_channel"})
		return
	case args["text"] == "" && args["blocks"] == "" && args["attachments"] == "":
		writeJSON(w, 200, map[string]any{"ok": false, "error": "no_text"})
		return
	case len(args["text"]) > 40000:
		writeJSON(w, 200, map[string]any{"ok": false, "error": "msg_too_long"})
		return
	}
	user := "U0FAKEBOT"
	if g.kind == "user" {
		user = "U0FAKEUSER"
	}
	ts := fmt.Sprintf("%d.%06d", s.opts.Now().Unix(), len(s.slackMessages)+1)
	s.slackMessages = append(s.slackMessages, SlackMessage{Channel: SlackChannels[i].ID, Text: args["text"], TS: ts, User: user})
	msg := map[string]any{"type": "message", "text": args["text"], "user": user, "ts": ts, "team": "T0FAKETEAM"}
	if g.kind == "bot" {
		msg["bot_id"], msg["app_id"] = "B0FAKEBOT", "A0FAKEAPP"
	}
	resp := map[string]any{"ok": true, "channel": SlackChannels[i].ID, "ts": ts, "message": msg}
	if noCharset {
		resp["warning"] = "missing_charset"
		resp["response_metadata"] = map[string]any{"warnings": []string{"missing_charset"}}
	}
	writeJSON(w, 200, resp)
}
