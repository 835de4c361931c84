package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// connectOwner runs the sandbox's connect flow for owner and returns the
// connection id.
func connectOwner(t *testing.T, r ready, owner string) string {
	t.Helper()
	ctx := context.Background()
	api := dialTest(t, r.GRPCAddr)
	sc, err := api.StartConnect(ctx, &tvv1.StartConnectRequest{Owner: owner, Provider: "sandbox"})
	if err != nil {
		t.Fatalf("StartConnect = %v", err)
	}
	resp, err := newBrowser(t).Get(sc.AuthorizationUrl) // the start URL binds the flow to this browser
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	l, err := api.ListConnections(ctx, &tvv1.ListConnectionsRequest{Owner: owner})
	if err != nil || len(l.Connections) != 1 {
		t.Fatalf("ListConnections(%s) = %v, %v", owner, l, err)
	}
	return l.Connections[0].ConnectionId
}

// The operator's key commands and the quarantine, end to end on the real
// sidecar: rotate, retire (one term left), rekey to a new master key file;
// a restart with the old key is refused with its id, one with the new key
// serves everything; a record then damaged in the bbolt file leaves the
// others served, answers RECORD_UNREADABLE, shows in the gauge and in
// `tokenvault records unreadable`.
func TestE2E_KeysAndQuarantine(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	r, _ := startDev(t, "--data-dir", dataDir)
	owners := []string{"ann", "ben", "cat"}
	var ids []string
	for _, o := range owners {
		ids = append(ids, connectOwner(t, r, o))
	}
	if out := runCLI(t, r.GRPCAddr, "keys", "rotate"); !strings.Contains(out, "key term 2") {
		t.Fatalf("keys rotate: %q", out)
	}
	if out := runCLI(t, r.GRPCAddr, "keys", "retire"); !strings.Contains(out, "retired terms [1]") {
		t.Fatalf("keys retire: %q", out)
	}
	newMK, err := seal.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	newKeyFile := filepath.Join(t.TempDir(), "new.key")
	if err := os.WriteFile(newKeyFile, []byte(newMK.Encode()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := runCLI(t, r.GRPCAddr, "keys", "rekey", "--new-master-key-file", newKeyFile); !strings.Contains(out, newMK.ID()) {
		t.Fatalf("keys rekey: %q; want the new key's id %s", out, newMK.ID())
	}
	// Served throughout.
	api := dialTest(t, r.GRPCAddr)
	ctx := context.Background()
	for _, id := range ids {
		if _, err := api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, ForceRefresh: true}); err != nil {
			t.Fatalf("GetAccessToken(%s) after rekey = %v", id, err)
		}
	}
	r.Stop()

	// The dev data dir's master.key is the old key: refused, by id.
	oldKey, err := os.ReadFile(filepath.Join(dataDir, "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	oldMK, err := seal.ParseMasterKey(oldKey)
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	code := Main(sctx, []string{"serve", "--dev", "--data-dir", dataDir, "--grpc-addr", "127.0.0.1:0", "--public-addr", "127.0.0.1:0",
		"--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"}, func(string) string { return "" }, io.Discard, &stderr)
	cancel()
	if code == 0 || !strings.Contains(stderr.String(), "does not open the keyring") || !strings.Contains(stderr.String(), oldMK.ID()) {
		t.Fatalf("serve with the old master key exited %d: %s", code, stderr.String())
	}
	if err := os.WriteFile(filepath.Join(dataDir, "master.key"), []byte(newMK.Encode()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Damage one record in the file, then start with the new key.
	st, err := bolt.Open(filepath.Join(dataDir, "tokenvault.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	bad := ids[1]
	val, _, err := st.Get(ctx, "conn/"+bad)
	if err == nil {
		val[20] ^= 0xff
		_, err = st.Apply(ctx, vault.Op{Key: "conn/" + bad, Value: val, IfRev: vault.AnyRev})
	}
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	r, logs := startDev(t, "--data-dir", dataDir)
	api = dialTest(t, r.GRPCAddr)
	for _, id := range ids {
		_, err := api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id})
		switch {
		case id == bad && (status.Code(err) != codes.DataLoss || reasonOf(err) != "RECORD_UNREADABLE"):
			t.Fatalf("GetAccessToken(damaged) = %v; want DATA_LOSS, RECORD_UNREADABLE", err)
		case id != bad && err != nil:
			t.Fatalf("GetAccessToken(%s) with the new key = %v", id, err)
		}
	}
	if out := runCLI(t, r.GRPCAddr, "records", "unreadable"); !strings.Contains(out, "conn/"+bad) || !strings.Contains(out, "authentication_failed") {
		t.Fatalf("records unreadable: %q", out)
	}
	resp, err := http.Get("http://" + r.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(m), "\ntokenvault_records_unreadable 1\n") {
		t.Fatalf("metrics lack tokenvault_records_unreadable 1")
	}
	if n := strings.Count(logs.String(), "conn/"+bad); n != 1 {
		t.Fatalf("the damaged record's key is logged %d times; want once:\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), newMK.ID()) {
		t.Errorf("the start does not log the master key's id %s", newMK.ID())
	}
}
