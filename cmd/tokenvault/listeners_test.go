package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serveArgs runs `tokenvault serve` in-process with args (plus a ready
// file) and waits until it serves, or until it exits: then it returns the
// exit code and the logs, and a zero ready.
func serveArgs(t *testing.T, args ...string) (ready, *syncBuffer, int) {
	t.Helper()
	readyFile := filepath.Join(t.TempDir(), "ready.json")
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, append(args, "--ready-file", readyFile), func(string) string { return "" }, io.Discard, logs)
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("serve did not stop within 15s")
		}
	}
	t.Cleanup(stop)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if b, err := os.ReadFile(readyFile); err == nil && len(b) > 0 {
			var r ready
			if err := json.Unmarshal(b, &r); err != nil {
				t.Fatal(err)
			}
			r.Stop = stop
			return r, logs, 0
		}
		select {
		case code := <-done:
			stopped = true
			return ready{}, logs, code
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("serve not ready after 10s; logs:\n%s", logs)
	return ready{}, nil, 0
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

// The sidecar's four listeners each serve their audience: the public one
// the callback and (dev mode) the sandbox, the health one /healthz and a
// /readyz that checks the store and the keyring, the metrics one /metrics.
func TestServe_ListenersByAudience(t *testing.T) {
	r, _ := startDev(t)
	rows := []struct {
		addr, path string
		want       int
		body       string
	}{
		{r.PublicAddr, "/oauth/callback/sandbox?state=x&code=y", http.StatusBadRequest, "no longer valid"},
		{r.PublicAddr, "/sandbox/userinfo", http.StatusUnauthorized, ""},
		{r.PublicAddr, "/healthz", http.StatusNotFound, ""},
		{r.PublicAddr, "/readyz", http.StatusNotFound, ""},
		{r.PublicAddr, "/metrics", http.StatusNotFound, ""},
		{r.HealthAddr, "/healthz", http.StatusOK, "ok"},
		{r.HealthAddr, "/readyz", http.StatusOK, "ok serving\nok store\nok keyring\n"},
		{r.HealthAddr, "/metrics", http.StatusNotFound, ""},
		{r.HealthAddr, "/oauth/callback/sandbox?state=x&code=y", http.StatusNotFound, ""},
		{r.HealthAddr, "/sandbox/userinfo", http.StatusNotFound, ""},
		{r.MetricsAddr, "/metrics", http.StatusOK, "tokenvault_connections"},
		{r.MetricsAddr, "/readyz", http.StatusNotFound, ""},
		{r.MetricsAddr, "/oauth/callback/sandbox?state=x&code=y", http.StatusNotFound, ""},
	}
	for _, row := range rows {
		if code, body := get(t, "http://"+row.addr+row.path); code != row.want || !strings.Contains(body, row.body) {
			t.Errorf("GET http://%s%s = %d %.100q; want %d with %q", row.addr, row.path, code, body, row.want, row.body)
		}
	}
}

// `tokenvault health` exits 0 against a ready (or, with --live, alive)
// sidecar and 1 when it cannot tell: nothing listening, or not ready.
func TestHealthCommand(t *testing.T) {
	r, _ := startDev(t)
	health := func(args ...string) (int, string, string) {
		var out, errb strings.Builder
		code := Main(context.Background(), append([]string{"health"}, args...), func(string) string { return "" }, &out, &errb)
		return code, out.String(), errb.String()
	}
	if code, out, errs := health("--addr", r.HealthAddr); code != 0 || !strings.Contains(out, "ok store") {
		t.Errorf("health = %d %q %q; want 0", code, out, errs)
	}
	if code, out, errs := health("--addr", r.HealthAddr, "--live", "-q"); code != 0 || out != "" {
		t.Errorf("health --live -q = %d %q %q; want 0 and no output", code, out, errs)
	}
	// The address from the environment, as a probe's container sets it.
	var out strings.Builder
	env := func(k string) string {
		if k == "TOKENVAULT_HEALTH_ADDR" {
			return r.HealthAddr
		}
		return ""
	}
	if code := Main(context.Background(), []string{"health", "-q"}, env, &out, io.Discard); code != 0 {
		t.Errorf("health with $TOKENVAULT_HEALTH_ADDR = %d; want 0", code)
	}
	// The public listener is no health listener.
	if code, _, errs := health("--addr", r.PublicAddr); code != 1 || !strings.Contains(errs, "404") {
		t.Errorf("health against the public listener = %d %q; want 1 (404)", code, errs)
	}
	// Not ready: 503 and the failed check are passed on.
	unready := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "ok serving\nfail store: etcd unreachable\n")
	}))
	defer unready.Close()
	if code, _, errs := health("--addr", strings.TrimPrefix(unready.URL, "http://")); code != 1 || !strings.Contains(errs, "fail store: etcd unreachable") {
		t.Errorf("health against an unready sidecar = %d %q; want 1 naming the check", code, errs)
	}
	r.Stop()
	if code, _, _ := health("--addr", r.HealthAddr, "--timeout", "1s"); code != 1 {
		t.Errorf("health after stop = %d; want 1", code)
	}
}

// The old http_addr (and --http-addr) still sets the callback's listener,
// with a deprecation message that says where health and metrics went;
// naming the listener twice is refused.
func TestServe_HTTPAddrDeprecated(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "tokenvault.yaml")
	if err := os.WriteFile(cfg, []byte("http_addr: 127.0.0.1:0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"serve", "--dev", "--data-dir", filepath.Join(dir, "data"), "--grpc-addr", "127.0.0.1:0",
		"--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"config", []string{"--config", cfg}},
		{"flag", []string{"--http-addr", "127.0.0.1:0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, logs, code := serveArgs(t, append(base, tc.args...)...)
			if code != 0 || r.PublicAddr == "" {
				t.Fatalf("serve exited %d; logs:\n%s", code, logs)
			}
			if c, body := get(t, "http://"+r.PublicAddr+"/oauth/callback/sandbox?state=x"); c != http.StatusBadRequest || !strings.Contains(body, "no longer valid") {
				t.Errorf("callback on the deprecated address = %d; want its error page", c)
			}
			if c, _ := get(t, "http://"+r.PublicAddr+"/metrics"); c != http.StatusNotFound {
				t.Errorf("/metrics on the deprecated address = %d; want 404", c)
			}
			r.Stop()
			l := logs.String()
			for _, want := range []string{"is deprecated", "public_addr", "/readyz moved to health_addr (127.0.0.1:0)", "/metrics to metrics_addr (127.0.0.1:0)"} {
				if !strings.Contains(l, want) {
					t.Errorf("logs lack %q:\n%s", want, l)
				}
			}
		})
	}
	both := filepath.Join(dir, "both.yaml")
	if err := os.WriteFile(both, []byte("http_addr: 127.0.0.1:0\npublic_addr: 127.0.0.1:0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"--config", both}, {"--http-addr", "127.0.0.1:0", "--public-addr", "127.0.0.1:0"}} {
		_, logs, code := serveArgs(t, append(base, args...)...)
		if code != 1 || !strings.Contains(logs.String(), "deprecated name of") {
			t.Errorf("serve %v = %d; want 1 saying http_addr is the deprecated name:\n%s", args, code, logs)
		}
	}
}

// The API never listens beyond loopback, allow_non_loopback or not; the
// other listeners may, when allowed. (Checked before anything binds.)
func TestServe_ListenAddressRules(t *testing.T) {
	dir := t.TempDir()
	base := []string{"serve", "--dev", "--data-dir", filepath.Join(dir, "data"), "--grpc-addr", "127.0.0.1:0",
		"--public-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--grpc-addr", "0.0.0.0:7070", "--allow-non-loopback"}, "the token API listens only on loopback or a unix socket"},
		{[]string{"--grpc-addr", "10.1.2.3:7070"}, "the token API listens only on loopback"},
		{[]string{"--public-addr", "0.0.0.0:7071"}, `listen address "0.0.0.0:7071" is not loopback`},
		{[]string{"--health-addr", "0.0.0.0:7072"}, `listen address "0.0.0.0:7072" is not loopback`},
		{[]string{"--metrics-addr", "0.0.0.0:7073"}, `listen address "0.0.0.0:7073" is not loopback`},
	} {
		_, logs, code := serveArgs(t, append(base, tc.args...)...)
		if code != 1 || !strings.Contains(logs.String(), tc.want) {
			t.Errorf("serve %v = %d; want 1 with %q:\n%s", tc.args, code, tc.want, logs)
		}
	}
	for _, a := range []string{"0.0.0.0:7071", "10.1.2.3:7071", "[::]:7071"} {
		if err := checkLoopback(a, true); err != nil {
			t.Errorf("checkLoopback(%q, allowed) = %v; want nil", a, err)
		}
	}
	for _, a := range []string{"127.0.0.1:7070", "localhost:7070", "[::1]:7070", "unix:///run/tokenvault/grpc.sock"} {
		if err := checkAPIAddr(a); err != nil {
			t.Errorf("checkAPIAddr(%q) = %v; want nil", a, err)
		}
	}
}

func TestVersionCommand(t *testing.T) {
	var out strings.Builder
	if code := Main(context.Background(), []string{"version"}, func(string) string { return "" }, &out, io.Discard); code != 0 {
		t.Fatalf("version exited %d", code)
	}
	if f := strings.Fields(out.String()); len(f) != 4 || f[0] != "tokenvault" || !strings.HasPrefix(f[2], "go") {
		t.Errorf("version printed %q; want tokenvault <version> <go version> <os>/<arch>", out.String())
	}
}
