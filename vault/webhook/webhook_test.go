package webhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/client"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/webhook"
)

// Two 25-byte secrets in the whsec_ form the configuration takes.
const (
	hookSecretOld = "whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZA=="
	hookSecretNew = "whsec_bmV3LXNlY3JldC1uZXctc2VjcmV0LW5ldw=="
)

func mustSecret(t testing.TB, s string) webhook.Secret {
	t.Helper()
	sec, err := webhook.ParseSecret(s)
	if err != nil {
		t.Fatal(err)
	}
	return sec
}

// delivery is one request a receiver got.
type delivery struct {
	header http.Header
	body   []byte
}

// receiver is an httptest server on 127.0.0.1 that records every request
// and answers from a script: each answer is used once, the last one
// forever.
type receiver struct {
	*httptest.Server
	got chan delivery

	mu      sync.Mutex
	answers []func(w http.ResponseWriter)
}

func newReceiver(t *testing.T, answers ...func(w http.ResponseWriter)) *receiver {
	t.Helper()
	r := &receiver{got: make(chan delivery, 100), answers: answers}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.got <- delivery{header: req.Header.Clone(), body: body}
		r.mu.Lock()
		a := func(w http.ResponseWriter) { w.WriteHeader(http.StatusNoContent) }
		if len(r.answers) > 0 {
			a = r.answers[0]
			if len(r.answers) > 1 {
				r.answers = r.answers[1:]
			}
		}
		r.mu.Unlock()
		a(w)
	}))
	t.Cleanup(r.Close)
	return r
}

func status(code int, header ...string) func(w http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.WriteHeader(code)
	}
}

// next returns the next delivery, failing the test after a while.
func (r *receiver) next(t *testing.T) delivery {
	t.Helper()
	select {
	case d := <-r.got:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery within 10s")
		return delivery{}
	}
}

// none checks that no delivery arrives for a moment.
func (r *receiver) none(t *testing.T) {
	t.Helper()
	select {
	case d := <-r.got:
		t.Fatalf("unexpected delivery of %s", d.body)
	case <-time.After(100 * time.Millisecond):
	}
}

// hooksRun runs Webhooks until the test ends (or stop is called) and
// records every wait it asks for; a wait advances the harness clock by its
// length and returns at once.
type hooksRun struct {
	*webhook.Deliverer
	mu    sync.Mutex
	waits []time.Duration
	logs  bytes.Buffer
	stop  func()
}

func (hr *hooksRun) Write(p []byte) (int, error) {
	hr.mu.Lock()
	defer hr.mu.Unlock()
	return hr.logs.Write(p)
}

func (hr *hooksRun) logged() string {
	hr.mu.Lock()
	defer hr.mu.Unlock()
	return hr.logs.String()
}

func (hr *hooksRun) waited() []time.Duration {
	hr.mu.Lock()
	defer hr.mu.Unlock()
	return slices.Clone(hr.waits)
}

func startHooks(t *testing.T, h *eventsHarness, cfg webhook.Config) *hooksRun {
	t.Helper()
	hr := &hooksRun{}
	cfg.Now = h.clock.Now
	cfg.Logger = slog.New(slog.NewTextHandler(hr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.Jitter = func() float64 { return 0.5 }
	cfg.Wait = func(ctx context.Context, d time.Duration) error {
		hr.mu.Lock()
		hr.waits = append(hr.waits, d)
		hr.mu.Unlock()
		h.clock.Add(d)
		return ctx.Err()
	}
	w, err := webhook.New(context.Background(), h.v, h.store, cfg)
	if err != nil {
		t.Fatalf("NewWebhooks = %v", err)
	}
	hr.Deliverer = w
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	var once sync.Once
	hr.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Error("Run did not return within 10s of cancel")
			}
		})
	}
	t.Cleanup(hr.stop)
	return hr
}

func endpoint(t *testing.T, name, url string, secrets ...string) webhook.Endpoint {
	ep := webhook.Endpoint{Name: name, URL: url, AllowPrivate: true}
	for _, s := range secrets {
		ep.Secrets = append(ep.Secrets, mustSecret(t, s))
	}
	return ep
}

// stat returns the stats of the named endpoint.
func stat(w *webhook.Deliverer, name string) webhook.Stats {
	for _, s := range w.Stats() {
		if s.Name == name {
			return s
		}
	}
	return webhook.Stats{}
}

// waitFor polls cond for up to 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 1000 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestDeliverer_DeliversSignedInOrder(t *testing.T) {
	h := newEventsHarness(t)
	rcv := newReceiver(t)
	hooks := startHooks(t, h, webhook.Config{Endpoints: []webhook.Endpoint{
		endpoint(t, "app", rcv.URL+"/hooks?token=abc", hookSecretOld, hookSecretNew),
	}})
	a := h.mustConnect("alice")
	h.mustConnect("bob")
	if _, err := h.v.Revoke(context.Background(), a.ID, "user_left"); err != nil {
		t.Fatal(err)
	}
	verifyOld, _ := client.NewWebhookVerifier(hookSecretOld)
	verifyNew, _ := client.NewWebhookVerifier(hookSecretNew)
	verifyNew.Now = h.clock.Now
	verifyOld.Now = h.clock.Now
	evs := h.events(0)
	for i, want := range []struct{ typ, owner, reason string }{
		{vault.EventCreated, "alice", ""}, {vault.EventCreated, "bob", ""}, {vault.EventRevoked, "alice", "user_left"},
	} {
		d := rcv.next(t)
		for _, v := range []*client.WebhookVerifier{verifyOld, verifyNew} {
			if err := v.Verify(d.header, d.body); err != nil {
				t.Errorf("delivery %d: Verify = %v", i, err)
			}
		}
		if sigs := strings.Fields(d.header.Get("webhook-signature")); len(sigs) != 2 {
			t.Errorf("delivery %d: %d signatures; want one per secret", i, len(sigs))
		}
		// The client's types describe every field the vault sends (the
		// two packages may not import each other, so the shape is written
		// twice and held together here).
		var p client.WebhookEvent
		dec := json.NewDecoder(bytes.NewReader(d.body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("delivery %d: client.WebhookEvent cannot hold it: %v", i, err)
		}
		if p.Type != want.typ || p.Data.Connection.Owner != want.owner || p.Data.Reason != want.reason ||
			p.Data.Sequence != uint64(i+1) || p.Data.EventID != d.header.Get("webhook-id") || p.Data.EventID != evs[i].ID {
			t.Errorf("delivery %d = %s; want %s of %s, sequence %d, id %s", i, d.body, want.typ, want.owner, i+1, evs[i].ID)
		}
		if ts, _ := strconv.ParseInt(d.header.Get("webhook-timestamp"), 10, 64); ts != h.clock.Now().Unix() {
			t.Errorf("delivery %d: webhook-timestamp %d; want %d", i, ts, h.clock.Now().Unix())
		}
		if ct := d.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("delivery %d: Content-Type %q", i, ct)
		}
		for _, secret := range []string{"at-1", "rt-1", "at-2", "rt-2", "b2xkLXNl", "bmV3LXNl"} {
			if strings.Contains(string(d.body), secret) {
				t.Errorf("delivery %d carries %q: %s", i, secret, d.body)
			}
		}
	}
	rcv.none(t)
	waitFor(t, "the backlog to drain", func() bool { return stat(hooks.Deliverer, "app").Backlog == 0 })
	if s := stat(hooks.Deliverer, "app"); s.Attempts[webhook.Delivered] != 3 || s.Disabled {
		t.Errorf("stats = %+v; want 3 delivered", s)
	}

	// After a restart nothing is delivered twice, and new events flow.
	hooks.stop()
	h.reopen()
	hooks = startHooks(t, h, webhook.Config{Endpoints: []webhook.Endpoint{
		endpoint(t, "app", rcv.URL+"/hooks?token=abc", hookSecretNew),
	}})
	rcv.none(t)
	h.mustConnect("carol")
	if d := rcv.next(t); !strings.Contains(string(d.body), `"owner":"carol"`) {
		t.Errorf("after restart got %s; want carol's created", d.body)
	}
}

func TestDeliverer_RetryWithBackoffHonoursRetryAfter(t *testing.T) {
	h := newEventsHarness(t)
	rcv := newReceiver(t,
		status(http.StatusServiceUnavailable, "Retry-After", "7"),
		status(http.StatusInternalServerError),
		status(http.StatusTooManyRequests, "Retry-After", h.clock.Now().Add(time.Minute).UTC().Format(http.TimeFormat)),
		status(http.StatusBadRequest),
		status(http.StatusOK),
	)
	hooks := startHooks(t, h, webhook.Config{
		Endpoints:   []webhook.Endpoint{endpoint(t, "app", rcv.URL, hookSecretNew)},
		BaseBackoff: time.Second, MaxBackoff: 10 * time.Second,
	})
	h.mustConnect("alice")
	var ids []string
	for range 5 {
		ids = append(ids, rcv.next(t).header.Get("webhook-id"))
	}
	if c := slices.Compact(slices.Clone(ids)); len(c) != 1 {
		t.Errorf("retries carried ids %v; want one stable id", ids)
	}
	waitFor(t, "delivery", func() bool { return stat(hooks.Deliverer, "app").Attempts[webhook.Delivered] == 1 })
	// Jitter 0.5 of 1s, 2s, 4s, 8s; Retry-After 7s and one minute (the
	// clock moved 8s by then) win where longer.
	want := []time.Duration{7 * time.Second, time.Second, 52 * time.Second, 4 * time.Second}
	if got := hooks.waited(); !slices.Equal(got, want) {
		t.Errorf("waits = %v; want %v", got, want)
	}
	if s := stat(hooks.Deliverer, "app"); s.Attempts[webhook.Failed] != 4 || s.Attempts[webhook.Delivered] != 1 {
		t.Errorf("stats = %+v; want 4 failed, 1 delivered", s.Attempts)
	}
}

func TestDeliverer_GoneDisables(t *testing.T) {
	h := newEventsHarness(t)
	rcv := newReceiver(t, status(http.StatusGone))
	other := newReceiver(t)
	eps := func(url string) []webhook.Endpoint {
		return []webhook.Endpoint{endpoint(t, "gone", url, hookSecretNew), endpoint(t, "other", other.URL, hookSecretNew)}
	}
	hooks := startHooks(t, h, webhook.Config{Endpoints: eps(rcv.URL)})
	h.mustConnect("alice")
	rcv.next(t)
	other.next(t)
	waitFor(t, "disabled", func() bool { return stat(hooks.Deliverer, "gone").Disabled })
	if s := stat(hooks.Deliverer, "gone"); s.Attempts[webhook.Gone] != 1 {
		t.Errorf("stats = %+v; want one gone", s)
	}
	h.mustConnect("bob")
	other.next(t)
	rcv.none(t)
	waitFor(t, "backlog", func() bool { return stat(hooks.Deliverer, "gone").Backlog == 2 })
	// A disabled endpoint holds back no event from the retention sweep.
	h.clock.Add(200 * time.Hour)
	waitFor(t, "other's cursor", func() bool { return stat(hooks.Deliverer, "other").Backlog == 0 })
	if n, err := hooks.Sweep(context.Background()); err != nil || n != 1 {
		t.Errorf("Sweep = %d, %v; want 1 (all but the newest)", n, err)
	}

	// Still disabled after a restart.
	hooks.stop()
	h.reopen()
	hooks = startHooks(t, h, webhook.Config{Endpoints: eps(rcv.URL)})
	if !stat(hooks.Deliverer, "gone").Disabled {
		t.Error("endpoint enabled again after restart")
	}
	h.mustConnect("carol")
	other.next(t)
	rcv.none(t)

	// A new URL enables it again, from where it stopped.
	hooks.stop()
	fresh := newReceiver(t)
	hooks = startHooks(t, h, webhook.Config{Endpoints: eps(fresh.URL)})
	if stat(hooks.Deliverer, "gone").Disabled {
		t.Error("endpoint with a new URL still disabled")
	}
	// It gets the retained events it missed: 3, and 2 unless a sweep
	// took it while the endpoint was disabled.
	var got []uint64
	for len(got) == 0 || got[len(got)-1] < 3 {
		var p client.WebhookEvent
		if err := json.Unmarshal(fresh.next(t).body, &p); err != nil {
			t.Fatal(err)
		}
		got = append(got, p.Data.Sequence)
	}
	if !slices.Equal(got, []uint64{2, 3}) && !slices.Equal(got, []uint64{3}) {
		t.Errorf("re-enabled endpoint got sequences %v; want [2 3] or [3]", got)
	}
}

func TestDeliverer_FailingTooLongDisables(t *testing.T) {
	h := newEventsHarness(t)
	rcv := newReceiver(t, status(http.StatusInternalServerError))
	hooks := startHooks(t, h, webhook.Config{
		Endpoints:    []webhook.Endpoint{endpoint(t, "app", rcv.URL, hookSecretNew)},
		DisableAfter: time.Hour, BaseBackoff: time.Second, MaxBackoff: 10 * time.Minute,
	})
	h.mustConnect("alice")
	waitFor(t, "disabled", func() bool { return stat(hooks.Deliverer, "app").Disabled })
	s := stat(hooks.Deliverer, "app")
	if s.Attempts[webhook.Failed] < 5 || s.Backlog != 1 {
		t.Errorf("stats = %+v; want several failures, backlog 1", s)
	}
	var total time.Duration
	for _, d := range hooks.waited() {
		total += d
	}
	if total < 55*time.Minute || total > 70*time.Minute {
		t.Errorf("gave up after %v of waiting; want about an hour", total)
	}
}

func TestDeliverer_EventTypesFilter(t *testing.T) {
	h := newEventsHarness(t)
	rcv := newReceiver(t)
	ep := endpoint(t, "revocations", rcv.URL, hookSecretNew)
	ep.EventTypes = []string{vault.EventRevoked}
	hooks := startHooks(t, h, webhook.Config{Endpoints: []webhook.Endpoint{ep}})
	a := h.mustConnect("alice")
	h.mustConnect("bob")
	if _, err := h.v.Revoke(context.Background(), a.ID, ""); err != nil {
		t.Fatal(err)
	}
	if d := rcv.next(t); !strings.Contains(string(d.body), `"type":"connection.revoked"`) {
		t.Errorf("got %s; want only the revocation", d.body)
	}
	h.mustConnect("carol")
	rcv.none(t)
	waitFor(t, "the cursor past filtered events", func() bool { return stat(hooks.Deliverer, "revocations").Backlog == 0 })
}

func TestDeliverer_NewEndpointStartsAtTheEnd(t *testing.T) {
	h := newEventsHarness(t)
	h.mustConnect("alice") // before the endpoint exists
	rcv := newReceiver(t)
	startHooks(t, h, webhook.Config{Endpoints: []webhook.Endpoint{endpoint(t, "app", rcv.URL, hookSecretNew)}})
	rcv.none(t)
	h.mustConnect("bob")
	if d := rcv.next(t); !strings.Contains(string(d.body), `"owner":"bob"`) {
		t.Errorf("got %s; want bob's event only", d.body)
	}
}

func TestDeliverer_RetentionKeepsUndelivered(t *testing.T) {
	h := newEventsHarness(t)
	rcv := newReceiver(t, status(http.StatusInternalServerError))
	hooks := startHooks(t, h, webhook.Config{
		Endpoints: []webhook.Endpoint{endpoint(t, "app", rcv.URL, hookSecretNew)},
		Retention: time.Hour, BaseBackoff: time.Millisecond, MaxBackoff: time.Millisecond,
	})
	h.mustConnect("alice")
	h.mustConnect("bob")
	rcv.next(t)
	h.clock.Add(2 * time.Hour)
	if n, err := hooks.Sweep(context.Background()); err != nil || n != 0 {
		t.Errorf("Sweep = %d, %v; want nothing deleted while undelivered", n, err)
	}
}

func TestDeliverer_SSRF(t *testing.T) {
	rcvAddr := func(r *receiver) (host, port string) {
		host, port, _ = net.SplitHostPort(r.Listener.Addr().String())
		return host, port
	}
	for _, tc := range []struct {
		name      string
		host      func(r *receiver) string // host:port to deliver to
		literal   bool
		allow     bool
		wantBlock bool
	}{
		{"loopback IP refused", func(r *receiver) string { return r.Listener.Addr().String() }, true, false, true},
		{"name resolving to loopback refused at dial", func(r *receiver) string { _, p := rcvAddr(r); return "localhost:" + p }, false, false, true},
		{"loopback IP allowed", func(r *receiver) string { return r.Listener.Addr().String() }, true, true, false},
		{"name resolving to loopback allowed", func(r *receiver) string { _, p := rcvAddr(r); return "localhost:" + p }, false, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newEventsHarness(t)
			rcv := newReceiver(t)
			ep := endpoint(t, "app", "http://"+tc.host(rcv)+"/hooks", hookSecretNew)
			ep.AllowPrivate = tc.allow
			if tc.literal {
				// An IP literal is refused up front; dialControl's own
				// test covers the dial-time check of addresses.
				_, err := webhook.New(context.Background(), h.v, h.store, webhook.Config{Endpoints: []webhook.Endpoint{ep}})
				if tc.allow != (err == nil) {
					t.Fatalf("NewWebhooks(%s, allow %v) = %v", ep.URL, tc.allow, err)
				}
				if !tc.allow {
					return
				}
			}
			hooks := startHooks(t, h, webhook.Config{
				Endpoints: []webhook.Endpoint{ep}, BaseBackoff: time.Millisecond, MaxBackoff: time.Millisecond,
			})
			h.mustConnect("alice")
			if tc.wantBlock {
				waitFor(t, "a blocked attempt", func() bool { return stat(hooks.Deliverer, "app").Attempts[webhook.Blocked] >= 2 })
				rcv.none(t)
				return
			}
			rcv.next(t)
		})
	}
}

func TestNew_Refuses(t *testing.T) {
	h := newEventsHarness(t)
	sec := mustSecret(t, hookSecretNew)
	for _, tc := range []struct {
		name string
		ep   webhook.Endpoint
	}{
		{"no secret", webhook.Endpoint{Name: "a", URL: "https://hooks.example/"}},
		{"bad name", webhook.Endpoint{Name: "A B", URL: "https://hooks.example/", Secrets: []webhook.Secret{sec}}},
		{"ftp", webhook.Endpoint{Name: "a", URL: "ftp://hooks.example/", Secrets: []webhook.Secret{sec}}},
		{"user info", webhook.Endpoint{Name: "a", URL: "https://u:p@hooks.example/", Secrets: []webhook.Secret{sec}}},
		{"relative", webhook.Endpoint{Name: "a", URL: "/hooks", Secrets: []webhook.Secret{sec}}},
		{"private IP", webhook.Endpoint{Name: "a", URL: "http://10.1.2.3/", Secrets: []webhook.Secret{sec}}},
		{"metadata IP", webhook.Endpoint{Name: "a", URL: "http://169.254.169.254/latest", Secrets: []webhook.Secret{sec}}},
		{"IPv6 loopback", webhook.Endpoint{Name: "a", URL: "http://[::1]:8080/", Secrets: []webhook.Secret{sec}}},
		{"mapped loopback", webhook.Endpoint{Name: "a", URL: "http://[::ffff:127.0.0.1]/", Secrets: []webhook.Secret{sec}}},
		{"unknown event type", webhook.Endpoint{Name: "a", URL: "https://hooks.example/", Secrets: []webhook.Secret{sec}, EventTypes: []string{"connection.exploded"}}},
	} {
		if _, err := webhook.New(context.Background(), h.v, h.store, webhook.Config{Endpoints: []webhook.Endpoint{tc.ep}}); err == nil {
			t.Errorf("%s: NewWebhooks = nil error", tc.name)
		} else if strings.Contains(err.Error(), "u:p@") {
			t.Errorf("%s: error repeats the URL: %v", tc.name, err)
		}
	}
	dup := webhook.Endpoint{Name: "a", URL: "https://hooks.example/", Secrets: []webhook.Secret{sec}}
	if _, err := webhook.New(context.Background(), h.v, h.store, webhook.Config{Endpoints: []webhook.Endpoint{dup, dup}}); err == nil {
		t.Error("NewWebhooks accepted two endpoints of one name")
	}
	priv := webhook.Endpoint{Name: "a", URL: "http://10.1.2.3/", Secrets: []webhook.Secret{sec}, AllowPrivate: true}
	if _, err := webhook.New(context.Background(), h.v, h.store, webhook.Config{Endpoints: []webhook.Endpoint{priv}}); err != nil {
		t.Errorf("NewWebhooks(private, allowed) = %v", err)
	}
}

func TestDeliverer_NoRedirects(t *testing.T) {
	h := newEventsHarness(t)
	target := newReceiver(t)
	rcv := newReceiver(t, status(http.StatusTemporaryRedirect, "Location", target.URL), status(http.StatusMovedPermanently, "Location", target.URL), status(http.StatusOK))
	hooks := startHooks(t, h, webhook.Config{
		Endpoints: []webhook.Endpoint{endpoint(t, "app", rcv.URL+"/hooks?token=sekrit", hookSecretNew)}, BaseBackoff: time.Millisecond, MaxBackoff: time.Millisecond,
	})
	h.mustConnect("alice")
	for range 3 {
		rcv.next(t)
	}
	waitFor(t, "the failures logged", func() bool { return strings.Count(hooks.logged(), "webhook delivery failed") == 2 })
	if logs := hooks.logged(); strings.Contains(logs, "sekrit") || strings.Contains(logs, rcv.URL) {
		t.Errorf("the endpoint URL was logged:\n%s", logs)
	}
	target.none(t)
	waitFor(t, "delivery", func() bool { return stat(hooks.Deliverer, "app").Attempts[webhook.Delivered] == 1 })
	if s := stat(hooks.Deliverer, "app"); s.Attempts[webhook.Failed] != 2 {
		t.Errorf("stats = %+v; want the 2 redirects counted as failures", s.Attempts)
	}
}

func TestParseSecret(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{hookSecretNew, true},
		{"  " + hookSecretNew + "\n", true},
		{strings.TrimPrefix(hookSecretNew, "whsec_"), false},
		{"whsec_c2hvcnQ=", false},                      // 5 bytes
		{"whsec_" + strings.Repeat("QUFB", 30), false}, // 90 bytes
		{"whsec_%%%", false},
	} {
		s, err := webhook.ParseSecret(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParseWebhookSecret(%q) = %v; want ok %v", tc.in, err, tc.ok)
		}
		if err != nil && strings.Contains(err.Error(), strings.TrimPrefix(strings.TrimSpace(tc.in), "whsec_")) {
			t.Errorf("error repeats the secret: %v", err)
		}
		if tc.ok {
			b, _ := json.Marshal(struct{ S webhook.Secret }{s})
			for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s %q", s, s, s, s, s), string(b)} {
				if strings.Contains(out, "bmV3") || strings.Contains(out, "new-secret") {
					t.Errorf("a secret prints: %s", out)
				}
			}
		}
	}
}

// The README's Node.js snippet verifies a delivery the vault signed.
func TestDeliverer_ReadmeNodeSnippetVerifies(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed")
	}
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- webhook-verify-node -->\\s*```js\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no ```js block after <!-- webhook-verify-node -->")
	}
	h := newEventsHarness(t)
	rcv := newReceiver(t)
	startHooks(t, h, webhook.Config{Endpoints: []webhook.Endpoint{endpoint(t, "app", rcv.URL, hookSecretOld, hookSecretNew)}})
	h.mustConnect("alice")
	d := rcv.next(t)

	// The snippet defines verifyWebhook(secret, headers, body, nowSeconds).
	harness := string(m[1]) + `
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const out = {};
for (const [name, c] of Object.entries(input.cases)) {
  try { verifyWebhook(c.secret, c.headers, Buffer.from(c.body, "utf8"), c.now); out[name] = "ok"; }
  catch (e) { out[name] = "rejected"; }
}
console.log(JSON.stringify(out));
`
	script := filepath.Join(t.TempDir(), "verify.js")
	if err := os.WriteFile(script, []byte(harness), 0o600); err != nil {
		t.Fatal(err)
	}
	hdr := map[string]string{
		"webhook-id":        d.header.Get("webhook-id"),
		"webhook-timestamp": d.header.Get("webhook-timestamp"),
		"webhook-signature": d.header.Get("webhook-signature"),
	}
	now := h.clock.Now().Unix()
	type c struct {
		Secret  string            `json:"secret"`
		Headers map[string]string `json:"headers"`
		Body    string            `json:"body"`
		Now     int64             `json:"now"`
	}
	cases := map[string]c{
		"valid, new secret": {hookSecretNew, hdr, string(d.body), now},
		"valid, old secret": {hookSecretOld, hdr, string(d.body), now},
		"tampered body":     {hookSecretNew, hdr, strings.Replace(string(d.body), "alice", "mallory", 1), now},
		"wrong secret":      {"whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC13cm9uZw==", hdr, string(d.body), now},
		"expired":           {hookSecretNew, hdr, string(d.body), now + 301},
		"future":            {hookSecretNew, hdr, string(d.body), now - 301},
	}
	want := map[string]string{
		"valid, new secret": "ok", "valid, old secret": "ok", "tampered body": "rejected",
		"wrong secret": "rejected", "expired": "rejected", "future": "rejected",
	}
	in, _ := json.Marshal(map[string]any{"cases": cases})
	cmd := exec.Command(node, script)
	cmd.Stdin = strings.NewReader(string(in))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	var got map[string]string
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("node printed %s: %v", out, err)
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("node %s: %s; want %s", name, got[name], w)
		}
	}
}
