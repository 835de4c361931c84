package client

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// Webhook verification errors. Verify wraps one of them; none repeats a
// secret or a signature.
var (
	// ErrWebhookSignature: the headers are missing or malformed, or no
	// signature matches any of the secrets.
	ErrWebhookSignature = errors.New("tokenvault: webhook signature does not verify")
	// ErrWebhookTimestamp: webhook-timestamp is further from now than the
	// tolerance (a replay, or a badly wrong clock).
	ErrWebhookTimestamp = errors.New("tokenvault: webhook timestamp outside the tolerance")
)

// DefaultWebhookTolerance is how far webhook-timestamp may be from now, in
// either direction.
const DefaultWebhookTolerance = 5 * time.Minute

// A WebhookVerifier checks the Standard Webhooks signature that a tokenvault
// sidecar puts on its webhook requests: webhook-signature holds one or more
// space-separated "v1,<base64 HMAC-SHA256>" of "<webhook-id>.<webhook-timestamp>.<body>",
// one per secret the sidecar signs with. It is safe for concurrent use.
//
// The HMAC is the Standard Webhooks library's, the one the sidecar signs
// with; this type adds several secrets, a settable tolerance and clock.
type WebhookVerifier struct {
	hooks []*standardwebhooks.Webhook
	// Tolerance bounds the distance between webhook-timestamp and now;
	// zero means DefaultWebhookTolerance.
	Tolerance time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// NewWebhookVerifier returns a verifier accepting a signature by any of the
// given secrets ("whsec_<base64>", as configured on the sidecar). Pass the
// old and the new secret while rotating.
func NewWebhookVerifier(secrets ...string) (*WebhookVerifier, error) {
	if len(secrets) == 0 {
		return nil, errors.New("tokenvault: webhook verifier needs a secret")
	}
	v := &WebhookVerifier{}
	for i, s := range secrets {
		key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(strings.TrimSpace(s), "whsec_"))
		if err != nil || len(key) == 0 {
			return nil, fmt.Errorf("tokenvault: webhook secret %d is not whsec_ followed by standard base64", i+1)
		}
		wh, err := standardwebhooks.NewWebhookRaw(key)
		if err != nil {
			return nil, fmt.Errorf("tokenvault: webhook secret %d is empty", i+1)
		}
		v.hooks = append(v.hooks, wh)
	}
	return v, nil
}

// Verify checks the signature and timestamp of a webhook request with
// headers h and body (the raw bytes, before any JSON decoding). It returns
// nil, or an error wrapping ErrWebhookSignature or ErrWebhookTimestamp.
// Signatures are compared in constant time.
func (v *WebhookVerifier) Verify(h http.Header, body []byte) error {
	id, ts, sigs := header(h, "webhook-id"), header(h, "webhook-timestamp"), header(h, "webhook-signature")
	if id == "" || ts == "" || sigs == "" {
		return fmt.Errorf("%w: webhook-id, webhook-timestamp and webhook-signature are required", ErrWebhookSignature)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: webhook-timestamp is not a Unix time", ErrWebhookSignature)
	}
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	tol := v.Tolerance
	if tol <= 0 {
		tol = DefaultWebhookTolerance
	}
	if d := now().Sub(time.Unix(sec, 0)); d > tol || d < -tol {
		return fmt.Errorf("%w: %s off", ErrWebhookTimestamp, d.Round(time.Second))
	}
	// The library reads canonical header names and splits signatures on
	// single spaces; h may be a map built by hand, spaced loosely.
	canon := http.Header{}
	canon.Set("webhook-id", id)
	canon.Set("webhook-timestamp", ts)
	canon.Set("webhook-signature", strings.Join(strings.Fields(sigs), " "))
	for _, wh := range v.hooks {
		// The timestamp was checked above against v's tolerance and clock.
		if wh.VerifyIgnoringTimestamp(body, canon) == nil {
			return nil
		}
	}
	return fmt.Errorf("%w: no v1 signature matches", ErrWebhookSignature)
}

// header reads a header by its canonical name, or as spelled (lower case)
// in a map built by hand.
func header(h http.Header, name string) string {
	if v := h.Get(name); v != "" {
		return v
	}
	if vs := h[name]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}

// maxWebhookBody bounds the body VerifyRequest reads.
const maxWebhookBody = 1 << 20

// VerifyRequest reads r's body (at most 1 MiB), verifies it, and decodes the
// event. It returns the verified raw body too, for handlers that want it.
func (v *WebhookVerifier) VerifyRequest(r *http.Request) (*WebhookEvent, []byte, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxWebhookBody+1))
	if err != nil {
		return nil, nil, fmt.Errorf("tokenvault: read webhook body: %w", err)
	}
	if len(body) > maxWebhookBody {
		return nil, nil, fmt.Errorf("%w: body larger than %d bytes", ErrWebhookSignature, maxWebhookBody)
	}
	if err := v.Verify(r.Header, body); err != nil {
		return nil, nil, err
	}
	var ev WebhookEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		return nil, nil, fmt.Errorf("tokenvault: decode webhook: %w", err)
	}
	return &ev, body, nil
}

// A WebhookEvent is the body of a tokenvault webhook request (Standard
// Webhooks: type, timestamp, data). Data carries the fields of the gRPC
// Event message, the connection without token material.
type WebhookEvent struct {
	Type      string    `json:"type"`
	Timestamp time.Time `json:"timestamp"`
	Data      struct {
		// EventID equals the webhook-id header; deduplicate on it.
		EventID string `json:"event_id"`
		Type    string `json:"type"`
		// Sequence orders every event of the sidecar; ConnectionSequence
		// those of one connection: an event with a lower
		// ConnectionSequence than one already handled is stale.
		Sequence           uint64    `json:"sequence"`
		ConnectionSequence uint64    `json:"connection_sequence"`
		Time               time.Time `json:"time"`
		Reason             string    `json:"reason,omitempty"`
		// Imported is set on the connection.created event of a
		// connection brought in by ImportConnections.
		Imported   bool              `json:"imported,omitempty"`
		Connection WebhookConnection `json:"connection"`
	} `json:"data"`
}

// WebhookConnection is a connection as a webhook describes it: the
// Connection message's fields, status as "active", "needs_reauth" or
// "revoked".
type WebhookConnection struct {
	ConnectionID      string            `json:"connection_id"`
	Owner             string            `json:"owner"`
	Tenant            string            `json:"tenant,omitempty"`
	Provider          string            `json:"provider"`
	Label             string            `json:"label,omitempty"`
	Purpose           string            `json:"purpose,omitempty"`
	Status            string            `json:"status"`
	StatusReason      string            `json:"status_reason,omitempty"`
	RequestedScopes   []string          `json:"requested_scopes,omitempty"`
	GrantedScopes     []string          `json:"granted_scopes,omitempty"`
	MissingScopes     []string          `json:"missing_scopes,omitempty"`
	Account           string            `json:"account,omitempty"`
	Metadata          map[string]string `json:"metadata,omitempty"`
	CreateTime        time.Time         `json:"create_time,omitzero"`
	UpdateTime        time.Time         `json:"update_time,omitzero"`
	LastRefreshTime   time.Time         `json:"last_refresh_time,omitzero"`
	LastValidatedTime time.Time         `json:"last_validated_time,omitzero"`
	TokenExpireTime   time.Time         `json:"token_expire_time,omitzero"`
	Generation        uint64            `json:"generation"`
	Credentials       []string          `json:"credentials,omitempty"`
	AppMetadata       map[string]string `json:"app_metadata,omitempty"`
	CreatedBy         string            `json:"created_by,omitempty"`
	Imported          bool              `json:"imported,omitempty"`
}
