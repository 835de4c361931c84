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
	if err != nil || u.Query().Get("state") == "" || u.Query().Get("client_id") == "" || u.Query().Get("scope") != "read" {
		t.Fatalf("connect printed %q (%v); want an authorization URL with state, client_id and scope read", out, err)
	}
	resp, err := http.Get(out)
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
