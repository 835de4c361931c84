package providertest_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/tokenvault/tokenvault/providers/providertest"
)

// slackBotToken installs the app on the Slack fake with bot scopes and
// returns the bot token, as Slack's oauth.v2.access hands it out.
func slackBotToken(t *testing.T, svc *providertest.Service, scopes string) string {
	t.Helper()
	const redirect = "https://app.example.test/oauth/callback"
	resp, err := noRedirect.Get(svc.URL() + "/oauth/v2/authorize?" + url.Values{
		"client_id": {providertest.DefaultClientID}, "redirect_uri": {redirect}, "state": {"s"}, "scope": {scopes},
	}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, _ := url.Parse(resp.Header.Get("Location"))
	code := loc.Query().Get("code")
	req, _ := http.NewRequest(http.MethodPost, svc.URL()+"/api/oauth.v2.access",
		strings.NewReader(url.Values{"code": {code}, "redirect_uri": {redirect}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(providertest.DefaultClientID, providertest.DefaultClientSecret)
	_, body := slackCall(t, svc, req)
	tok, _ := body["access_token"].(string)
	if tok == "" {
		t.Fatalf("oauth.v2.access = %v; want a bot token", body)
	}
	return tok
}

func slackCall(t *testing.T, svc *providertest.Service, req *http.Request) (int, map[string]any) {
	t.Helper()
	resp, err := svc.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("%s: %v", req.URL.Path, err)
	}
	return resp.StatusCode, body
}

// slackMethod calls a Web API method with a JSON body (contentType as
// given) or, for a nil body, a GET with query.
func slackMethod(t *testing.T, svc *providertest.Service, token, method, contentType string, body any, query url.Values) map[string]any {
	t.Helper()
	var req *http.Request
	if body == nil {
		req, _ = http.NewRequest(http.MethodGet, svc.URL()+"/api/"+method+"?"+query.Encode(), nil)
	} else {
		b, _ := json.Marshal(body)
		req, _ = http.NewRequest(http.MethodPost, svc.URL()+"/api/"+method, strings.NewReader(string(b)))
		req.Header.Set("Content-Type", contentType)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	status, out := slackCall(t, svc, req)
	if status != http.StatusOK {
		t.Errorf("%s answered HTTP %d; Slack answers 200 with ok", method, status)
	}
	return out
}

func channelNames(body map[string]any) string {
	var names []string
	chans, _ := body["channels"].([]any)
	for _, c := range chans {
		names = append(names, c.(map[string]any)["name"].(string))
	}
	return strings.Join(names, ",")
}

func TestSlack_ConversationsList(t *testing.T) {
	svc := providertest.StartSlack(providertest.ServiceOptions{RedirectURI: "https://app.example.test/oauth/callback"})
	defer svc.Close()
	tok := slackBotToken(t, svc, "channels:read,chat:write")

	all := slackMethod(t, svc, tok, "conversations.list", "", nil, url.Values{})
	if all["ok"] != true || channelNames(all) != "general,deploys,random" {
		t.Fatalf("conversations.list = %v; want the three public channels", all)
	}
	first := all["channels"].([]any)[0].(map[string]any)
	if first["id"] != "C0FAKEGENERAL" || first["is_member"] != true || first["is_channel"] != true || first["is_general"] != true {
		t.Errorf("channel = %v", first)
	}

	// Paging: limit, then the cursor, until next_cursor is empty.
	var names []string
	cursor := ""
	for range 5 {
		page := slackMethod(t, svc, tok, "conversations.list", "", nil, url.Values{"limit": {"2"}, "cursor": {cursor}})
		names = append(names, channelNames(page))
		cursor = page["response_metadata"].(map[string]any)["next_cursor"].(string)
		if cursor == "" {
			break
		}
	}
	if got := strings.Join(names, "|"); got != "general,deploys|random" {
		t.Errorf("pages = %q; want general,deploys|random", got)
	}

	for _, tc := range []struct {
		name  string
		token string
		q     url.Values
		want  string
	}{
		{"no token", "", url.Values{}, "not_authed"},
		{"unknown token", "xoxb-nope", url.Values{}, "invalid_auth"},
		{"private channels need groups:read", tok, url.Values{"types": {"public_channel,private_channel"}}, "missing_scope"},
		{"bad type", tok, url.Values{"types": {"public_channel,dm"}}, "invalid_types"},
		{"bad limit", tok, url.Values{"limit": {"1001"}}, "invalid_limit"},
		{"bad cursor", tok, url.Values{"cursor": {"bm9wZQ=="}}, "invalid_cursor"},
	} {
		out := slackMethod(t, svc, tc.token, "conversations.list", "", nil, tc.q)
		if out["ok"] != false || out["error"] != tc.want {
			t.Errorf("%s: conversations.list = %v; want error %s", tc.name, out, tc.want)
		}
	}

	priv := slackBotToken(t, svc, "channels:read,groups:read")
	if out := slackMethod(t, svc, priv, "conversations.list", "", nil, url.Values{"types": {"private_channel"}}); channelNames(out) != "incidents" {
		t.Errorf("private channels = %v; want incidents", out)
	}
}

func TestSlack_PostMessage(t *testing.T) {
	svc := providertest.StartSlack(providertest.ServiceOptions{RedirectURI: "https://app.example.test/oauth/callback"})
	defer svc.Close()
	tok := slackBotToken(t, svc, "channels:read,chat:write")
	const jsonUTF8 = "application/json; charset=utf-8"

	out := slackMethod(t, svc, tok, "chat.postMessage", jsonUTF8, map[string]any{"channel": "C0FAKEDEPLOYS", "text": "deploy 42 finished"}, nil)
	if out["ok"] != true || out["channel"] != "C0FAKEDEPLOYS" || out["ts"] == "" || out["warning"] != nil {
		t.Fatalf("chat.postMessage = %v", out)
	}
	if msg := out["message"].(map[string]any); msg["text"] != "deploy 42 finished" || msg["bot_id"] != "B0FAKEBOT" || msg["ts"] != out["ts"] {
		t.Errorf("message = %v", msg)
	}
	got := svc.SlackMessages("C0FAKEDEPLOYS")
	if len(got) != 1 || got[0].Text != "deploy 42 finished" || got[0].User != "U0FAKEBOT" || got[0].TS != out["ts"] {
		t.Errorf("SlackMessages(deploys) = %+v", got)
	}

	// By #name, and without a charset (Slack warns).
	out = slackMethod(t, svc, tok, "chat.postMessage", "application/json", map[string]any{"channel": "#general", "text": "hi"}, nil)
	if out["ok"] != true || out["channel"] != "C0FAKEGENERAL" || out["warning"] != "missing_charset" {
		t.Errorf("chat.postMessage without charset = %v", out)
	}

	noWrite := slackBotToken(t, svc, "channels:read")
	for _, tc := range []struct {
		name  string
		token string
		body  map[string]any
		want  string
	}{
		{"bot not in channel", tok, map[string]any{"channel": "C0FAKERANDOM", "text": "x"}, "not_in_channel"},
		{"unknown channel", tok, map[string]any{"channel": "C0NOPE", "text": "x"}, "channel_not_found"},
		{"no text", tok, map[string]any{"channel": "C0FAKEDEPLOYS"}, "no_text"},
		{"no chat:write", noWrite, map[string]any{"channel": "C0FAKEDEPLOYS", "text": "x"}, "missing_scope"},
		{"unknown token", "xoxb-nope", map[string]any{"channel": "C0FAKEDEPLOYS", "text": "x"}, "invalid_auth"},
	} {
		out := slackMethod(t, svc, tc.token, "chat.postMessage", jsonUTF8, tc.body, nil)
		if out["ok"] != false || out["error"] != tc.want {
			t.Errorf("%s: chat.postMessage = %v; want error %s", tc.name, out, tc.want)
		}
	}
	if n := len(svc.SlackMessages("")); n != 2 {
		t.Errorf("%d messages recorded; want the 2 accepted", n)
	}
}
