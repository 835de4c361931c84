package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/server/connectpage/pagetest"
)

// ScreenshotsEnv set to 1 makes TestConnectPage_RealBrowser write the
// README's screenshots of the page into docs/.
const screenshotsEnv = "TOKENVAULT_SCREENSHOTS"

// ingress is what sits between browsers and the sidecar's public listener:
// a reverse proxy at the public URL. Holding, it answers the OAuth
// callback itself and keeps its URL, as if the browser had stopped there:
// a test replays that URL elsewhere.
type ingress struct {
	*httptest.Server
	hold atomic.Bool
	mu   sync.Mutex
	held string
}

func newIngress(t *testing.T) *ingress {
	in := &ingress{}
	in.Server = httptest.NewServer(nil)
	t.Cleanup(in.Close)
	return in
}

func (in *ingress) to(publicAddr string) {
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: publicAddr})
	in.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if in.hold.Load() && strings.HasPrefix(r.URL.Path, "/oauth/callback/") {
			in.mu.Lock()
			in.held = in.URL + r.URL.RequestURI()
			in.mu.Unlock()
			fmt.Fprint(w, "<!doctype html><title>held</title><p id=held>held</p>")
			return
		}
		proxy.ServeHTTP(w, r)
	})
}

// The connect page in a real browser against a real sidecar (dev mode:
// the sandbox provider; and Acme Calendar, the strict fake on its own
// port): an application creates a session over gRPC; the page lists both;
// Connect goes through the sandbox and back to "Connected as"; a grant made
// dead at the provider shows "Needs reconnecting"; Reconnect keeps the
// connection id; Disconnect revokes at the provider; the popup mode posts
// its result to an opener on another origin; a callback replayed in a
// second browser profile is refused without a token request.
func TestConnectPage_RealBrowser(t *testing.T) {
	b := pagetest.New(t)
	in := newIngress(t)
	app := httptest.NewServer(nil) // the application's own pages: another origin
	defer app.Close()
	fake := providertest.Start(providertest.Options{RedirectURIs: []string{in.URL + "/oauth/callback/acme"}, Scopes: []string{"calendar.read", "calendar.write"}})
	t.Cleanup(fake.Close)

	dir := t.TempDir()
	secret := filepath.Join(dir, "acme.secret")
	if err := os.WriteFile(secret, []byte(providertest.DefaultClientSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	fc := fake.Config()
	conf := fmt.Sprintf(`connect_page:
  app_name: Acme Notes
  theme_color: "#5b3cc4"
  popup_origins: [%q]
providers:
  acme:
    kind: oauth2
    display_name: Acme Calendar
    purpose: Acme Notes adds your meetings to your notes.
    scope_words: {calendar.read: "See your calendar", calendar.write: "Add notes to your events"}
    color: "#0b7285"
    client_id: %q
    client_secret_file: %q
    auth_url: %q
    token_url: %q
    revoke_url: %q
    introspect_url: %q
    scopes: [calendar.read, calendar.write]
    pkce: true
    auth_style: header
`, app.URL, fc.ClientID, secret, fc.AuthURL, fc.TokenURL, fc.RevokeURL, fc.IntrospectURL)
	cfgPath := filepath.Join(dir, "tokenvault.yaml")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	r, logs := startDev(t, "--config", cfgPath, "--public-url", in.URL)
	in.to(r.PublicAddr)
	api := dialTest(t, r.GRPCAddr)
	ops := tvv1.NewTokenVaultServiceClient(dialKey(t, r.GRPCAddr, r.OperatorKey))
	ctx := context.Background()

	s, err := api.CreateConnectSession(ctx, &tvv1.CreateConnectSessionRequest{Owner: "alice", AllowDisconnect: true,
		AppMetadata: map[string]string{"plan": "team"}})
	if err != nil {
		t.Fatalf("CreateConnectSession = %v", err)
	}
	tab, cancel := b.Tab(90 * time.Second)
	defer cancel()
	waitText := func(ctx context.Context, text string) {
		t.Helper()
		// Evaluated again and again: a navigation under way interrupts
		// an evaluation, and the page after it is the one to read.
		expr := fmt.Sprintf(`document.readyState === "complete" && document.body.textContent.includes(%q)`, text)
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr)); err == nil && ok {
				return
			}
		}
		body, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + (document.body ? document.body.textContent : "")`))
		t.Fatalf("the page never said %q:\n%s\nlogs:\n%s", text, body, logs)
	}
	click := func(ctx context.Context, sel string) {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(sel))); err != nil {
			t.Fatalf("click %s: %v", sel, err)
		}
	}
	connection := func(owner, provider string) *tvv1.Connection {
		t.Helper()
		l, err := ops.ListConnections(ctx, &tvv1.ListConnectionsRequest{Owner: owner, Provider: provider})
		if err != nil || len(l.Connections) != 1 {
			t.Fatalf("ListConnections(%s, %s) = %v, %v; want one", owner, provider, l, err)
		}
		return l.Connections[0]
	}

	// The page lists both providers, neither connected.
	if err := chromedp.Do(tab, chromedp.Navigate(s.Url)); err != nil {
		t.Fatal(err)
	}
	waitText(tab, "Acme Calendar")
	waitText(tab, "Sandbox")
	waitText(tab, "See your calendar")
	if n, _ := chromedp.Run(tab, chromedp.Evaluate[int](`document.querySelectorAll(".state-none").length`)); n != 2 {
		t.Errorf("%d providers not connected; want 2", n)
	}
	// Connect the sandbox, then Acme.
	click(tab, `input[name="provider"][value="sandbox"] ~ button`)
	waitText(tab, "Sandbox is connected.")
	waitText(tab, "Connected as")
	click(tab, `input[name="provider"][value="acme"] ~ button`)
	waitText(tab, "Acme Calendar is connected.")
	acme := connection("alice", "acme")
	if acme.AppMetadata["plan"] != "team" {
		t.Errorf("the page's connection has app_metadata %v; want the session's plan=team", acme.AppMetadata)
	}
	// Acme's grant dies at the provider; the sidecar finds out.
	for _, g := range fake.Grants() {
		fake.RevokeGrant(g.ID)
	}
	if v, err := ops.ValidateConnection(ctx, &tvv1.ValidateConnectionRequest{ConnectionId: acme.ConnectionId}); err != nil || v.Live {
		t.Fatalf("ValidateConnection = %v, %v; want not live", v, err)
	}
	if err := chromedp.Do(tab, chromedp.Navigate(in.URL+"/connect/")); err != nil {
		t.Fatal(err)
	}
	waitText(tab, "Needs reconnecting")
	if os.Getenv(screenshotsEnv) == "1" {
		screenshot(t, tab, 1280, 900, "../../docs/connect-page-desktop.png")
		screenshot(t, tab, 360, 780, "../../docs/connect-page-phone.png")
		if err := chromedp.Do(tab, chromedp.EmulateViewport(1280, 900)); err != nil {
			t.Fatal(err)
		}
	}
	// Reconnect keeps the connection's id.
	click(tab, `input[name="connection_id"][value="`+acme.ConnectionId+`"] ~ button.primary`)
	waitText(tab, "Acme Calendar is reconnected.")
	if c := connection("alice", "acme"); c.ConnectionId != acme.ConnectionId || c.Status != tvv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE {
		t.Errorf("after Reconnect: %v; want %s active again", c, acme.ConnectionId)
	}
	// Disconnect revokes at the provider.
	revokes := fake.Stats().Revoke
	click(tab, `form[action="/connect/disconnect"] input[value="`+acme.ConnectionId+`"] ~ button`)
	waitText(tab, "Acme Calendar is disconnected.")
	if c := connection("alice", "acme"); c.Status != tvv1.ConnectionStatus_CONNECTION_STATUS_REVOKED || fake.Stats().Revoke != revokes+1 {
		t.Errorf("after Disconnect: %v, %d revocations at the provider; want revoked, one more", c, fake.Stats().Revoke-revokes)
	}

	// Popup mode: the application's page on its own origin opens the page
	// with embed.js and gets the result by postMessage.
	s2, err := api.CreateConnectSession(ctx, &tvv1.CreateConnectSessionRequest{Owner: "bob", Providers: []string{"sandbox"}})
	if err != nil {
		t.Fatal(err)
	}
	app.Config.Handler = pagetest.OpenerPage(in.URL, s2.Url)
	if err := chromedp.Do(tab, chromedp.Navigate(app.URL), chromedp.WaitVisible(chromedp.ID("go")), chromedp.Click(chromedp.ID("go"))); err != nil {
		t.Fatal(err)
	}
	id, err := b.WaitWindow(tab, "/connect/")
	if err != nil {
		t.Fatalf("no popup opened: %v", err)
	}
	popup, cancelPopup := b.Attach(id)
	defer cancelPopup()
	pctx, cancelP := context.WithTimeout(popup, 30*time.Second)
	defer cancelP()
	if err := chromedp.Do(pctx, chromedp.WaitVisible(chromedp.CSS(`input[name="provider"][value="sandbox"] ~ button`))); err != nil {
		t.Fatal(err)
	}
	click(pctx, `input[name="provider"][value="sandbox"] ~ button`)
	out, err := chromedp.Run(tab, chromedp.Poll[string](`document.getElementById("out").textContent`, chromedp.WithPollingTimeout(20*time.Second)))
	if err != nil {
		t.Fatalf("the opener got no result: %v (problems %v)", err, b.Problems())
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("opener's result %q: %v", out, err)
	}
	bobs := connection("bob", "sandbox")
	if got["type"] != "tokenvault.connect" || got["provider"] != "sandbox" || got["status"] != "connected" || got["connectionId"] != bobs.ConnectionId {
		t.Errorf("opener got %s; want sandbox connected as %s", out, bobs.ConnectionId)
	}

	// A callback replayed in a second browser profile is refused, and no
	// token request reaches the provider; the flow's own browser completes it.
	sc, err := api.StartConnect(ctx, &tvv1.StartConnectRequest{Owner: "carol", Provider: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	in.hold.Store(true)
	if err := chromedp.Do(tab, chromedp.Navigate(sc.AuthorizationUrl), chromedp.WaitVisible(chromedp.ID("held"))); err != nil {
		t.Fatal(err)
	}
	in.hold.Store(false)
	in.mu.Lock()
	held := in.held
	in.mu.Unlock()
	codes := fake.Stats().Token["authorization_code"]
	other := pagetest.New(t)
	otab, cancelO := other.Tab(30 * time.Second)
	defer cancelO()
	if err := chromedp.Do(otab, chromedp.Navigate(held)); err != nil {
		t.Fatal(err)
	}
	waitText(otab, "started in another browser")
	if n := fake.Stats().Token["authorization_code"]; n != codes {
		t.Fatalf("the replayed callback made %d token requests; want none", n-codes)
	}
	if err := chromedp.Do(tab, chromedp.Navigate(held)); err != nil {
		t.Fatal(err)
	}
	waitText(tab, "Connected")
	if c := connection("carol", "acme"); c.Status != tvv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE {
		t.Errorf("carol's connection = %v; want active", c)
	}
	// What the pages reported, but for the test's own pages' missing
	// favicon and the refused callback's 403, which this test asked for.
	var problems []string
	for _, p := range append(b.Problems(), other.Problems()...) {
		if !strings.Contains(p, "/favicon.ico") && !(strings.Contains(p, "status of 403") && strings.Contains(p, "/oauth/callback/")) {
			problems = append(problems, p)
		}
	}
	if len(problems) > 0 {
		t.Errorf("the pages reported problems:\n%s", strings.Join(problems, "\n"))
	}
}

// screenshot writes the whole page at width w as a PNG.
func screenshot(t *testing.T, ctx context.Context, w, h int64, path string) {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(w, h), chromedp.Sleep(200*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
}
