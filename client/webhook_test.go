package client_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/client"
)

// Two secrets as the sidecar's configuration holds them (24 bytes each).
const (
	secretOld = "whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZA=="
	secretNew = "whsec_bmV3LXNlY3JldC1uZXctc2VjcmV0LW5ldw=="
)

// sign is the Standard Webhooks signature, written out independently of
// the code under test.
func sign(secret, id string, ts int64, body string) string {
	key, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id + "." + strconv.FormatInt(ts, 10) + "." + body))
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

func TestWebhookVerifier_Verify(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	const id, body = "evt_1", `{"type":"connection.created","timestamp":"2026-11-22T12:00:00Z","data":{}}`
	ts := now.Unix()
	for _, tc := range []struct {
		name    string
		secrets []string // the verifier's
		id      string
		ts      int64
		sig     string
		body    string
		wantErr error
	}{
		{"valid", []string{secretNew}, id, ts, sign(secretNew, id, ts, body), body, nil},
		{"valid, 4m59s old", []string{secretNew}, id, ts - 299, sign(secretNew, id, ts-299, body), body, nil},
		{"tampered body", []string{secretNew}, id, ts, sign(secretNew, id, ts, body), strings.Replace(body, "created", "revoked", 1), client.ErrWebhookSignature},
		{"tampered id", []string{secretNew}, "evt_2", ts, sign(secretNew, id, ts, body), body, client.ErrWebhookSignature},
		{"wrong secret", []string{secretOld}, id, ts, sign(secretNew, id, ts, body), body, client.ErrWebhookSignature},
		{"expired", []string{secretNew}, id, ts - 301, sign(secretNew, id, ts-301, body), body, client.ErrWebhookTimestamp},
		{"future", []string{secretNew}, id, ts + 301, sign(secretNew, id, ts+301, body), body, client.ErrWebhookTimestamp},
		{"signed by both, verifier knows the new", []string{secretNew}, id, ts,
			sign(secretOld, id, ts, body) + " " + sign(secretNew, id, ts, body), body, nil},
		{"signed by the old, verifier knows both", []string{secretOld, secretNew}, id, ts, sign(secretOld, id, ts, body), body, nil},
		{"other schemes ignored", []string{secretNew}, id, ts, "v1a,AAAA " + sign(secretNew, id, ts, body), body, nil},
		{"only another scheme", []string{secretNew}, id, ts, "v1a," + strings.TrimPrefix(sign(secretNew, id, ts, body), "v1,"), body, client.ErrWebhookSignature},
		{"garbage signature", []string{secretNew}, id, ts, "v1,!!! v1,", body, client.ErrWebhookSignature},
		{"no signature", []string{secretNew}, id, ts, "", body, client.ErrWebhookSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := client.NewWebhookVerifier(tc.secrets...)
			if err != nil {
				t.Fatal(err)
			}
			v.Now = func() time.Time { return now }
			h := http.Header{}
			h.Set("webhook-id", tc.id)
			h.Set("webhook-timestamp", strconv.FormatInt(tc.ts, 10))
			if tc.sig != "" {
				h.Set("webhook-signature", tc.sig)
			}
			err = v.Verify(h, []byte(tc.body))
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Errorf("Verify = %v; want %v", err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), strings.TrimPrefix(tc.sig, "v1,")) && tc.sig != "" {
				t.Errorf("error repeats the signature: %v", err)
			}
		})
	}
}

func TestWebhookVerifier_MalformedHeaders(t *testing.T) {
	v, _ := client.NewWebhookVerifier(secretNew)
	for name, h := range map[string]http.Header{
		"empty":             {},
		"no id":             {"Webhook-Timestamp": {"1"}, "Webhook-Signature": {"v1,AAAA"}},
		"timestamp not int": {"Webhook-Id": {"e"}, "Webhook-Timestamp": {"soon"}, "Webhook-Signature": {"v1,AAAA"}},
	} {
		if err := v.Verify(h, nil); !errors.Is(err, client.ErrWebhookSignature) {
			t.Errorf("%s: Verify = %v; want ErrWebhookSignature", name, err)
		}
	}
}

// A header map built by hand in lower case (as the spec spells the names)
// verifies like a canonical one.
func TestWebhookVerifier_LowerCaseHeaderMap(t *testing.T) {
	v, _ := client.NewWebhookVerifier(secretNew)
	ts := time.Now().Unix()
	h := http.Header{
		"webhook-id":        {"evt_9"},
		"webhook-timestamp": {strconv.FormatInt(ts, 10)},
		"webhook-signature": {sign(secretNew, "evt_9", ts, "{}")},
	}
	if err := v.Verify(h, []byte("{}")); err != nil {
		t.Errorf("Verify = %v", err)
	}
}

func TestNewWebhookVerifier_BadSecret(t *testing.T) {
	for _, s := range [][]string{nil, {"whsec_not base64!"}, {"whsec_"}} {
		if _, err := client.NewWebhookVerifier(s...); err == nil {
			t.Errorf("NewWebhookVerifier(%q) = nil error", s)
		} else if len(s) > 0 && strings.Contains(err.Error(), "not base64!") {
			t.Errorf("error repeats the secret: %v", err)
		}
	}
}

func TestWebhookVerifier_VerifyRequest(t *testing.T) {
	v, _ := client.NewWebhookVerifier(secretNew)
	ts := time.Now().Unix()
	body := `{"type":"connection.needs_reauth","timestamp":"2026-11-22T12:00:00Z","data":{"event_id":"evt_3","type":"connection.needs_reauth","sequence":3,"connection_sequence":2,"reason":"invalid_grant","connection":{"connection_id":"conn_1","owner":"alice","provider":"slack","status":"needs_reauth","generation":4}}}`
	r := httptest.NewRequest(http.MethodPost, "/hooks", bytes.NewReader([]byte(body)))
	r.Header.Set("webhook-id", "evt_3")
	r.Header.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
	r.Header.Set("webhook-signature", sign(secretNew, "evt_3", ts, body))
	ev, raw, err := v.VerifyRequest(r)
	if err != nil {
		t.Fatalf("VerifyRequest = %v", err)
	}
	if string(raw) != body || ev.Type != "connection.needs_reauth" || ev.Data.Sequence != 3 || ev.Data.ConnectionSequence != 2 ||
		ev.Data.Reason != "invalid_grant" || ev.Data.Connection.Owner != "alice" || ev.Data.Connection.Status != "needs_reauth" {
		t.Errorf("VerifyRequest decoded %+v", ev)
	}
}
