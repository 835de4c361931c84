// Package exampletest runs what the examples need to be tested end to end:
// the Slack fake from providertest and a real tokenvault sidecar (the
// binary, `serve --dev`) configured with a slack provider that points at
// it, on loopback ports. It is for tests only.
package exampletest

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/client"
	tokenvaultv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
)

// Webhook is an endpoint the sidecar delivers events to.
type Webhook struct {
	URL, Secret string
	EventTypes  []string
}

// Options configure Start.
type Options struct {
	// Webhooks, if any, are configured with allow_private (they are on
	// loopback).
	Webhooks []Webhook
	// ReturnTo is the allowlist of connect flows' return_to URLs.
	ReturnTo []string
}

// Stack is a running Slack fake and a sidecar using it.
type Stack struct {
	Slack *providertest.Service
	// GRPCAddr is the sidecar's gRPC address, PublicURL its callback
	// listener's base URL.
	GRPCAddr, PublicURL string
	// AppKey and OperatorKey are dev mode's API keys.
	AppKey, OperatorKey string
	// Client is a Go client with the application key.
	Client *client.Client
	logs   *SyncBuffer
}

// Logs returns what the sidecar logged so far.
func (s *Stack) Logs() string { return s.logs.String() }

// Binary returns a tokenvault binary: $TOKENVAULT_BIN (the Makefile builds
// one), or one built into a temp dir of t.
func Binary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("TOKENVAULT_BIN"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..", "..")
	out := filepath.Join(t.TempDir(), "tokenvault")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/tokenvault")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/tokenvault: %v\n%s", err, b)
	}
	return out
}

// FreePort returns a loopback port that was free a moment ago, for a
// server whose address must be known before it starts.
func FreePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start starts the Slack fake and the sidecar; both stop when t ends.
func Start(t *testing.T, opts Options) *Stack {
	t.Helper()
	bin := Binary(t)
	dir := t.TempDir()
	// The fake must know the sidecar's redirect URI before either starts.
	httpAddr := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	slack := providertest.StartSlack(providertest.ServiceOptions{RedirectURI: "http://" + httpAddr + "/oauth/callback/slack"})
	t.Cleanup(slack.Close)

	var cfg strings.Builder
	po := slack.ProviderOptions()
	fmt.Fprintf(&cfg, "providers:\n  slack:\n    kind: slack\n    client_id: %s\n    client_secret_env: SLACK_CLIENT_SECRET\n"+
		"    scopes: [channels:read, chat:write]\n    options: {auth_base: %q, api_base: %q}\n",
		providertest.DefaultClientID, po["auth_base"], po["api_base"])
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "SLACK_CLIENT_SECRET=" + providertest.DefaultClientSecret}
	if len(opts.Webhooks) > 0 {
		cfg.WriteString("webhooks:\n")
		for i, w := range opts.Webhooks {
			types, _ := json.Marshal(w.EventTypes)
			fmt.Fprintf(&cfg, "  - name: hook%d\n    url: %q\n    secret_envs: [WEBHOOK_SECRET_%d]\n    allow_private: true\n    event_types: %s\n", i, w.URL, i, types)
			env = append(env, fmt.Sprintf("WEBHOOK_SECRET_%d=%s", i, w.Secret))
		}
	}
	if len(opts.ReturnTo) > 0 {
		rt, _ := json.Marshal(opts.ReturnTo)
		fmt.Fprintf(&cfg, "return_to: %s\n", rt)
	}
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir, readyFile := filepath.Join(dir, "data"), filepath.Join(dir, "ready.json")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "serve", "--dev", "--config", cfgPath, "--data-dir", dataDir,
		"--grpc-addr", "127.0.0.1:0", "--public-addr", httpAddr, "--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
		"--ready-file", readyFile, "--log-level", "warn")
	cmd.Env = env
	logs := &SyncBuffer{}
	cmd.Stderr = logs
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 15 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cancel(); <-exited })

	s := &Stack{Slack: slack, logs: logs}
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(readyFile)
		if err == nil && len(b) > 0 {
			var r struct {
				GRPCAddr  string `json:"grpc_addr"`
				PublicURL string `json:"public_url"`
			}
			if err := json.Unmarshal(b, &r); err != nil {
				t.Fatal(err)
			}
			s.GRPCAddr, s.PublicURL = r.GRPCAddr, r.PublicURL
			break
		}
		select {
		case <-exited:
			t.Fatalf("tokenvault serve exited:\n%s", logs)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("tokenvault serve did not start in 30s:\n%s", logs)
		}
	}
	for _, k := range []struct {
		dst  *string
		file string
	}{{&s.AppKey, "application.key"}, {&s.OperatorKey, "operator.key"}} {
		b, err := os.ReadFile(filepath.Join(dataDir, k.file))
		if err != nil {
			t.Fatal(err)
		}
		*k.dst = strings.TrimSpace(string(b))
	}
	c, err := client.Dial(s.GRPCAddr, client.WithAPIKey(s.AppKey))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s.Client = c
	return s
}

// Follow fetches url as a browser would, following redirects, and returns
// the final response's status, URL and body.
func Follow(t *testing.T, url string) (int, string, string) {
	t.Helper()
	return NewBrowser().Get(t, url) // the start URL binds the flow to this browser
}

// A Browser is a cookie-keeping HTTP client, as a user's browser is to the
// sidecar: the connect page's session and every flow's binding live in its
// cookies.
type Browser struct{ *http.Client }

// NewBrowser returns a browser with an empty cookie jar.
func NewBrowser() Browser {
	jar, _ := cookiejar.New(nil)
	return Browser{&http.Client{Timeout: 20 * time.Second, Jar: jar}}
}

// Get fetches url, following redirects, and returns the final status, URL
// and body.
func (b Browser) Get(t *testing.T, url string) (int, string, string) {
	t.Helper()
	resp, err := b.Client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return readPage(t, resp)
}

var (
	connectFormRE = regexp.MustCompile(`(?s)<form method="post" action="/connect/connect"[^>]*>(.*?)</form>`)
	hiddenRE      = regexp.MustCompile(`<input type="hidden" name="([^"]+)" value="([^"]*)">`)
	backRE        = regexp.MustCompile(`<a class="back" href="([^"]+)">`)
)

// ConnectOnPage submits the connect page's first Connect or Reconnect form
// for provider, as a user clicking it does, and follows the flow through
// the provider and back to the page. page is the page's URL and body.
func (b Browser) ConnectOnPage(t *testing.T, pageURL, body, provider string) (int, string, string) {
	t.Helper()
	for _, m := range connectFormRE.FindAllStringSubmatch(body, -1) {
		form := url.Values{}
		for _, in := range hiddenRE.FindAllStringSubmatch(m[1], -1) {
			form.Set(in[1], html.UnescapeString(in[2]))
		}
		if form.Get("provider") != provider {
			continue
		}
		u, err := url.Parse(pageURL)
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(http.MethodPost, u.Scheme+"://"+u.Host+"/connect/connect", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", u.Scheme+"://"+u.Host)
		req.Header.Set("Sec-Fetch-Site", "same-origin")
		resp, err := b.Do(req)
		if err != nil {
			t.Fatalf("POST /connect/connect: %v", err)
		}
		return readPage(t, resp)
	}
	t.Fatalf("no Connect or Reconnect form for %s on the page:\n%s", provider, body)
	return 0, "", ""
}

// BackLink returns the href of the page's "Back to ..." link.
func BackLink(t *testing.T, body string) string {
	t.Helper()
	m := backRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no back link on the page:\n%s", body)
	}
	return html.UnescapeString(m[1])
}

func readPage(t *testing.T, resp *http.Response) (int, string, string) {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Request.URL.String(), string(b)
}

// ConnectSlack runs owner's Slack connect flow through the sidecar and the
// fake and returns the connection id.
func (s *Stack) ConnectSlack(t *testing.T, owner string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	u, err := s.Client.StartConnect(ctx, &tokenvaultv1.StartConnectRequest{Owner: owner, Provider: "slack"})
	if err != nil {
		t.Fatalf("StartConnect(%s): %v", owner, err)
	}
	if status, _, body := Follow(t, u); status != http.StatusOK {
		t.Fatalf("connect flow of %s ended with %d: %s\n%s", owner, status, body, s.Logs())
	}
	for c, err := range s.Client.ListConnections(ctx, &tokenvaultv1.ListConnectionsRequest{Owner: owner, Provider: "slack"}) {
		if err != nil {
			t.Fatal(err)
		}
		return c.GetConnectionId()
	}
	t.Fatalf("no Slack connection of %s after the flow", owner)
	return ""
}

// RevokeAtSlack revokes the grant behind the connection's current token at
// the fake, as a user removing the app from the workspace would; the
// sidecar finds out on its next refresh.
func (s *Stack) RevokeAtSlack(t *testing.T, connectionID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tok, err := s.Client.AccessToken(ctx, connectionID)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.Slack.URL()+"/api/auth.revoke", nil)
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	resp, err := s.Slack.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if s.Slack.IsActive(tok.AccessToken) {
		t.Fatal("the token is still active at the fake after auth.revoke")
	}
}

// SyncBuffer collects a child process's output; it may be read while the
// process writes.
type SyncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
