package vault_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
)

// crashMidRefresh connects n users, starts a refresh of each, and while
// the provider holds them all, copies the data file: the copy is a store
// as a crash would leave it, every connection marked in flight. It returns
// the harness reopened on the copy, and the connection ids.
func crashMidRefresh(t *testing.T, n int) (*harness, []string) {
	t.Helper()
	h := newHarness(t)
	var ids []string
	for i := range n {
		ids = append(ids, h.connect(fmt.Sprint("user-", i)).ID)
	}
	h.clock.Add(2 * time.Hour)
	h.p.block, h.p.entered = make(chan struct{}), make(chan struct{}, n)
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() { h.v.AccessToken(context.Background(), vault.TokenRequest{ID: id}) })
	}
	for range n {
		<-h.p.entered
	}
	crashed := filepath.Join(t.TempDir(), "crashed.db")
	copyFile(t, h.path, crashed)
	close(h.p.block)
	wg.Wait()
	h.p.block, h.p.entered = nil, nil
	h.store.Close()
	h.path = crashed
	h.open()
	for _, id := range ids {
		if c, _ := h.v.Get(context.Background(), id); c.InFlight == nil {
			t.Fatalf("%s: the crashed copy has no in-flight marker", id)
		}
	}
	return h, ids
}

func TestVault_RecoverInterrupted_Many(t *testing.T) {
	h, ids := crashMidRefresh(t, 20)
	calls := h.p.refreshes.Load()
	n, err := h.v.RecoverInterrupted(context.Background())
	if n != len(ids) || err != nil {
		t.Fatalf("RecoverInterrupted = %d, %v; want %d, nil", n, err, len(ids))
	}
	if got := h.p.refreshes.Load() - calls; got != int32(len(ids)) {
		t.Errorf("provider refreshes = %d; want one per connection, %d", got, len(ids))
	}
	for _, id := range ids {
		if c, _ := h.v.Get(context.Background(), id); c.InFlight != nil || c.Status != vault.StatusActive {
			t.Errorf("%s after recovery: %s, in flight %+v; want active, none", id, c.Status, c.InFlight)
		}
	}
}

func TestVault_RecoverInterrupted_Canceled_StartsNothing(t *testing.T) {
	h, _ := crashMidRefresh(t, 5)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls := h.p.refreshes.Load()
	n, err := h.v.RecoverInterrupted(ctx)
	if n != 0 || !errors.Is(err, context.Canceled) {
		t.Errorf("RecoverInterrupted(canceled) = %d, %v; want 0, context.Canceled", n, err)
	}
	if got := h.p.refreshes.Load() - calls; got != 0 {
		t.Errorf("provider refreshes = %d; want 0", got)
	}
}

// TestVault_RecoverInterrupted_ResolvedMeanwhile: a caller who resolves the
// marker first (the one documented retry) leaves RecoverInterrupted nothing
// to send: the old refresh token is not sent a third time.
func TestVault_RecoverInterrupted_ResolvedMeanwhile(t *testing.T) {
	h, ids := crashMidRefresh(t, 1)
	h.p.setRefreshErr(&vault.ProviderError{Kind: vault.ErrReauthRequired, Code: "invalid_grant"})
	calls := h.p.refreshes.Load()
	_, _, err := h.v.AccessToken(context.Background(), vault.TokenRequest{ID: ids[0]})
	if !errors.Is(err, vault.ErrReauthRequired) {
		t.Fatalf("AccessToken = %v; want ErrReauthRequired", err)
	}
	if _, err := h.v.RecoverInterrupted(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := h.p.refreshes.Load() - calls; got != 1 {
		t.Errorf("provider refreshes = %d; want 1", got)
	}
	c, _ := h.v.Get(context.Background(), ids[0])
	if c.Status != vault.StatusNeedsReauth || c.StatusReason != vault.ReasonRefreshInterrupted {
		t.Errorf("status %s/%s; want needs_reauth/%s", c.Status, c.StatusReason, vault.ReasonRefreshInterrupted)
	}
}

// TestVault_RecoverInterrupted_TransientKeepsMarker: a retry that gets no
// answer keeps the marker (so the next attempt still knows the token may be
// spent) and waits out its backoff: RecoverInterrupted again at once sends
// nothing.
func TestVault_RecoverInterrupted_TransientKeepsMarker(t *testing.T) {
	h, ids := crashMidRefresh(t, 1)
	h.p.setRefreshErr(&vault.ProviderError{Kind: vault.ErrUnavailable, Code: "http_503", RetryAfter: time.Minute})
	calls := h.p.refreshes.Load()
	if n, err := h.v.RecoverInterrupted(context.Background()); n != 0 || err != nil {
		t.Fatalf("RecoverInterrupted = %d, %v; want 0 resolved, nil", n, err)
	}
	c, _ := h.v.Get(context.Background(), ids[0])
	if c.InFlight == nil || c.InFlight.Attempts != 2 || c.Status != vault.StatusActive {
		t.Fatalf("after a transient failure: in flight %+v, %s; want the marker kept with 2 attempts, active", c.InFlight, c.Status)
	}
	h.v.RecoverInterrupted(context.Background())
	if got := h.p.refreshes.Load() - calls; got != 1 {
		t.Errorf("provider refreshes = %d; want 1 (the second waits for the backoff)", got)
	}
	// After the backoff the provider rejects the token: refresh_interrupted.
	h.p.setRefreshErr(&vault.ProviderError{Kind: vault.ErrReauthRequired, Code: "invalid_grant"})
	h.clock.Add(2 * time.Minute)
	if n, _ := h.v.RecoverInterrupted(context.Background()); n != 1 {
		t.Errorf("RecoverInterrupted after backoff = %d; want 1", n)
	}
	c, _ = h.v.Get(context.Background(), ids[0])
	if c.Status != vault.StatusNeedsReauth || c.StatusReason != vault.ReasonRefreshInterrupted || c.InFlight != nil {
		t.Errorf("status %s/%s, in flight %+v; want needs_reauth/%s, none", c.Status, c.StatusReason, c.InFlight, vault.ReasonRefreshInterrupted)
	}
}
