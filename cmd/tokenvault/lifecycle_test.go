package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// startSlackSidecar runs the sidecar with one provider, slack, served by
// fake, and an operator key; it returns the gRPC address and the key.
func startSlackSidecar(t *testing.T, fake *providertest.Service) (addr, opKey string, logs *syncBuffer) {
	t.Helper()
	dir := t.TempDir()
	opKey = "tvk_operator_for_lifecycle_0000"
	cfg := fmt.Sprintf(`data_dir: %q
providers:
  slack:
    kind: slack
    client_id: %s
    client_secret_env: SLACK_SECRET
    scopes: [chat:write]
    options: {auth_base: %q, api_base: %q}
auth:
  api_keys:
    - {name: migrator, key_env: OPS_KEY, role: operator}
`, filepath.Join(dir, "data"), providertest.DefaultClientID, fake.URL(), fake.URL()+"/api")
	cfgPath := filepath.Join(dir, "tokenvault.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	mk, _ := seal.GenerateMasterKey()
	env := func(k string) string {
		switch k {
		case "TOKENVAULT_MASTER_KEY":
			return mk.Encode()
		case "SLACK_SECRET":
			return providertest.DefaultClientSecret
		case "OPS_KEY":
			return opKey
		}
		return ""
	}
	ctx, cancel := context.WithCancel(context.Background())
	logs = &syncBuffer{}
	done := make(chan int, 1)
	readyFile := filepath.Join(dir, "ready.json")
	go func() {
		done <- Main(ctx, []string{"serve", "--config", cfgPath, "--grpc-addr", "127.0.0.1:0", "--public-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--ready-file", readyFile}, env, io.Discard, logs)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("serve exited %d; logs:\n%s", code, logs)
			}
		case <-time.After(15 * time.Second):
			t.Error("serve did not stop")
		}
	})
	var r ready
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if b, err := os.ReadFile(readyFile); err == nil && json.Unmarshal(b, &r) == nil && r.GRPCAddr != "" {
			return r.GRPCAddr, opKey, logs
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready; logs:\n%s", logs)
		}
	}
}

// cli runs a tokenvault command with key against addr, feeding stdin to
// it, and returns its exit code, stdout and stderr.
func cli(addr, key string, stdin string, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	env := func(k string) string {
		switch k {
		case "TOKENVAULT_ADDR":
			return addr
		case "TOKENVAULT_API_KEY":
			return key
		}
		return ""
	}
	old := os.Stdin
	if stdin != "" {
		f, err := os.CreateTemp("", "stdin")
		if err == nil {
			f.WriteString(stdin)
			f.Seek(0, 0)
			os.Stdin = f
			defer func() { os.Stdin = old; f.Close(); os.Remove(f.Name()) }()
		}
	}
	code := Main(context.Background(), args, env, &out, &errb)
	return code, out.String(), errb.String()
}

// Moving to tokenvault: grants exported from another broker are imported
// from JSON Lines, Slack's long-lived tokens are exchanged for rotating
// ones once the app turns rotation on, and a user is erased.
func TestE2E_ImportExchangeDelete(t *testing.T) {
	fake := providertest.StartSlack(providertest.ServiceOptions{RedirectURI: "http://127.0.0.1/unused", NonExpiring: true})
	t.Cleanup(fake.Close)
	addr, key, logs := startSlackSidecar(t, fake)

	// An export of three legacy installs: two good, one with a dead token,
	// plus lines that must be refused without stopping the rest.
	var lines []string
	var tokens []string
	for i, owner := range []string{"alice", "bob", "carol"} {
		at, _ := fake.IssueGrant("bot", []string{"chat:write"})
		tokens = append(tokens, at)
		if i == 2 {
			fake.RevokeToken(at)
		}
		lines = append(lines, fmt.Sprintf(`{"owner":%q,"provider":"slack","account":"T0FAKETEAM","metadata":{"team_id":"T0FAKETEAM"},"appMetadata":{"crm":"c-%d"},"credentials":[{"accessToken":%q,"scopes":["chat:write"]}]}`, owner, i, at))
	}
	lines = append(lines,
		`{"owner":"dave","provider":"slack","credentials":[{"accessToken":"`+tokens[0]+`"`, // truncated JSON
		`{"owner":"erin","provider":"nope","credentials":[{"accessToken":"x"}]}`,
		`{"owner":"frank","provider":"slack","tokens":[{"accessToken":"`+tokens[1]+`"}]}`, // wrong field name
		`{"owner":"alice","provider":"slack","credentials":[{"accessToken":"another"}]}`,  // duplicate identity
	)
	file := filepath.Join(t.TempDir(), "export.jsonl")
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// A dry run reports every line and writes nothing.
	code, out, _ := cli(addr, key, "", "connections", "import", "--dry-run", file)
	if code != 1 || !strings.Contains(out, "3 valid (dry run)") || !strings.Contains(out, "3 refused") {
		t.Fatalf("import --dry-run exited %d:\n%s", code, out)
	}
	if code, out, _ := cli(addr, key, "", "connections", "list", "-o", "json"); code != 0 || strings.Contains(out, "alice") {
		t.Fatalf("after a dry run: %s", out)
	}

	// The real import, from standard input, with --verify: the dead token
	// is imported as needs_reauth.
	code, out, errOut := cli(addr, key, strings.Join(lines, "\n"), "connections", "import", "--verify", "-")
	if code != 1 || !strings.Contains(out, "3 imported") || !strings.Contains(out, "1 duplicates") || !strings.Contains(out, "3 refused") {
		t.Fatalf("import exited %d:\n%s\n%s", code, out, errOut)
	}
	for _, want := range []string{"line 4: refused (malformed JSON", "line 5: refused (unknown provider \"nope\")", "line 6: refused (unknown field \"tokens\")", "line 7: duplicate"} {
		if !strings.Contains(out, want) {
			t.Errorf("import report lacks %q:\n%s", want, out)
		}
	}
	for _, tok := range tokens {
		if strings.Contains(out+errOut+logs.String(), tok) {
			t.Errorf("a token of the file reached the report or the log")
		}
	}
	// Rerunning the import creates nothing twice.
	if _, out, _ := cli(addr, key, "", "connections", "import", file); !strings.Contains(out, "0 imported") || !strings.Contains(out, "4 duplicates") {
		t.Errorf("rerun:\n%s", out)
	}
	_, out, _ = cli(addr, key, "", "connections", "list", "-o", "json")
	var list tvv1.ListConnectionsResponse
	if err := unmarshalJSON(out, &list); err != nil {
		t.Fatal(err)
	}
	ids := map[string]*tvv1.Connection{}
	for _, c := range list.Connections {
		ids[c.Owner] = c
	}
	if len(list.Connections) != 3 || ids["carol"].Status != tvv1.ConnectionStatus_CONNECTION_STATUS_NEEDS_REAUTH || !ids["alice"].Imported {
		t.Fatalf("inventory after import: %s", out)
	}

	// Exchange: refused while the app has no rotation, then done once.
	if code, out, _ := cli(addr, key, "", "connections", "exchange", "--provider", "slack"); code != 1 || !strings.Contains(out, "token_rotation_not_enabled") {
		t.Errorf("exchange before rotation exited %d:\n%s", code, out)
	}
	fake.EnableRotation()
	code, out, _ = cli(addr, key, "", "connections", "exchange", "--provider", "slack")
	if code != 0 || !strings.Contains(out, "2 exchanged") {
		t.Fatalf("exchange exited %d:\n%s", code, out)
	}
	code, tok, _ := cli(addr, key, "", "token", ids["alice"].ConnectionId)
	tok = strings.TrimSpace(tok)
	if code != 0 || tok == tokens[0] || !fake.IsActive(tok) {
		t.Errorf("token after exchange = %q (exit %d); want a new live token", tok, code)
	}
	if _, out, _ := cli(addr, key, "", "connections", "exchange", "--provider", "slack"); !strings.Contains(out, "0 exchanged") {
		t.Errorf("exchange rerun:\n%s", out)
	}

	// Erase alice: revoked at Slack, gone from the inventory.
	if code, out, errOut := cli(addr, key, "", "connections", "delete-owner", "alice", "--reason", "account closed"); code != 0 || !strings.Contains(out, "1 connections deleted") {
		t.Fatalf("delete-owner exited %d:\n%s%s", code, out, errOut)
	}
	if fake.IsActive(tok) {
		t.Error("alice's token is still live at Slack after her erasure")
	}
	if _, out, _ := cli(addr, key, "", "connections", "list", "--owner", "alice", "-o", "json"); strings.Contains(out, "alice") {
		t.Errorf("alice still listed:\n%s", out)
	}
}

func unmarshalJSON(s string, m *tvv1.ListConnectionsResponse) error {
	return protojson.Unmarshal([]byte(s), m)
}
