package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/examples/internal/exampletest"
)

// TestSlackNotify posts through a real sidecar to the Slack fake: the
// message arrives in the channel, a channel the bot is not in fails, and a
// grant revoked at Slack ends in "connect again" (exit 3) with nothing
// posted.
func TestSlackNotify(t *testing.T) {
	st := exampletest.Start(t, exampletest.Options{})
	id := st.ConnectSlack(t, "alice")
	env := func(k string) string {
		if k == "TOKENVAULT_API_KEY" {
			return st.AppKey
		}
		return ""
	}
	notify := func(channel, text string, conn ...string) (int, string, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c := id
		if len(conn) > 0 {
			c = conn[0]
		}
		var out, errb bytes.Buffer
		code := run(ctx, []string{"-addr", st.GRPCAddr, "-connection", c, "-channel", channel, "-text", text,
			"-slack-api", st.Slack.URL() + "/api"}, env, &out, &errb)
		return code, out.String(), errb.String()
	}

	code, out, errOut := notify("C0FAKEDEPLOYS", "deploy 42 finished")
	if code != 0 || !strings.Contains(out, "posted to C0FAKEDEPLOYS") {
		t.Fatalf("slack-notify = %d, %q, %q; want 0 and posted", code, out, errOut)
	}
	msgs := st.Slack.SlackMessages("C0FAKEDEPLOYS")
	if len(msgs) != 1 || msgs[0].Text != "deploy 42 finished" || msgs[0].User != "U0FAKEBOT" {
		t.Fatalf("messages in #deploys = %+v; want the alert, by the bot", msgs)
	}

	if code, _, errOut := notify("C0FAKERANDOM", "x"); code != 1 || !strings.Contains(errOut, "not_in_channel") {
		t.Errorf("slack-notify to a channel the bot is not in = %d, %q; want 1 and not_in_channel", code, errOut)
	}
	if code, _, errOut := notify("C0FAKEDEPLOYS", "x", "conn_nope"); code != 3 || !strings.Contains(errOut, "does not exist") {
		t.Errorf("slack-notify with an unknown connection = %d, %q; want 3", code, errOut)
	}

	// The workspace removes the app: Slack rejects the token, the forced
	// refresh is refused too, and the user is told to connect again. (The
	// sidecar does not force-refresh a token younger than 2 s.)
	time.Sleep(2100 * time.Millisecond)
	st.RevokeAtSlack(t, id)
	if code, _, errOut := notify("C0FAKEDEPLOYS", "after revoke"); code != 3 || !strings.Contains(errOut, "StartConnect") {
		t.Errorf("slack-notify after the grant was revoked = %d, %q; want 3 and a reconnect hint", code, errOut)
	}
	if n := len(st.Slack.SlackMessages("")); n != 1 {
		t.Errorf("%d messages at Slack; want only the first", n)
	}
}
