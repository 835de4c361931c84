package vault_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/audit"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/seal"
	"github.com/tokenvault/tokenvault/vault/webhook"
)

// testdata/store-v1.db was written by tokenvault before the vault package
// was split (seal, audit and webhook were part of vault then): a keyring
// rotated once and re-wrapped, four connections (one refreshed, one
// revoked), a pending connect flow, their events, three audit records and
// a webhook endpoint's cursor. testdata/store-v1.json is what that code read
// back from it, and holds the file's master key (a test key, nothing else).
// The code of today must read the same.

type compatGolden struct {
	MasterKey   string    `json:"master_key"`
	Now         time.Time `json:"now"`
	Term        uint32    `json:"term"`
	Connections []struct {
		ID, Owner, Tenant, Provider, Label, Status, AccessToken, RefreshToken, Account string
		Scopes                                                                         []string
		Generation                                                                     uint64
	} `json:"connections"`
	Events []struct {
		ID, Type, ConnectionID, Reason string
		Sequence, ConnectionSequence   uint64
	} `json:"events"`
	Audit []struct {
		ID, Caller, Role, Method, ConnectionID, Provider, Outcome, Reason string
		Time                                                              time.Time
	} `json:"audit"`
	Cursor string `json:"webhook_cursor"`
}

// refusingProvider fails every call: reading the old store must not need
// the provider.
type refusingProvider struct{}

var errCalled = errors.New("the provider was called")

func (refusingProvider) PKCE() bool                                { return true }
func (refusingProvider) AuthURL(vault.AuthRequest) (string, error) { return "", errCalled }
func (refusingProvider) Revoke(context.Context, vault.Grant) error { return errCalled }
func (refusingProvider) Exchange(context.Context, vault.ExchangeRequest) (vault.Grant, error) {
	return vault.Grant{}, errCalled
}
func (refusingProvider) Refresh(context.Context, vault.Grant, string) (vault.Grant, error) {
	return vault.Grant{}, errCalled
}

func TestStore_WrittenBeforeTheSplit_ReadsBack(t *testing.T) {
	ctx := context.Background()
	var want compatGolden
	b, err := os.ReadFile(filepath.Join("testdata", "store-v1.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	// A copy: opening writes to the file (bbolt's meta pages, the webhook
	// cursor), and the committed one must stay as the old code left it.
	db, err := os.ReadFile(filepath.Join("testdata", "store-v1.db"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "store-v1.db")
	if err := os.WriteFile(path, db, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := bolt.Open(path, bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	mk, err := seal.ParseMasterKey([]byte(want.MasterKey))
	if err != nil {
		t.Fatal(err)
	}
	kr, err := vault.OpenKeyring(ctx, st, mk)
	if err != nil {
		t.Fatalf("OpenKeyring = %v", err)
	}
	if kr.Term() != want.Term {
		t.Errorf("Term() = %d; want %d", kr.Term(), want.Term)
	}
	var mu sync.Mutex
	now := want.Now
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	v, err := vault.Open(ctx, vault.Config{Store: st, Keyring: kr, Providers: map[string]vault.Provider{"acme": refusingProvider{}}, Now: clock})
	if err != nil {
		t.Fatalf("Open = %v", err)
	}

	conns, _, err := v.List(ctx, vault.Filter{}, "", 100)
	if err != nil {
		t.Fatalf("List = %v", err)
	}
	if len(conns) != len(want.Connections) {
		t.Fatalf("List = %d connections; want %d", len(conns), len(want.Connections))
	}
	for i, w := range want.Connections {
		c, err := v.Get(ctx, conns[i].ID)
		if err != nil {
			t.Fatalf("Get(%q) = %v", conns[i].ID, err)
		}
		var at, rt string
		if tok := c.Grant.Token(""); tok != nil {
			at, rt = tok.AccessToken, tok.RefreshToken
		}
		got := []any{c.ID, c.Owner, c.Tenant, c.Provider, c.Label, string(c.Status), at, rt, c.Grant.Account, c.Grant.Scopes, c.Generation}
		exp := []any{w.ID, w.Owner, w.Tenant, w.Provider, w.Label, w.Status, w.AccessToken, w.RefreshToken, w.Account, w.Scopes, w.Generation}
		if !reflect.DeepEqual(got, exp) {
			t.Errorf("connection %d = %v; want %v", i, got, exp)
		}
		if w.Status == string(vault.StatusActive) {
			// Served from the decoded record: the provider refuses calls.
			tok, _, err := v.AccessToken(ctx, vault.TokenRequest{ID: w.ID})
			if err != nil || tok.AccessToken != w.AccessToken {
				t.Errorf("AccessToken(%q) = %q, %v; want %q", w.ID, tok.AccessToken, err, w.AccessToken)
			}
		}
	}

	evs, err := v.Events(ctx, 0, 0)
	if err != nil {
		t.Fatalf("Events = %v", err)
	}
	if len(evs) != len(want.Events) {
		t.Fatalf("Events = %d; want %d", len(evs), len(want.Events))
	}
	for i, w := range want.Events {
		e := evs[i]
		got := []any{e.ID, e.Type, e.Connection.ID, e.Reason, e.Sequence, e.ConnectionSequence}
		exp := []any{w.ID, w.Type, w.ConnectionID, w.Reason, w.Sequence, w.ConnectionSequence}
		if !reflect.DeepEqual(got, exp) {
			t.Errorf("event %d = %v; want %v", i, got, exp)
		}
	}

	al := audit.New(audit.Config{Store: st, Now: clock})
	recs, _, err := al.List(ctx, audit.Filter{}, "", 100)
	al.Close()
	if err != nil {
		t.Fatalf("audit List = %v", err)
	}
	if len(recs) != len(want.Audit) {
		t.Fatalf("audit List = %d records; want %d", len(recs), len(want.Audit))
	}
	for i, w := range want.Audit {
		r := recs[i]
		got := []any{r.ID, r.Caller, r.Role, r.Method, r.ConnectionID, r.Provider, r.Outcome, r.Reason, r.Time.UTC()}
		exp := []any{w.ID, w.Caller, w.Role, w.Method, w.ConnectionID, w.Provider, w.Outcome, w.Reason, w.Time.UTC()}
		if !reflect.DeepEqual(got, exp) {
			t.Errorf("audit record %d = %v; want %v", i, got, exp)
		}
	}

	// The endpoint keeps its cursor: its backlog is what was written after.
	sec, err := webhook.ParseSecret("whsec_dGVzdGRhdGEtb25seS1ub3QtYS1yZWFsLXNlY3JldA==")
	if err != nil {
		t.Fatal(err)
	}
	hooks, err := webhook.New(ctx, v, st, webhook.Config{Endpoints: []webhook.Endpoint{{Name: "app", URL: "http://127.0.0.1:9/hooks", Secrets: []webhook.Secret{sec}, AllowPrivate: true}}})
	if err != nil {
		t.Fatalf("webhook.New = %v", err)
	}
	if cur, _, err := st.Get(ctx, "meta/webhook/app/cursor"); err != nil || string(cur) != want.Cursor {
		t.Errorf("webhook cursor = %q, %v; want %q", cur, err, want.Cursor)
	}
	last, _ := v.LastEventSequence()
	if got := hooks.Stats()[0]; got.Disabled || got.Backlog != last-mustUint(t, want.Cursor) {
		t.Errorf("webhook Stats = %+v; want enabled, backlog %d", got, last-mustUint(t, want.Cursor))
	}

	// The pending connect flow decodes: past its TTL it is swept.
	mu.Lock()
	now = now.Add(time.Hour)
	mu.Unlock()
	if n, err := v.SweepStates(ctx); n != 1 || err != nil {
		t.Errorf("SweepStates() = %d, %v; want 1, nil", n, err)
	}
	// Every record opens under the keyring: a rotation re-wraps them all.
	if term, n, err := v.RotateKeys(ctx); err != nil || term != want.Term+1 || n == 0 {
		t.Errorf("RotateKeys() = %d, %d, %v; want term %d, some records, nil", term, n, err, want.Term+1)
	}
}

func mustUint(t *testing.T, s string) uint64 {
	t.Helper()
	var n uint64
	if err := json.Unmarshal([]byte(s), &n); err != nil {
		t.Fatalf("cursor %q: %v", s, err)
	}
	return n
}
