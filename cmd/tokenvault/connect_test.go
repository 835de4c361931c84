package main

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
)

// TestConnectCmd_PlainURL: `tokenvault connect OWNER PROVIDER` prints the
// authorization URL as a browser takes it (no \u0026 escapes, as grpcurl's
// JSON has), and a browser opening it connects the owner.
func TestConnectCmd_PlainURL(t *testing.T) {
	r, _ := startDev(t)
	out := strings.TrimSpace(runCLI(t, r.GRPCAddr, "connect", "carol", "sandbox", "--scopes", "read"))
	if strings.Contains(out, `\u0026`) || strings.Count(out, "\n") != 0 {
		t.Fatalf("connect printed %q; want one plain URL", out)
	}
	u, err := url.Parse(out)
	if err != nil || u.Path != "/connect/start" || u.Query().Get("flow") == "" || u.Query().Has("state") {
		t.Fatalf("connect printed %q (%v); want the sidecar's start URL", out, err)
	}
	// Opened in a browser other than the one that follows it, the flow
	// does not complete: the start URL bound it to the first.
	first, second := newBrowser(t), newBrowser(t)
	var callback string
	first.CheckRedirect = func(req *http.Request, _ []*http.Request) error {
		if strings.Contains(req.URL.Path, "/oauth/callback/") {
			callback = req.URL.String()
			return http.ErrUseLastResponse
		}
		return nil
	}
	resp, err := first.Get(out)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	pu, _ := url.Parse(callback)
	if pu == nil || pu.Query().Get("code") == "" {
		t.Fatalf("the sandbox did not send the browser to the callback (%d)", resp.StatusCode)
	}
	if resp, err := second.Get(callback); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("the callback in another browser = %v, %v; want 403", resp, err)
	}
	first.CheckRedirect = nil
	resp, err = first.Get(callback)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("opening the printed URL ended with %d; want the connected page", resp.StatusCode)
	}
	l, err := dialTest(t, r.GRPCAddr).ListConnections(context.Background(), &tvv1.ListConnectionsRequest{Owner: "carol"})
	if err != nil || len(l.Connections) != 1 {
		t.Errorf("ListConnections(carol) = %v, %v; want the new connection", l, err)
	}
}
