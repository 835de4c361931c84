// Package pagetest starts Debian's headless chromium for tests of the
// sidecar's pages, and drives it with chromedp.
//
// The Makefile's test target installs chromium. Without it a test is
// skipped with a message, except under CI (CI set), where it fails: the
// browser tests must never pass by not running.
package pagetest

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/target"
	"github.com/chromedp/chromedp"
)

// Path returns chromium's path, or "" if it is not installed.
func Path() string {
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// A Browser is one headless chromium with a fresh profile (its own
// cookies), closed when the test ends. Each Browser is a separate profile:
// two Browsers are two people's browsers.
type Browser struct {
	t   testing.TB
	ctx context.Context // the first tab's; the browser lives as long as it

	mu       sync.Mutex
	problems []string
}

// New starts a browser for t, or skips t (fails it under CI) if chromium
// is not installed.
func New(t testing.TB) *Browser {
	t.Helper()
	path := Path()
	if path == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed: the Makefile's test target installs it (apt-get install chromium)")
		}
		t.Skip("chromium is not installed; `make test` installs it (Debian package chromium)")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true), // CI runs as root
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		// Without these chromium reaches out to Google's hosts at start,
		// and a closed network refuses it noisily.
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-popup-blocking", true), // popups open from a script in tests, not a click
		chromedp.Flag("mute-audio", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.WindowSize(1280, 900),
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	b := &Browser{t: t, ctx: ctx}
	// The first run starts the browser; it must not carry a timeout.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	b.watch(ctx)
	return b
}

// Tab returns the browser's first tab, its actions bounded to timeout.
func (b *Browser) Tab(timeout time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(b.ctx, timeout)
}

// WaitWindow waits until a window other than the first tab shows a URL
// containing urlPart (a popup the page opened) and returns its target.
func (b *Browser) WaitWindow(ctx context.Context, urlPart string) (target.ID, error) {
	first := chromedp.FromContext(b.ctx).Target.TargetID
	for {
		infos, err := chromedp.Targets(b.ctx)
		if err != nil {
			return "", err
		}
		for _, i := range infos {
			if i.Type == "page" && i.TargetID != first && strings.Contains(i.URL, urlPart) {
				return i.TargetID, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Attach returns a context on a target the page opened (a popup), whose
// problems are recorded too.
func (b *Browser) Attach(id target.ID) (context.Context, context.CancelFunc) {
	ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithTargetID(id))
	if err := chromedp.Do(ctx); err != nil {
		b.t.Fatalf("attach to the new window: %v", err)
	}
	b.watch(ctx)
	return ctx, cancel
}

// watch records the target's uncaught exceptions and console errors (a
// CSP violation is one).
func (b *Browser) watch(ctx context.Context) {
	msgs := chromedp.Console(ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			if m.IsException() || m.Type == chromedp.ConsoleError {
				b.mu.Lock()
				b.problems = append(b.problems, m.String()+" ("+m.URL+")")
				b.mu.Unlock()
			}
		}
	}()
}

// Problems returns what the pages reported: uncaught exceptions, console
// errors, CSP violations. A page under test should report none.
func (b *Browser) Problems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.problems...)
}

// OpenerPage is an application's page on another origin that loads the
// sidecar's embed.js from sidecar and, when its button #go is clicked,
// opens link in a popup; the result (or the error) lands as JSON in #out.
func OpenerPage(sidecar, link string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><html><head><title>app</title><script src="%s/connect/embed.js"></script></head>
<body><button id="go">Connect accounts</button><pre id="out"></pre><script>
document.getElementById("go").addEventListener("click", function () {
  TokenVault.connect(%q).then(function (r) { document.getElementById("out").textContent = JSON.stringify(r); },
                               function (e) { document.getElementById("out").textContent = "error: " + e.message; });
});
</script></body></html>`, sidecar, link)
	})
}
