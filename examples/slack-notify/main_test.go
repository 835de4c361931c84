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
	// who is "-owner alice" (by user and provider) unless given.
	notify := func(channel, text string, who ...string) (int, string, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if len(who) == 0 {
			who = []string{"-owner", "alice"}
		}
		var out, errb bytes.Buffer
		code := run(ctx, append(who, "-addr", st.GRPCAddr, "-channel", channel, "-text", text,
			"-slack-api", st.Slack.URL()+"/api"), env, &out, &errb)
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
	if code, out, errOut := notify("C0FAKEGENERAL", "by id", "-connection", id); code != 0 || !strings.Contains(out, "posted to C0FAKEGENERAL") {
		t.Errorf("slack-notify -connection %s = %d, %q, %q; want 0", id, code, out, errOut)
	}
	for _, who := range [][]string{{"-connection", "conn_nope"}, {"-owner", "bob"}} {
		if code, _, errOut := notify("C0FAKEDEPLOYS", "x", who...); code != 3 || !strings.Contains(errOut, "does not exist") {
			t.Errorf("slack-notify %v = %d, %q; want 3", who, code, errOut)
		}
	}
	if code, _, _ := notify("C0FAKEDEPLOYS", "x", "-owner", "alice", "-connection", id); code != 2 {
		t.Errorf("slack-notify with both -owner and -connection = %d; want 2", code)
	}

	// The workspace removes the app: Slack rejects the token, the forced
	// refresh is refused too, and the user is told to connect again. (The
	// sidecar does not force-refresh a token younger than 2 s.)
	time.Sleep(2100 * time.Millisecond)
	st.RevokeAtSlack(t, id)
	if code, _, errOut := notify("C0FAKEDEPLOYS", "after revoke"); code != 3 || !strings.Contains(errOut, "StartConnect") {
		t.Errorf("slack-notify after the grant was revoked = %d, %q; want 3 and a reconnect hint", code, errOut)
	}
	if n := len(st.Slack.SlackMessages("")); n != 2 {
		t.Errorf("%d messages at Slack; want only the first two", n)
	}
}
