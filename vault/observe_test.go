package vault_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
)

func TestVault_LastUsed_NeverUsedStaysZero(t *testing.T) {
	h := newHarness(t)
	c := h.connect("alice")
	if _, err := h.v.Revoke(context.Background(), c.ID, ""); err != nil { // a second write
		t.Fatal(err)
	}
	h.reopen()
	got, _ := h.v.Get(context.Background(), c.ID)
	if !got.LastUsedAt.IsZero() {
		t.Errorf("LastUsedAt of a never-used connection = %v; want zero", got.LastUsedAt)
	}
}

func TestVault_FlushLastUsed_SurvivesRestart(t *testing.T) {
	h := newHarness(t)
	used := h.connect("alice")
	idle := h.connect("bob")
	ctx := context.Background()
	h.clock.Add(time.Minute)
	if _, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: used.ID}); err != nil {
		t.Fatal(err)
	}
	at := h.clock.Now()
	n, err := h.v.FlushLastUsed(ctx, time.Minute)
	if err != nil || n != 1 {
		t.Fatalf("FlushLastUsed = %d, %v; want 1 (only the used connection)", n, err)
	}
	// Nothing moved since: nothing to write.
	if n, _ := h.v.FlushLastUsed(ctx, time.Minute); n != 0 {
		t.Errorf("second FlushLastUsed wrote %d; want 0", n)
	}
	// A use less than minStep after the persisted one waits.
	h.clock.Add(30 * time.Second)
	h.v.AccessToken(ctx, vault.TokenRequest{ID: used.ID})
	if n, _ := h.v.FlushLastUsed(ctx, time.Minute); n != 0 {
		t.Errorf("FlushLastUsed after a 30s step wrote %d; want 0", n)
	}
	h.reopen()
	got, _ := h.v.Get(ctx, used.ID)
	if !got.LastUsedAt.Equal(at) {
		t.Errorf("after restart LastUsedAt = %v; want %v", got.LastUsedAt, at)
	}
	if g, _ := h.v.Get(ctx, idle.ID); !g.LastUsedAt.IsZero() {
		t.Errorf("idle connection LastUsedAt = %v; want zero", g.LastUsedAt)
	}
	// The token is still served: the records are intact.
	if _, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: used.ID}); err != nil {
		t.Errorf("AccessToken after restart = %v", err)
	}
}

func TestVault_ProviderOfAndCountByStatus(t *testing.T) {
	h := newHarness(t)
	a := h.connect("alice")
	b := h.connect("bob")
	if _, err := h.v.Revoke(context.Background(), b.ID, ""); err != nil {
		t.Fatal(err)
	}
	if p, ok := h.v.ProviderOf(a.ID); p != "fake" || !ok {
		t.Errorf("ProviderOf(%q) = %q, %v; want fake, true", a.ID, p, ok)
	}
	if p, ok := h.v.ProviderOf("conn_nope"); p != "" || ok {
		t.Errorf("ProviderOf(unknown) = %q, %v; want \"\", false", p, ok)
	}
	got := h.v.CountByStatus()
	want := []vault.StatusCount{{"fake", vault.StatusActive, 1}, {"fake", vault.StatusRevoked, 1}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("CountByStatus = %+v; want %+v", got, want)
	}
}

type refreshObs struct {
	mu   sync.Mutex
	seen []string
}

func (o *refreshObs) observe(provider, outcome string, d time.Duration) {
	o.mu.Lock()
	o.seen = append(o.seen, provider+":"+outcome)
	o.mu.Unlock()
}

func TestVault_OnRefresh_ToldEveryOutcome(t *testing.T) {
	h := newHarness(t)
	c := h.connect("alice")
	// Reopen the same store with an observer.
	h.store.Close()
	st, err := bolt.Open(h.path, bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	kr, err := vault.OpenKeyring(context.Background(), st, h.mk)
	if err != nil {
		t.Fatal(err)
	}
	obs := &refreshObs{}
	v, err := vault.Open(context.Background(), vault.Config{
		Store: st, Keyring: kr, Providers: map[string]vault.Provider{"fake": h.p}, Now: h.clock.Now,
		OnRefresh: obs.observe,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	h.clock.Add(time.Minute) // past the debounce of forced refreshes
	if _, err := v.Refresh(ctx, c.ID, ""); err != nil {
		t.Fatal(err)
	}
	h.clock.Add(time.Minute)
	h.p.setRefreshErr(&vault.ProviderError{Kind: vault.ErrUnavailable, Code: "server_error"})
	v.Refresh(ctx, c.ID, "")
	h.clock.Add(time.Hour)
	h.p.setRefreshErr(&vault.ProviderError{Kind: vault.ErrReauthRequired, Code: "invalid_grant"})
	v.Refresh(ctx, c.ID, "")
	want := "[fake:ok fake:transient fake:needs_reauth]"
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if got := fmt.Sprint(obs.seen); got != want {
		t.Errorf("OnRefresh saw %s; want %s", got, want)
	}
}
