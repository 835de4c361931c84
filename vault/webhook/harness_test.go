package webhook_test

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// clock is a settable clock shared by a test, its vault and its deliverer.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fakeProvider grants a fresh one-hour token on every exchange and refresh,
// and revokes without complaint.
type fakeProvider struct {
	clock *clock
	mu    sync.Mutex
	n     int
}

func (p *fakeProvider) PKCE() bool { return true }

func (p *fakeProvider) AuthURL(r vault.AuthRequest) (string, error) {
	return "https://auth.example/authorize?state=" + url.QueryEscape(r.State), nil
}

func (p *fakeProvider) grant() vault.Grant {
	p.mu.Lock()
	p.n++
	n := p.n
	p.mu.Unlock()
	return vault.Grant{
		Tokens: []vault.Token{{
			AccessToken: fmt.Sprintf("at-%d", n), RefreshToken: fmt.Sprintf("rt-%d", n),
			TokenType: "Bearer", Expiry: p.clock.Now().Add(time.Hour),
		}},
		Scopes:  []string{"read"},
		Account: "acct-1",
	}
}

func (p *fakeProvider) Exchange(context.Context, vault.ExchangeRequest) (vault.Grant, error) {
	return p.grant(), nil
}

func (p *fakeProvider) Refresh(context.Context, vault.Grant, string) (vault.Grant, error) {
	return p.grant(), nil
}

func (p *fakeProvider) Revoke(context.Context, vault.Grant) error { return nil }

// eventsHarness is a vault on a bbolt file in a temporary directory, whose
// connect flows and revocations write the events the deliverer reads.
type eventsHarness struct {
	t     testing.TB
	clock *clock
	p     *fakeProvider
	path  string
	mk    seal.MasterKey
	store *bolt.Store
	v     *vault.Vault
}

func newEventsHarness(t testing.TB) *eventsHarness {
	t.Helper()
	h := &eventsHarness{t: t, clock: &clock{t: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)}, path: filepath.Join(t.TempDir(), "ev.db")}
	h.p = &fakeProvider{clock: h.clock}
	var err error
	if h.mk, err = seal.GenerateMasterKey(); err != nil {
		t.Fatal(err)
	}
	h.open()
	t.Cleanup(func() { h.store.Close() })
	return h
}

func (h *eventsHarness) open() {
	h.t.Helper()
	st, err := bolt.Open(h.path, bolt.Options{NoSync: true})
	if err != nil {
		h.t.Fatal(err)
	}
	h.store = st
	kr, err := vault.OpenKeyring(context.Background(), st, h.mk)
	if err != nil {
		h.t.Fatal(err)
	}
	h.v, err = vault.Open(context.Background(), vault.Config{
		Store: st, Keyring: kr, Providers: map[string]vault.Provider{"fake": h.p}, Now: h.clock.Now,
	})
	if err != nil {
		h.t.Fatal(err)
	}
}

// reopen closes the store and opens the vault again, as a restart does.
func (h *eventsHarness) reopen() {
	h.t.Helper()
	h.store.Close()
	h.open()
}

// mustConnect runs a connect flow for owner and returns the connection.
func (h *eventsHarness) mustConnect(owner string) *vault.Connection {
	h.t.Helper()
	u, _, err := h.v.StartConnect(context.Background(), vault.ConnectRequest{Binding: "b", Owner: owner, Provider: "fake", Scopes: []string{"read"}})
	if err != nil {
		h.t.Fatalf("StartConnect = %v", err)
	}
	pu, _ := url.Parse(u)
	res, err := h.v.CompleteConnect(context.Background(), vault.CallbackRequest{Binding: "b", Provider: "fake", State: pu.Query().Get("state"), Code: "code"})
	if err != nil {
		h.t.Fatalf("CompleteConnect = %v", err)
	}
	return res.Connection
}

func (h *eventsHarness) events(after uint64) []vault.Event {
	h.t.Helper()
	evs, err := h.v.Events(context.Background(), after, 0)
	if err != nil {
		h.t.Fatalf("Events(%d) = %v", after, err)
	}
	return evs
}
