package connectpage

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// fakeBackend is a hand-written Backend with counters.
type fakeBackend struct {
	mu       sync.Mutex
	sessions map[string]Session // by token
	conns    []Connection       // every owner's
	owners   map[string]string  // connection id -> owner
	flows    map[string]string  // flow -> binding ("" unbound)
	connects []ConnectRequest
	begins   int
	revoked  []string
	authURL  string // where Connect sends the browser; default a provider's
}

func newFake() *fakeBackend {
	return &fakeBackend{sessions: map[string]Session{}, owners: map[string]string{}, flows: map[string]string{}}
}

func (f *fakeBackend) Session(_ context.Context, tok string) (Session, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sessions[tok]
	if !ok || time.Now().After(s.Expires) {
		return Session{}, ErrSessionInvalid
	}
	return s, nil
}

func (f *fakeBackend) Connections(_ context.Context, s Session) ([]Connection, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Connection
	for _, c := range f.conns {
		if f.owners[c.ID] == s.Owner && !slices.Contains(f.revoked, c.ID) {
			out = append(out, c)
		}
	}
	return out, nil
}

func (f *fakeBackend) Connect(_ context.Context, s Session, r ConnectRequest) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.connects = append(f.connects, r)
	if f.authURL != "" {
		return f.authURL, nil
	}
	return "https://auth.example.com/authorize?state=xyz&owner=" + url.QueryEscape(s.Owner), nil
}

func (f *fakeBackend) Begin(_ context.Context, flow, binding string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.begins++
	b, ok := f.flows[flow]
	if !ok || b != "" {
		return "", ErrFlowInvalid
	}
	f.flows[flow] = binding
	return "https://auth.example.com/authorize?state=" + flow, nil
}

func (f *fakeBackend) Disconnect(_ context.Context, s Session, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.owners[id] != s.Owner {
		return ErrNotAllowed
	}
	f.revoked = append(f.revoked, id)
	return nil
}

var since = time.Date(2026, 12, 4, 17, 20, 0, 0, time.UTC)

func testConfig(public string) Config {
	return Config{
		PublicURL: public, AppName: "Acme Notes", ThemeColor: "#2456c7",
		PopupOrigins: []string{"http://app.example.com"},
		FormOrigins:  []string{"https://auth.example.com"},
		Providers: []Provider{
			{Name: "slack", DisplayName: "Slack", Purpose: "Post your reminders to a channel.",
				Scopes: []Scope{{"chat:write", "Send messages as you"}}},
			{Name: "github", DisplayName: "GitHub", Scopes: []Scope{{"repo", "Read and write your repositories"}}},
			{Name: "linear", DisplayName: "Linear"},
		},
	}
}

type rig struct {
	t   *testing.T
	f   *fakeBackend
	h   *Handler
	srv *httptest.Server
	c   *http.Client // keeps cookies, does not follow redirects
}

func newRig(t *testing.T, cfg Config) *rig {
	t.Helper()
	f := newFake()
	srv := httptest.NewUnstartedServer(nil)
	if cfg.PublicURL == "" {
		cfg.PublicURL = "http://" + srv.Listener.Addr().String()
	}
	h, err := New(cfg, f)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Register(mux)
	srv.Config.Handler = mux
	srv.Start()
	t.Cleanup(srv.Close)
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	f.sessions["tok-alice"] = Session{ID: "s-alice", Owner: "alice", ReturnTo: "http://app.example.com/settings",
		AllowDisconnect: true, Expires: time.Now().Add(time.Hour)}
	f.sessions["tok-bob"] = Session{ID: "s-bob", Owner: "bob", Providers: []string{"github"}, Expires: time.Now().Add(time.Hour)}
	f.conns = []Connection{
		{ID: "conn_a1", Provider: "slack", Account: "alice@acme.test", Since: since},
		{ID: "conn_a2", Provider: "github", Account: "alice-gh", NeedsReauth: true, Reason: "invalid_grant", Since: since},
		{ID: "conn_b1", Provider: "slack", Account: "bob@acme.test", Since: since},
	}
	f.owners = map[string]string{"conn_a1": "alice", "conn_a2": "alice", "conn_b1": "bob"}
	return &rig{t: t, f: f, h: h, srv: srv, c: c}
}

func (r *rig) do(method, path string, form url.Values, hdr ...string) (*http.Response, string) {
	r.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, r.srv.URL+path, body)
	if err != nil {
		r.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := r.c.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// open opens the session link for tok and returns the page's HTML.
func (r *rig) open(tok string) string {
	r.t.Helper()
	resp, _ := r.do("GET", "/connect/s/"+tok, nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/connect/" {
		r.t.Fatalf("GET /connect/s/...: %d to %q; want 303 to /connect/", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, body := r.do("GET", "/connect/", nil)
	if resp.StatusCode != http.StatusOK {
		r.t.Fatalf("GET /connect/ = %d; want 200\n%s", resp.StatusCode, body)
	}
	return body
}

var csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRe.FindStringSubmatch(page)
	if m == nil {
		t.Fatal("no CSRF token on the page")
	}
	return m[1]
}

func TestPage_ShowsEachProviderState(t *testing.T) {
	r := newRig(t, testConfig(""))
	page := r.open("tok-alice")
	for _, want := range []string{
		"Acme Notes", "Slack", "Post your reminders to a channel.", "Send messages as you",
		`Connected</span> as <span class="account">alice@acme.test</span>`,
		`<time datetime="2026-12-04T17:20:00Z">4 Dec 2026, 17:20 UTC</time>`,
		"Needs reconnecting", "The service no longer accepts it", "Reconnect<span class=\"vh\"> GitHub</span>",
		"Not connected", "Connect<span class=\"vh\"> Linear</span>",
		"Disconnect<span class=\"vh\"> Slack</span>",
		`href="http://app.example.com/settings"`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	for _, leak := range []string{"bob@acme.test", "conn_b1", "tok-alice"} {
		if strings.Contains(page, leak) {
			t.Errorf("page shows %q", leak)
		}
	}
}

func TestPage_SessionSubsetAndNoDisconnect(t *testing.T) {
	r := newRig(t, testConfig(""))
	page := r.open("tok-bob")
	if strings.Contains(page, "Slack") || strings.Contains(page, "Linear") || !strings.Contains(page, "GitHub") {
		t.Errorf("bob's page shows providers outside the session's subset:\n%s", page)
	}
	if strings.Contains(page, "Disconnect") {
		t.Error("page offers Disconnect to a session that does not allow it")
	}
	// Disconnecting anyway is refused, and nothing is revoked.
	resp, _ := r.do("POST", "/connect/disconnect", url.Values{"csrf": {csrfOf(t, page)}, "connection_id": {"conn_b1"}})
	if resp.StatusCode != http.StatusForbidden || len(r.f.revoked) != 0 {
		t.Errorf("disconnect without allow_disconnect = %d, revoked %v; want 403, none", resp.StatusCode, r.f.revoked)
	}
	// A provider outside the subset cannot be connected.
	resp, _ = r.do("POST", "/connect/connect", url.Values{"csrf": {csrfOf(t, page)}, "provider": {"slack"}})
	if resp.StatusCode != http.StatusBadRequest || len(r.f.connects) != 0 {
		t.Errorf("connect outside subset = %d, %d flows; want 400, none", resp.StatusCode, len(r.f.connects))
	}
}

func TestPage_BadSessions(t *testing.T) {
	r := newRig(t, testConfig(""))
	r.f.sessions["tok-old"] = Session{ID: "s-old", Owner: "alice", Expires: time.Now().Add(-time.Second)}
	for _, path := range []string{"/connect/s/tok-old", "/connect/s/forged", "/connect/"} {
		resp, body := r.do("GET", path, nil)
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "This link has expired") {
			t.Errorf("GET %s = %d; want 401 with the expired page", path, resp.StatusCode)
		}
		if strings.Contains(body, "alice") {
			t.Errorf("GET %s shows the owner", path)
		}
	}
}

func TestPage_HeadersOnEveryResponse(t *testing.T) {
	r := newRig(t, testConfig(""))
	resp, _ := r.do("GET", "/connect/s/tok-alice", nil)
	responses := []*http.Response{resp}
	resp, page := r.do("GET", "/connect/", nil)
	responses = append(responses, resp)
	resp, _ = r.do("POST", "/connect/connect", url.Values{"csrf": {csrfOf(t, page)}, "provider": {"linear"}})
	responses = append(responses, resp)
	resp, _ = r.do("GET", "/connect/nowhere", nil)
	responses = append(responses, resp)
	for _, resp := range responses {
		h := resp.Header
		what := resp.Request.Method + " " + resp.Request.URL.Path
		for k, want := range map[string]string{
			"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
			"Cache-Control": "no-store", "X-Frame-Options": "DENY",
		} {
			if got := h.Get(k); got != want {
				t.Errorf("%s: %s = %q; want %q", what, k, got, want)
			}
		}
		csp := h.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'self' https://auth.example.com"} {
			if !strings.Contains(csp, want) {
				t.Errorf("%s: CSP %q lacks %q", what, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "*") {
			t.Errorf("%s: CSP %q is not strict", what, csp)
		}
	}
	// The page's script and style carry the header's nonce.
	csp := responses[1].Header.Get("Content-Security-Policy")
	m := regexp.MustCompile(`script-src 'nonce-([^']+)'`).FindStringSubmatch(csp)
	if m == nil || !strings.Contains(page, `<script nonce="`+m[1]+`"`) || !strings.Contains(page, `<style nonce="`+m[1]+`"`) {
		t.Errorf("page's script/style nonce does not match CSP %q", csp)
	}
}

func TestPage_FrameAncestorsFromConfig(t *testing.T) {
	cfg := testConfig("")
	cfg.FrameAncestors = []string{"https://app.example.com"}
	r := newRig(t, cfg)
	resp, _ := r.do("GET", "/connect/", nil)
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors https://app.example.com;") {
		t.Errorf("CSP %q; want frame-ancestors https://app.example.com", csp)
	}
	if xfo := resp.Header.Get("X-Frame-Options"); xfo != "" {
		t.Errorf("X-Frame-Options = %q with frame ancestors configured; want none", xfo)
	}
	for _, bad := range []string{"*", "https://app.example.com/path", "app.example.com", "https://*.example.com"} {
		cfg.FrameAncestors = []string{bad}
		if _, err := New(cfg, newFake()); err == nil {
			t.Errorf("New with frame ancestor %q succeeded; want an error", bad)
		}
	}
}

func TestPage_CookiesHTTPS(t *testing.T) {
	f := newFake()
	f.sessions["tok"] = Session{ID: "s", Owner: "alice", Expires: time.Now().Add(30 * time.Minute)}
	h, err := New(testConfig("https://connect.example.com"), f)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Register(mux)
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, httptest.NewRequest("GET", "https://connect.example.com/connect/s/tok", nil))
	cs := w.Result().Cookies()
	if len(cs) != 1 {
		t.Fatalf("cookies = %v; want 1", cs)
	}
	c := cs[0]
	if c.Name != "__Host-tv_session" || !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" || c.Domain != "" {
		t.Errorf("session cookie = %+v; want __Host-, Secure, HttpOnly, SameSite=Lax, Path=/, no Domain", c)
	}
	if c.MaxAge <= 0 || c.MaxAge > 1800 {
		t.Errorf("session cookie Max-Age = %d; want the session's remaining life", c.MaxAge)
	}
	if loc := w.Result().Header.Get("Location"); strings.Contains(loc, "tok") {
		t.Errorf("redirect %q keeps the token in the URL", loc)
	}
}

func TestPage_ConnectBindsBrowser(t *testing.T) {
	r := newRig(t, testConfig(""))
	page := r.open("tok-alice")
	resp, _ := r.do("POST", "/connect/connect", url.Values{"csrf": {csrfOf(t, page)}, "provider": {"linear"}})
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "https://auth.example.com/") {
		t.Fatalf("POST /connect/connect = %d to %q; want 303 to the provider", resp.StatusCode, resp.Header.Get("Location"))
	}
	var secret string
	for _, c := range resp.Cookies() {
		if c.Name == "tv_browser" {
			secret = c.Value
			if !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Secure {
				t.Errorf("browser cookie over http = %+v; want HttpOnly, Lax, not Secure", c)
			}
		}
	}
	if secret == "" || len(r.f.connects) != 1 || r.f.connects[0].Binding != BindingHash(secret) {
		t.Fatalf("flow binding = %+v; want the hash of the cookie %q", r.f.connects, secret)
	}
	if got := r.f.connects[0].ReturnTo; got != r.srv.URL+"/connect/" {
		t.Errorf("flow returns to %q; want the page", got)
	}
	// Reconnect: the second flow reuses the browser's secret and names the
	// connection.
	resp, _ = r.do("POST", "/connect/connect", url.Values{"csrf": {csrfOf(t, page)}, "provider": {"github"}, "connection_id": {"conn_a2"}})
	if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 0 {
		t.Errorf("second connect = %d, cookies %v; want 303, none set", resp.StatusCode, resp.Cookies())
	}
	if got := r.f.connects[1]; got.Binding != BindingHash(secret) || got.ConnectionID != "conn_a2" {
		t.Errorf("reconnect request = %+v; want the same binding and conn_a2", got)
	}
}

func TestPage_StateChangesNeedCSRFAndSameOrigin(t *testing.T) {
	r := newRig(t, testConfig(""))
	page := r.open("tok-alice")
	good := csrfOf(t, page)
	other := csrfToken("tok-bob")
	for _, tc := range []struct {
		name string
		path string
		form url.Values
		hdr  []string
	}{
		{"no token", "/connect/connect", url.Values{"provider": {"linear"}}, nil},
		{"another session's token", "/connect/connect", url.Values{"provider": {"linear"}, "csrf": {other}}, nil},
		{"cross-origin", "/connect/connect", url.Values{"provider": {"linear"}, "csrf": {good}}, []string{"Origin", "https://evil.example"}},
		{"disconnect, no token", "/connect/disconnect", url.Values{"connection_id": {"conn_a1"}}, nil},
		{"disconnect, cross-site", "/connect/disconnect", url.Values{"connection_id": {"conn_a1"}, "csrf": {good}}, []string{"Sec-Fetch-Site", "cross-site"}},
		{"same-site but another origin", "/connect/connect", url.Values{"provider": {"linear"}, "csrf": {good}}, []string{"Sec-Fetch-Site", "same-site", "Origin", "null"}},
	} {
		resp, _ := r.do("POST", tc.path, tc.form, tc.hdr...)
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: POST %s = %d; want 403", tc.name, tc.path, resp.StatusCode)
		}
	}
	if len(r.f.connects) != 0 || len(r.f.revoked) != 0 {
		t.Errorf("refused requests reached the vault: %d flows, revoked %v", len(r.f.connects), r.f.revoked)
	}
	// A GET cannot change anything.
	before := len(r.f.revoked)
	if resp, _ := r.do("GET", "/connect/disconnect?connection_id=conn_a1&csrf="+good, nil); resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusMethodNotAllowed && resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /connect/disconnect = %d", resp.StatusCode)
	}
	if len(r.f.revoked) != before {
		t.Error("a GET revoked a connection")
	}
}

func TestPage_DisconnectOnlyOwnConnections(t *testing.T) {
	r := newRig(t, testConfig(""))
	page := r.open("tok-alice")
	resp, _ := r.do("POST", "/connect/disconnect", url.Values{"csrf": {csrfOf(t, page)}, "connection_id": {"conn_b1"}})
	if resp.StatusCode != http.StatusNotFound || len(r.f.revoked) != 0 {
		t.Errorf("disconnect of bob's connection = %d, revoked %v; want 404, none", resp.StatusCode, r.f.revoked)
	}
	resp, _ = r.do("POST", "/connect/disconnect", url.Values{"csrf": {csrfOf(t, page)}, "connection_id": {"conn_a1"}})
	if resp.StatusCode != http.StatusSeeOther || !slices.Equal(r.f.revoked, []string{"conn_a1"}) {
		t.Fatalf("disconnect = %d, revoked %v; want 303, conn_a1", resp.StatusCode, r.f.revoked)
	}
	_, page = r.do("GET", resp.Header.Get("Location"), nil)
	if !strings.Contains(page, "Slack is disconnected.") || !strings.Contains(page, "Connect<span class=\"vh\"> Slack</span>") {
		t.Errorf("page after disconnect lacks the banner or the Connect button")
	}
}

func TestStart_BindsOnceAndHEADDoesNothing(t *testing.T) {
	r := newRig(t, testConfig(""))
	r.f.flows["flow1"] = ""
	resp, _ := r.do("HEAD", "/connect/start?flow=flow1", nil)
	if resp.StatusCode != http.StatusMethodNotAllowed || r.f.begins != 0 {
		t.Errorf("HEAD start = %d, %d begins; want 405, none", resp.StatusCode, r.f.begins)
	}
	resp, _ = r.do("GET", "/connect/start?flow=flow1", nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "https://auth.example.com/authorize?state=flow1" {
		t.Fatalf("GET start = %d to %q; want 303 to the provider", resp.StatusCode, resp.Header.Get("Location"))
	}
	cs := resp.Cookies()
	if len(cs) != 1 || r.f.flows["flow1"] != BindingHash(cs[0].Value) {
		t.Errorf("flow bound to %q; want the hash of the cookie set (%v)", r.f.flows["flow1"], cs)
	}
	resp, body := r.do("GET", "/connect/start?flow=flow1", nil)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "no longer valid") {
		t.Errorf("second start = %d; want 400 with a clear page", resp.StatusCode)
	}
}

func TestPage_RateLimits(t *testing.T) {
	cfg := testConfig("")
	cfg.Limits = Limits{PerAddress: rate.Every(time.Hour), AddressBurst: 5, PerSession: rate.Every(time.Hour), SessionBurst: 2}
	r := newRig(t, cfg)
	page := r.open("tok-alice") // 1 of the address's 5
	codes := []int{}
	for range 3 {
		resp, _ := r.do("POST", "/connect/connect", url.Values{"csrf": {csrfOf(t, page)}, "provider": {"linear"}})
		codes = append(codes, resp.StatusCode)
	}
	if !slices.Equal(codes, []int{303, 303, 429}) {
		t.Errorf("connects = %v; want the session's burst of 2, then 429", codes)
	}
	codes = codes[:0]
	for range 3 {
		resp, _ := r.do("GET", "/connect/start?flow=nope", nil)
		codes = append(codes, resp.StatusCode)
		if resp.StatusCode == 429 && resp.Header.Get("Retry-After") == "" {
			t.Error("429 without Retry-After")
		}
	}
	if !slices.Equal(codes, []int{400, 429, 429}) {
		t.Errorf("starts = %v; want the address's burst spent, then 429", codes)
	}
	if len(r.f.connects) != 2 {
		t.Errorf("%d flows started; want 2", len(r.f.connects))
	}
}

func TestLimiter_BoundedKeys(t *testing.T) {
	l := newLimiter(DefaultLimits, time.Now)
	for i := range 3 * maxKeys {
		l.allow(nil, "addr:"+strings.Repeat("x", i%7)+string(rune(i)))
	}
	if n := len(l.buckets); n > maxKeys {
		t.Errorf("limiter holds %d keys; want at most %d", n, maxKeys)
	}
}

func TestPage_PopupResult(t *testing.T) {
	r := newRig(t, testConfig(""))
	r.open("tok-alice")
	_, page := r.do("GET", "/connect/?mode=popup&provider=slack&status=connected&connection_id=conn_a1", nil)
	want := `<div id="tv-result" hidden data-provider="slack" data-connection="conn_a1" data-status="connected" data-origins="http://app.example.com ` + r.srv.URL + `"></div>`
	if !strings.Contains(page, want) {
		t.Errorf("popup page lacks %s", want)
	}
	if !strings.Contains(page, `<input type="hidden" name="mode" value="popup">`) || !strings.Contains(page, "Close this window") {
		t.Error("popup page's forms do not keep the mode, or it has no Close button")
	}
	// Another owner's connection id is not repeated to the opener.
	_, page = r.do("GET", "/connect/?mode=popup&provider=slack&status=connected&connection_id=conn_b1", nil)
	if strings.Contains(page, "conn_b1") {
		t.Error("popup result names another owner's connection")
	}
	// Unknown statuses and providers show nothing.
	_, page = r.do("GET", "/connect/?provider=slack&status=<script>", nil)
	if strings.Contains(page, "banner") && strings.Contains(page, "<script>") {
		t.Error("an unknown status reached the page")
	}
}

func TestAssets(t *testing.T) {
	r := newRig(t, testConfig(""))
	for path, ctype := range map[string]string{
		"/connect/embed.js": "text/javascript; charset=utf-8", "/connect/page.js": "text/javascript; charset=utf-8",
		"/connect/connect.css": "text/css; charset=utf-8",
	} {
		resp, body := r.do("GET", path, nil)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != ctype || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s = %d %q", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if strings.Contains(body, `"*"`) || strings.Contains(body, "'*'") || strings.Contains(body, "http://") && !strings.HasSuffix(path, ".css") {
			t.Errorf("%s names a wildcard target or an external origin", path)
		}
	}
}

func TestNew_RefusesBadConfig(t *testing.T) {
	for name, edit := range map[string]func(*Config){
		"relative public URL": func(c *Config) { c.PublicURL = "/x" },
		"theme colour":        func(c *Config) { c.ThemeColor = "blue" },
		"popup origin *":      func(c *Config) { c.PopupOrigins = []string{"*"} },
		"logo type":           func(c *Config) { c.Logo, c.LogoType = []byte("x"), "text/html" },
	} {
		cfg := testConfig("http://127.0.0.1:1")
		edit(&cfg)
		if _, err := New(cfg, newFake()); err == nil {
			t.Errorf("%s: New succeeded; want an error", name)
		}
	}
	if _, err := New(testConfig("http://127.0.0.1:1"), newFake()); err != nil {
		t.Fatal(err)
	}
}

func TestReasonWords(t *testing.T) {
	for _, r := range []string{"invalid_grant", "token_expired", "refresh_interrupted", "", "weird_code"} {
		w := ReasonWords(r)
		if w == "" || strings.Contains(w, "_") && r != "weird_code" {
			t.Errorf("ReasonWords(%q) = %q; want plain words", r, w)
		}
	}
}
