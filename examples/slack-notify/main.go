// Command slack-notify posts a message to a Slack channel as an end user's
// Slack connection, with a token it gets from the tokenvault sidecar beside
// it. It never sees a refresh token and holds no OAuth code of its own.
//
// Usage:
//
//	slack-notify -owner user-17 -channel C0123456 -text "deploy finished"
//	slack-notify -connection conn_123 -channel C0123456 -text "deploy finished"
//
// -owner names the end user (your application's user id); the sidecar finds
// their connection to -provider (default "slack"), so the application keeps
// no connection id.
//
// The sidecar's API key, if it wants one, is read from TOKENVAULT_API_KEY
// (secrets do not belong in flags, which show in ps). Exit status: 0 posted,
// 1 failed, 2 bad usage, 3 the end user must connect Slack (again).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/tokenvault/tokenvault/client"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("slack-notify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:7070", "tokenvault sidecar gRPC `address` (host:port or unix:///path)")
	connection := fs.String("connection", "", "tokenvault connection `id` of the Slack install")
	owner := fs.String("owner", "", "the end user's `id` in your application, instead of -connection")
	provider := fs.String("provider", "slack", "the sidecar's `name` for Slack, with -owner")
	credential := fs.String("credential", "", `which token of the connection: "" the bot token, "user" the user token`)
	channel := fs.String("channel", "", "Slack channel `id` to post to (required)")
	text := fs.String("text", "", "message text (required)")
	slackAPI := fs.String("slack-api", "https://slack.com/api", "Slack Web API base `URL`")
	timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if (*connection == "") == (*owner == "") || *channel == "" || *text == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "slack-notify: -connection or -owner (one of them), -channel and -text are required")
		fs.Usage()
		return 2
	}

	var opts []client.Option
	if key := getenv("TOKENVAULT_API_KEY"); key != "" {
		opts = append(opts, client.WithAPIKey(key))
	}
	c, err := client.Dial(*addr, opts...)
	if err != nil {
		fmt.Fprintf(stderr, "slack-notify: %v\n", err)
		return 1
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	tokOpts := []client.TokenOption{client.Credential(*credential)}
	who := *connection
	if *owner != "" {
		tokOpts = append(tokOpts, client.ByOwner(*owner, *provider))
		who = fmt.Sprintf("of %s at %s", *owner, *provider)
	}
	// The client sets the Authorization header from the sidecar on every
	// request, and after an HTTP 401 refreshes and retries once.
	hc := c.HTTPClient(*connection, tokOpts...)
	msg := message{Channel: *channel, Text: *text}
	ts, err := postMessage(ctx, hc, *slackAPI, msg)

	// Slack reports a rejected token as HTTP 200 with ok:false, which the
	// client's 401 retry cannot see. Ask the sidecar for a forced refresh:
	// if Slack rejects the grant itself the sidecar says so
	// (IsReauthRequired below); otherwise try once more with the new token.
	// The first post failed, so nothing is posted twice.
	var se *slackError
	if errors.As(err, &se) && se.authFailed() {
		if _, err = c.AccessToken(ctx, *connection, append(tokOpts, client.ForceRefresh())...); err == nil {
			ts, err = postMessage(ctx, hc, *slackAPI, msg)
		}
	}

	switch {
	case err == nil:
		fmt.Fprintf(stdout, "posted to %s (ts %s)\n", *channel, ts)
		return 0
	case client.IsReauthRequired(err):
		fmt.Fprintf(stderr, "slack-notify: Slack no longer accepts connection %s: the user revoked the app or the grant expired.\n"+
			"Send them through your app's \"Connect Slack\" flow (tokenvault StartConnect) and try again.\n", who)
		return 3
	case client.IsNotConnected(err):
		fmt.Fprintf(stderr, "slack-notify: connection %s does not exist or was revoked; the user must connect Slack first.\n", who)
		return 3
	case errors.As(err, &se) && se.authFailed():
		fmt.Fprintf(stderr, "slack-notify: Slack rejected the token even after a refresh (%s); the user probably must connect Slack again.\n", se.Code)
		return 3
	case client.IsUnavailable(err):
		fmt.Fprintf(stderr, "slack-notify: Slack or the tokenvault sidecar is unavailable, retry later: %v\n", err)
		return 1
	default:
		fmt.Fprintf(stderr, "slack-notify: %v\n", err)
		return 1
	}
}

// message is the chat.postMessage request body.
type message struct {
	Channel string `json:"channel"`
	Text    string `json:"text"`
}

// slackError is Slack's ok:false answer; Code is its "error" field.
type slackError struct{ Code string }

func (e *slackError) Error() string { return "slack: chat.postMessage: " + e.Code }

// authFailed reports whether Slack rejected the token rather than the request.
func (e *slackError) authFailed() bool {
	switch e.Code {
	case "invalid_auth", "token_expired", "token_revoked", "account_inactive":
		return true
	}
	return false
}

// postMessage calls chat.postMessage and returns the message's ts.
func postMessage(ctx context.Context, hc *http.Client, base string, msg message) (string, error) {
	body, err := json.Marshal(msg)
	if err != nil {
		return "", err
	}
	// A *bytes.Reader body lets http.NewRequest set GetBody, so the client
	// can replay the request after a 401.
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		strings.TrimSuffix(base, "/")+"/chat.postMessage", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	// Without the charset Slack adds a "missing_charset" warning.
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		if ra := resp.Header.Get("Retry-After"); ra != "" {
			return "", fmt.Errorf("slack: chat.postMessage: %s (retry after %ss)", resp.Status, ra)
		}
		return "", fmt.Errorf("slack: chat.postMessage: %s", resp.Status)
	}
	var out struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
		TS    string `json:"ts"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out); err != nil {
		return "", fmt.Errorf("slack: chat.postMessage: decoding response: %w", err)
	}
	if !out.OK {
		return "", &slackError{Code: out.Error}
	}
	return out.TS, nil
}
