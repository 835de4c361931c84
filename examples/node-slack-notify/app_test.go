// Package nodeslacknotify holds the end-to-end test of the Express example
// beside it: the Slack fake, a real sidecar, and the app run by node.
package nodeslacknotify

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/examples/internal/exampletest"
	tokenvaultv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
)

// node returns the node binary, or skips (fails under CI) when node or
// the example's packages are missing: make test installs them.
func node(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("node")
	msg := ""
	switch {
	case err != nil:
		msg = "node not found"
	case !exists("node_modules/express") || !exists("../../client/node/dist/src/index.js"):
		msg = "the example's packages are not installed: run 'make node-test' (npm ci here and in client/node)"
	}
	if msg != "" {
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

type app struct {
	t    *testing.T
	base string
	hc   *http.Client
}

// do sends a request to the app and decodes a JSON answer into out.
func (a *app) do(method, path string, body any, out any) int {
	a.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, a.base+path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			a.t.Fatalf("%s %s = %d %q: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

// appListens waits until the app says it listens on port (true), or exits
// because the port is taken (false); anything else fails the test.
func appListens(t *testing.T, logs *exampletest.SyncBuffer, exited <-chan struct{}, port int) bool {
	t.Helper()
	listening := fmt.Sprintf("listening on 127.0.0.1:%d", port)
	for deadline := time.Now().Add(30 * time.Second); ; {
		if strings.Contains(logs.String(), listening) {
			return true
		}
		select {
		case <-exited:
			if strings.Contains(logs.String(), "EADDRINUSE") {
				return false
			}
			t.Fatalf("the app exited: %s", logs)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the app did not start: %s", logs)
		}
	}
}

// TestNodeSlackNotify runs the tutorial: connect Slack, pick a channel,
// post a deployment alert; then Slack revokes the grant, the app sends the
// user to reconnect and learns it by webhook too; after reconnecting the
// alert goes out again.
func TestNodeSlackNotify(t *testing.T) {
	nodeBin := node(t)
	var (
		st   *exampletest.Stack
		base string
		logs *exampletest.SyncBuffer
	)
	// The app's port is chosen before the sidecar starts (its webhook and
	// return_to name the app), so another process may take it meanwhile;
	// then the app cannot listen, and the whole setup is tried again on
	// another port. Nothing is asked of the port before the app says it
	// listens there: a server of another test on it would answer too.
	for attempt := 1; ; attempt++ {
		port := exampletest.FreePort(t)
		base = fmt.Sprintf("http://127.0.0.1:%d", port)
		key := make([]byte, 32)
		rand.Read(key)
		secret := "whsec_" + base64.StdEncoding.EncodeToString(key)
		st = exampletest.Start(t, exampletest.Options{
			Webhooks: []exampletest.Webhook{{URL: base + "/webhooks/tokenvault", Secret: secret}},
			ReturnTo: []string{base + "/"},
		})

		ctx, cancel := context.WithCancel(context.Background())
		cmd := exec.CommandContext(ctx, nodeBin, "server.js")
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), fmt.Sprintf("PORT=%d", port), "TOKENVAULT_ADDR=" + st.GRPCAddr,
			"TOKENVAULT_API_KEY=" + st.AppKey, "TOKENVAULT_WEBHOOK_SECRET=" + secret, "SLACK_API=" + st.Slack.URL() + "/api", "APP_URL=" + base}
		logs = &exampletest.SyncBuffer{}
		cmd.Stdout, cmd.Stderr = logs, logs
		cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
		cmd.WaitDelay = 10 * time.Second
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() { cancel(); <-exited })
		if appListens(t, logs, exited, port) {
			break
		}
		if attempt == 3 {
			t.Fatalf("the app could not listen on a free port in 3 attempts: %s", logs)
		}
		t.Logf("port %d was taken before the app started; again on another", port)
	}
	a := &app{t: t, base: base, hc: &http.Client{Timeout: 30 * time.Second}}
	var status struct {
		Slack                string `json:"slack"`
		WebhookSaysReconnect any    `json:"webhookSaysReconnect"`
	}
	if a.do("GET", "/status?user=alice", nil, &status); status.Slack != "not_connected" {
		t.Fatalf("status before connecting = %+v", status)
	}

	// (a) The app creates a connect session for alice and sends her browser
	// to the sidecar's connect page; she clicks Connect (or Reconnect), the
	// sidecar runs the flow at Slack and shows the new state, and its back
	// link returns her to the app.
	connect := func(state string) {
		t.Helper()
		b := exampletest.NewBrowser()
		code, pageURL, page := b.Get(t, base+"/connect/slack?user=alice")
		if code != http.StatusOK || !strings.Contains(pageURL, "/connect/") || !strings.Contains(page, state) {
			t.Fatalf("the connect page (%d %s) does not say %q:\n%s\nsidecar: %s\napp: %s", code, pageURL, state, page, st.Logs(), logs.String())
		}
		if strings.Contains(pageURL, "/connect/s/") {
			t.Errorf("the session's token stayed in the address bar: %s", pageURL)
		}
		code, _, page = b.ConnectOnPage(t, pageURL, page, "slack")
		if code != http.StatusOK || !strings.Contains(page, `<span class="badge">Connected</span>`) {
			t.Fatalf("after the flow the page (%d) does not say Connected:\n%s\nsidecar: %s", code, page, st.Logs())
		}
		back := exampletest.BackLink(t, page)
		if back != base+"/?user=alice" {
			t.Errorf("back link = %q; want the app's page for alice", back)
		}
		if code, _, page = b.Get(t, back); code != http.StatusOK || !strings.Contains(page, "Slack connected") {
			t.Fatalf("the app after connecting (%d):\n%s", code, page)
		}
	}
	connectionOf := func() *tokenvaultv1.Connection {
		t.Helper()
		var conns []*tokenvaultv1.Connection
		for c, err := range st.Client.ListConnections(context.Background(), &tokenvaultv1.ListConnectionsRequest{Owner: "alice"}) {
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
		if len(conns) != 1 {
			t.Fatalf("alice has %d connections; want 1", len(conns))
		}
		return conns[0]
	}
	connect("Not connected")
	if c := connectionOf(); c.GetAppMetadata()["source"] != "node-slack-notify" {
		t.Errorf("app_metadata = %v; want the session's source", c.GetAppMetadata())
	}

	// (b) The channel picker lists the workspace's channels.
	var chans struct {
		Channels []struct {
			ID, Name string
			IsMember bool
		}
	}
	if code := a.do("GET", "/channels?user=alice", nil, &chans); code != 200 || len(chans.Channels) != 3 ||
		chans.Channels[1].ID != "C0FAKEDEPLOYS" || chans.Channels[1].Name != "deploys" || !chans.Channels[1].IsMember {
		t.Fatalf("GET /channels = %d %+v", code, chans)
	}

	// (c) The alert arrives in the chosen channel.
	post := func(text string) (int, map[string]any) {
		var out map[string]any
		code := a.do("POST", "/alerts", map[string]string{"user": "alice", "channel": "C0FAKEDEPLOYS", "text": text}, &out)
		return code, out
	}
	if code, out := post("Deployed v1.2.3 to production"); code != 200 || out["ok"] != true {
		t.Fatalf("POST /alerts = %d %v\n%s", code, out, logs.String())
	}
	msgs := st.Slack.SlackMessages("C0FAKEDEPLOYS")
	if len(msgs) != 1 || msgs[0].Text != "Deployed v1.2.3 to production" || msgs[0].User != "U0FAKEBOT" {
		t.Fatalf("messages in #deploys = %+v", msgs)
	}
	if code, out := post(strings.Repeat("x", 4001)); code != 400 {
		t.Errorf("POST /alerts with 4001 characters = %d %v; want 400", code, out)
	}

	// (d) The workspace removes the app. The next alert fails with a link
	// to reconnect, and nothing is posted. (The sidecar does not
	// force-refresh a token younger than 2 s.)
	time.Sleep(2100 * time.Millisecond)
	id := connectionOf().GetConnectionId()
	st.RevokeAtSlack(t, id)
	if code, out := post("Deployed v1.2.4"); code != 409 || out["error"] != "slack_needs_reconnect" || out["reconnect"] != "/connect/slack?user=alice" {
		t.Fatalf("POST /alerts after the revocation = %d %v; want 409 and a reconnect link", code, out)
	}
	if n := len(st.Slack.SlackMessages("")); n != 1 {
		t.Errorf("%d messages at Slack; want 1", n)
	}

	// (e) The sidecar's signed connection.needs_reauth webhook reached it.
	for deadline := time.Now().Add(20 * time.Second); ; {
		a.do("GET", "/status?user=alice", nil, &status)
		if status.WebhookSaysReconnect != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no needs_reauth webhook accepted; status %+v\nsidecar: %s\napp: %s", status, st.Logs(), logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if status.Slack != "needs_reauth" {
		t.Errorf("status = %+v; want needs_reauth", status)
	}
	// A forged webhook is refused.
	req, _ := http.NewRequest("POST", base+"/webhooks/tokenvault", strings.NewReader(`{"type":"connection.needs_reauth"}`))
	req.Header.Set("webhook-id", "evt_forged")
	req.Header.Set("webhook-timestamp", fmt.Sprint(time.Now().Unix()))
	req.Header.Set("webhook-signature", "v1,"+base64.StdEncoding.EncodeToString(make([]byte, 32)))
	if resp, err := a.hc.Do(req); err != nil || resp.StatusCode != 401 {
		t.Errorf("forged webhook = %v %v; want 401", resp, err)
	} else {
		resp.Body.Close()
	}

	// Reconnecting on the page brings the alerts back, on the same
	// connection.
	connect("Needs reconnecting")
	if got := connectionOf(); got.GetConnectionId() != id || got.GetStatus() != tokenvaultv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE {
		t.Errorf("after reconnecting: %s %s; want %s active", got.GetConnectionId(), got.GetStatus(), id)
	}
	if code, out := post("Deployed v1.2.4"); code != 200 || out["ok"] != true {
		t.Fatalf("POST /alerts after reconnecting = %d %v", code, out)
	}
	if msgs := st.Slack.SlackMessages("C0FAKEDEPLOYS"); len(msgs) != 2 || msgs[1].Text != "Deployed v1.2.4" {
		t.Errorf("messages in #deploys = %+v", msgs)
	}
}
