package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// curlBin finds curl (make test installs it where it is missing). Without
// it the test skips, except under CI (CI=true), where it fails.
func curlBin(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("curl"); err == nil {
		return p
	}
	const msg = "curl not found: make test installs it (Debian package curl)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// curl runs curl against the sidecar's JSON gateway at base with the API
// key in a header file (never in argv, where ps shows it). It returns the
// HTTP status and the body.
func curl(t *testing.T, bin, key string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := []string{"-sS", "--max-time", "20", "-w", "\n%{http_code}"}
	if key != "" {
		hf := filepath.Join(t.TempDir(), "auth")
		if err := os.WriteFile(hf, []byte("authorization: Bearer "+key+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		full = append(full, "-H", "@"+hf)
	}
	cmd := exec.CommandContext(ctx, bin, append(full, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("curl %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	i := strings.LastIndexByte(out.String(), '\n')
	n, err := strconv.Atoi(out.String()[i+1:])
	if i < 0 || err != nil {
		t.Fatalf("curl printed %q: no status", out.String())
	}
	return n, out.String()[:i]
}

// jsonReason returns the ErrorInfo reason of a JSON error body.
func jsonReason(t *testing.T, body string) string {
	t.Helper()
	var st struct {
		Details []struct {
			Type   string `json:"@type"`
			Reason string `json:"reason"`
		} `json:"details"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("error body %q is not JSON: %v", body, err)
	}
	for _, d := range st.Details {
		if d.Type == "type.googleapis.com/google.rpc.ErrorInfo" {
			return d.Reason
		}
	}
	return ""
}

// TestCurl_Walkthrough drives the running sidecar's JSON gateway with real
// curl, as the README's curl walkthrough does: on the gRPC port, a user
// connected, a token by user and provider, a revocation, the audit.
func TestCurl_Walkthrough(t *testing.T) {
	bin := curlBin(t)
	r, _ := startDev(t)
	base := "http://" + r.GRPCAddr
	ctJSON := "content-type: application/json"

	// Without a key: 401 and the reason.
	code, body := curl(t, bin, "", base+"/v1/providers")
	if code != 401 || jsonReason(t, body) != "UNAUTHENTICATED" {
		t.Fatalf("providers without a key = %d %s; want 401 UNAUTHENTICATED", code, body)
	}
	if code, body := curl(t, bin, r.AppKey, base+"/v1/providers"); code != 200 || !strings.Contains(body, `"name":"sandbox"`) {
		t.Fatalf("providers = %d %s; want the sandbox", code, body)
	}

	// Connect carol; the browser (curl -L, with its cookie engine on: the
	// start URL binds the flow to it) follows the URL to "Connected".
	code, body = curl(t, bin, r.AppKey, "-H", ctJSON, "-d", `{"owner":"carol","provider":"sandbox","scopes":["read"]}`, base+"/v1/connect")
	var started struct {
		AuthorizationURL string `json:"authorizationUrl"`
	}
	if err := json.Unmarshal([]byte(body), &started); code != 200 || err != nil || started.AuthorizationURL == "" {
		t.Fatalf("connect = %d %s (%v)", code, body, err)
	}
	if code, body := curl(t, bin, "", "-L", "-b", "", started.AuthorizationURL); code != 200 || !strings.Contains(body, "Connected") {
		t.Fatalf("the connect flow ended with %d %s", code, body)
	}

	// A token by user and provider.
	token := `{"selector":{"owner":"carol","provider":"sandbox"},"minValidFor":"60s"}`
	code, body = curl(t, bin, r.AppKey, "-H", ctJSON, "-d", token, base+"/v1/token")
	var tok struct {
		AccessToken  string `json:"accessToken"`
		ConnectionID string `json:"connectionId"`
	}
	if err := json.Unmarshal([]byte(body), &tok); code != 200 || err != nil || tok.AccessToken == "" || tok.ConnectionID == "" {
		t.Fatalf("token = %d %s (%v)", code, body, err)
	}
	id := tok.ConnectionID

	// Both an id and a selector: refused, saying so.
	code, body = curl(t, bin, r.AppKey, "-H", ctJSON, "-d", `{"connectionId":"`+id+`","selector":{"owner":"carol","provider":"sandbox"}}`, base+"/v1/token")
	if code != 400 || jsonReason(t, body) != "INVALID_ARGUMENT" || !strings.Contains(body, "not both") {
		t.Errorf("token with both = %d %s; want 400 INVALID_ARGUMENT, not both", code, body)
	}

	// The connection by selector, then revoked by the operator (the
	// application may not).
	if code, body := curl(t, bin, r.AppKey, base+"/v1/connections:lookup?selector.owner=carol&selector.provider=sandbox"); code != 200 || !strings.Contains(body, id) {
		t.Errorf("lookup = %d %s; want %s", code, body, id)
	}
	revoke := base + "/v1/connections/" + id + ":revoke"
	if code, body := curl(t, bin, r.AppKey, "-H", ctJSON, "-d", `{"reason":"curl"}`, revoke); code != 403 || jsonReason(t, body) != "PERMISSION_DENIED" {
		t.Errorf("revoke with the application key = %d %s; want 403 PERMISSION_DENIED", code, body)
	}
	if code, body := curl(t, bin, r.OperatorKey, "-H", ctJSON, "-d", `{"reason":"curl"}`, revoke); code != 200 || !strings.Contains(body, "CONNECTION_STATUS_REVOKED") {
		t.Errorf("revoke = %d %s; want the revoked connection", code, body)
	}
	if code, body := curl(t, bin, r.AppKey, "-H", ctJSON, "-d", token, base+"/v1/token"); code != 400 || jsonReason(t, body) != "NOT_CONNECTED" {
		t.Errorf("token after the revocation = %d %s; want 400 NOT_CONNECTED", code, body)
	}

	// The audit, by the operator.
	code, body = curl(t, bin, r.OperatorKey, base+"/v1/audit/events?connectionId="+id)
	if code != 200 || !strings.Contains(body, `"caller":"dev-operator"`) || !strings.Contains(body, `"method":"/tokenvault.v1.TokenVaultService/GetAccessToken"`) {
		t.Errorf("audit = %d %s; want the revocation and the token reads", code, body)
	}
}

// TestCurl_WebhookVerifierInTheREADME runs the README's shell verifier on
// a delivery signed as the Standard Webhooks spec says: it accepts it, and
// refuses a changed body, another secret's signature and an old timestamp.
func TestCurl_WebhookVerifierInTheREADME(t *testing.T) {
	for _, tool := range []string{"bash", "openssl", "base64", "od"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found: make test installs it", tool)
			}
			t.Skipf("%s not found", tool)
		}
	}
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(readme), "<!-- webhook-verify-sh")
	if !ok {
		t.Fatal("README has no webhook-verify-sh block")
	}
	_, block, _ = strings.Cut(block, "```sh\n")
	block, _, _ = strings.Cut(block, "```")

	key := make([]byte, 32)
	rand.Read(key)
	secret := "whsec_" + base64.StdEncoding.EncodeToString(key)
	sign := func(key []byte, id, ts, body string) string {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(id + "." + ts + "." + body))
		return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
	}
	other := make([]byte, 32)
	rand.Read(other)
	body := `{"type":"connection.needs_reauth","data":{"connection":{"owner":"user-17"}}}` + "\n"
	now := strconv.FormatInt(time.Now().Unix(), 10)
	old := strconv.FormatInt(time.Now().Add(-10*time.Minute).Unix(), 10)
	for _, tc := range []struct {
		name, ts, sig, body string
		want                bool
	}{
		{"signed", now, sign(key, "evt_1", now, body), body, true},
		{"one of two signatures (rotation)", now, sign(other, "evt_1", now, body) + " " + sign(key, "evt_1", now, body), body, true},
		{"body changed", now, sign(key, "evt_1", now, body), strings.Replace(body, "17", "18", 1), false},
		{"another secret", now, sign(other, "evt_1", now, body), body, false},
		{"too old", old, sign(key, "evt_1", old, body), body, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bf := filepath.Join(t.TempDir(), "body.json")
			if err := os.WriteFile(bf, []byte(tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("bash", "-c", block+"\nverify_webhook \"$1\" \"$2\" \"$3\" \"$4\"", "verify", "evt_1", tc.ts, tc.sig, bf)
			cmd.Env = append(os.Environ(), "TOKENVAULT_WEBHOOK_SECRET="+secret)
			out, err := cmd.CombinedOutput()
			if _, exit := err.(*exec.ExitError); err != nil && !exit {
				t.Fatal(err)
			}
			if got := err == nil; got != tc.want {
				t.Errorf("verify_webhook = %v (%s); want %v", got, out, tc.want)
			}
		})
	}
}
