package connectpage

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tokenvault/tokenvault/server/connectpage/pagetest"
)

func TestBrowser_PopupDeliversToOpenerOrigin(t *testing.T) {
	b := pagetest.New(t)
	app := httptest.NewServer(nil) // the application, on another port: another origin
	defer app.Close()
	cfg := testConfig("")
	cfg.PopupOrigins = []string{app.URL}
	r := newRig(t, cfg)
	// The fake "provider" sends the browser straight back with an outcome.
	r.f.authURL = r.srv.URL + "/connect/?mode=popup&provider=slack&status=connected&connection_id=conn_a1"
	app.Config.Handler = pagetest.OpenerPage(r.srv.URL, r.srv.URL+"/connect/s/tok-alice")

	ctx, cancel := b.Tab(60 * time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(app.URL), chromedp.WaitVisible(chromedp.ID("go"))); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.ID("go"))); err != nil {
		t.Fatal(err)
	}
	id, err := b.WaitWindow(ctx, "/connect/")
	if err != nil {
		t.Fatalf("no popup opened: %v", err)
	}
	popup, cancelPopup := b.Attach(id)
	defer cancelPopup()
	pctx, cancelP := context.WithTimeout(popup, 30*time.Second)
	defer cancelP()
	if err := chromedp.Do(pctx,
		chromedp.WaitVisible(chromedp.CSS(`form[action="/connect/connect"] button`)),
		chromedp.Click(chromedp.CSS(`input[value="linear"] ~ button`)),
	); err != nil {
		t.Fatal(err)
	}
	out, err := chromedp.Run(ctx, chromedp.Poll[string](`document.getElementById("out").textContent`, chromedp.WithPollingTimeout(10*time.Second)))
	if err != nil {
		dbg, _ := chromedp.Run(pctx, chromedp.Evaluate[string](`location.href + " opener=" + (!!window.opener) + " " + document.body.innerHTML.slice(0, 300)`))
		t.Logf("popup: %s\nproblems: %v", dbg, b.Problems())
		t.Fatalf("the opener got no result: %v", err)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("opener's result %q: %v", out, err)
	}
	want := map[string]any{"type": "tokenvault.connect", "provider": "slack", "connectionId": "conn_a1", "status": "connected"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("result[%s] = %v; want %v (result %s)", k, got[k], v, out)
		}
	}
	if len(r.f.connects) != 1 || r.f.connects[0].ReturnTo != r.srv.URL+"/connect/?mode=popup" {
		t.Errorf("the popup's flow = %+v; want one returning to the page in popup mode", r.f.connects)
	}
	if p := b.Problems(); len(p) > 0 {
		t.Errorf("the pages reported problems:\n%s", strings.Join(p, "\n"))
	}
}

// An opener whose origin is not configured gets no message: the result
// resolves only when the window closes.
func TestBrowser_PopupIgnoresUnconfiguredOpener(t *testing.T) {
	b := pagetest.New(t)
	app := httptest.NewServer(nil)
	defer app.Close()
	r := newRig(t, testConfig("")) // popup origins: app.example.com only
	app.Config.Handler = pagetest.OpenerPage(r.srv.URL, r.srv.URL+"/connect/s/tok-alice")
	ctx, cancel := b.Tab(60 * time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(app.URL), chromedp.Click(chromedp.ID("go"))); err != nil {
		t.Fatal(err)
	}
	id, err := b.WaitWindow(ctx, "/connect/")
	if err != nil {
		t.Fatalf("no popup opened: %v", err)
	}
	popup, cancelPopup := b.Attach(id)
	defer cancelPopup()
	// The result page in the popup, as after a flow.
	if err := chromedp.Do(popup, chromedp.WaitVisible(chromedp.ID("main")),
		chromedp.Navigate(r.srv.URL+"/connect/?mode=popup&provider=slack&status=connected&connection_id=conn_a1"),
		chromedp.WaitReady(chromedp.ID("tv-result")), chromedp.Sleep(300*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	out, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("out").textContent`))
	if err != nil || out != "" {
		t.Fatalf("an unconfigured opener got %q, %v; want nothing", out, err)
	}
	if err := chromedp.Do(popup, chromedp.Click(chromedp.ID("tv-close"))); err != nil && !strings.Contains(err.Error(), "detached") {
		t.Logf("close: %v", err)
	}
	out, err = chromedp.Run(ctx, chromedp.Poll[string](`document.getElementById("out").textContent`))
	if err != nil || !strings.Contains(out, `"status":"closed"`) {
		t.Errorf("after the window closed the opener got %q, %v; want status closed", out, err)
	}
}

func TestBrowser_KeyboardAndPhoneWidth(t *testing.T) {
	b := pagetest.New(t)
	r := newRig(t, testConfig(""))
	ctx, cancel := b.Tab(60 * time.Second)
	defer cancel()
	if err := chromedp.Do(ctx,
		chromedp.EmulateViewport(360, 780),
		chromedp.Navigate(r.srv.URL+"/connect/s/tok-alice"),
		chromedp.WaitVisible(chromedp.CSS(".providers")),
	); err != nil {
		t.Fatal(err)
	}
	// Readable at 360 px: nothing wider than the screen, text at 16 px,
	// buttons a finger high.
	layout, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]float64](`({
		scroll: document.documentElement.scrollWidth,
		font: parseFloat(getComputedStyle(document.body).fontSize),
		button: Math.min(...[...document.querySelectorAll("button")].map(b => b.getBoundingClientRect().height)),
		buttonW: Math.max(...[...document.querySelectorAll("button")].map(b => b.getBoundingClientRect().right)),
	})`))
	if err != nil {
		t.Fatal(err)
	}
	if layout["scroll"] > 360 || layout["font"] < 16 || layout["button"] < 44 || layout["buttonW"] > 360 {
		t.Errorf("at 360 px: %v; want no horizontal scroll, 16 px text, 44 px buttons inside the screen", layout)
	}
	// Keyboard: Tab reaches the skip link, then every control in order,
	// each with a visible focus ring.
	var seen []string
	for range 12 {
		if err := chromedp.Do(ctx, chromedp.KeyEvent("\t")); err != nil {
			t.Fatal(err)
		}
		f, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]string](`(() => {
			const e = document.activeElement, s = getComputedStyle(e);
			return {tag: e.tagName, text: e.textContent.trim(), outline: s.outlineStyle, width: s.outlineWidth};
		})()`))
		if err != nil {
			t.Fatal(err)
		}
		if f["tag"] == "BODY" {
			break
		}
		seen = append(seen, f["text"])
		if f["outline"] == "none" || f["width"] == "0px" {
			t.Errorf("focus on %s %q has no visible outline (%v)", f["tag"], f["text"], f)
		}
	}
	want := []string{"Skip to content", "Disconnect Slack", "Reconnect GitHub", "Disconnect GitHub", "Connect Linear", "Back to Acme Notes"}
	if strings.Join(seen, "|") != strings.Join(want, "|") {
		t.Errorf("Tab order = %q; want %q", seen, want)
	}
	// Names a screen reader announces.
	names, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("main button")].map(b => b.textContent.trim())`))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if verb, service, ok := strings.Cut(n, " "); !ok || verb == "" || service == "" {
			t.Errorf("button %q: its accessible name does not name the service", n)
		}
	}
	if p := b.Problems(); len(p) > 0 {
		t.Errorf("the page reported problems:\n%s", strings.Join(p, "\n"))
	}
}
