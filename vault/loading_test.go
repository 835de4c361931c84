package vault_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// openHeld opens h's store again with LoadInBackground, its loader held at
// FailpointLoad until release is called (by the test, or at cleanup).
func (h *harness) openHeld() (v *vault.Vault, release func()) {
	h.t.Helper()
	h.store.Close()
	hold := make(chan struct{})
	reached := make(chan struct{})
	h.openWith(context.Background(), func(c *vault.Config) {
		c.LoadInBackground = true
		c.Failpoint = func(name string) {
			if name == vault.FailpointLoad {
				close(reached)
				<-hold
			}
		}
	})
	<-reached
	v = h.v
	released := false
	release = func() {
		if !released {
			released = true
			close(hold)
			<-v.Loaded()
		}
	}
	h.t.Cleanup(release)
	return v, release
}

// waits runs call with a short deadline and reports whether it waited
// for the load (returned the deadline's error).
func waits(call func(ctx context.Context) error) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	return errors.Is(call(ctx), context.DeadlineExceeded)
}

func TestLoadInBackground_TokenFromTheStore_OthersWait(t *testing.T) {
	h := newHarness(t)
	a := h.connect("alice")
	b := h.connect("bob")
	v, release := h.openHeld()
	ctx := context.Background()
	if !v.Loading() {
		t.Fatal("Loading() = false with the loader held")
	}
	// The hot path: served from the record, as from memory.
	tok, info, err := v.AccessToken(ctx, vault.TokenRequest{ID: a.ID})
	if err != nil || tok.AccessToken != a.Grant.Tokens[0].AccessToken || info.Provider != "fake" || info.ConnectionID != a.ID {
		t.Fatalf("AccessToken during the load = %q, %+v, %v; want alice's token", tok.AccessToken, info, err)
	}
	if tok.RefreshToken != "" {
		t.Fatal("a token served during the load carries its refresh token")
	}
	if p, ok := v.ProviderOf(b.ID); !ok || p != "fake" {
		t.Fatalf("ProviderOf during the load = %q, %v", p, ok)
	}
	if v.IsUnreadable(b.ID) {
		t.Fatal("IsUnreadable(readable record) during the load")
	}
	// Everything else waits, bounded by its context.
	if !waits(func(ctx context.Context) error {
		_, err := v.Lookup(ctx, vault.Selector{Owner: "bob", Provider: "fake"})
		return err
	}) {
		t.Error("Lookup did not wait for the load")
	}
	if !waits(func(ctx context.Context) error {
		_, err := v.Update(ctx, vault.UpdateRequest{ID: b.ID, Set: map[string]string{"k": "v"}})
		return err
	}) {
		t.Error("Update did not wait for the load")
	}
	// A forced refresh is no read from memory: it waits.
	if !waits(func(ctx context.Context) error {
		_, _, err := v.AccessToken(ctx, vault.TokenRequest{ID: a.ID, Force: true})
		return err
	}) {
		t.Error("a forced AccessToken did not wait for the load")
	}
	// An unknown id waits too, and is then not found.
	if !waits(func(ctx context.Context) error {
		_, _, err := v.AccessToken(ctx, vault.TokenRequest{ID: "conn_nope"})
		return err
	}) {
		t.Error("AccessToken(unknown id) did not wait for the load")
	}

	// Waiting calls succeed once the loader goes on.
	type result struct {
		id  string
		err error
	}
	looked, updated := make(chan result, 1), make(chan error, 1)
	go func() {
		id, err := v.Lookup(ctx, vault.Selector{Owner: "bob", Provider: "fake"})
		looked <- result{id, err}
	}()
	go func() {
		_, err := v.Update(ctx, vault.UpdateRequest{ID: b.ID, Set: map[string]string{"k": "v"}})
		updated <- err
	}()
	select {
	case r := <-looked:
		t.Fatalf("Lookup answered during the load: %+v", r)
	case err := <-updated:
		t.Fatalf("Update answered during the load: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	release()
	if r := <-looked; r.err != nil || r.id != b.ID {
		t.Fatalf("Lookup after the load = %+v; want %s", r, b.ID)
	}
	if err := <-updated; err != nil {
		t.Fatalf("Update after the load = %v", err)
	}
	if v.Loading() || v.LoadErr() != nil || v.Len() != 2 {
		t.Fatalf("after the load: Loading %v, LoadErr %v, Len %d", v.Loading(), v.LoadErr(), v.Len())
	}
	if _, _, err := v.AccessToken(ctx, vault.TokenRequest{ID: "conn_nope"}); !errors.Is(err, vault.ErrNotFound) {
		t.Fatalf("AccessToken(unknown) after the load = %v; want ErrNotFound", err)
	}
	// The use served from the store counts as alice's last use.
	c, err := v.Get(ctx, a.ID)
	if err != nil || !c.LastUsedAt.Equal(h.clock.Now()) {
		t.Fatalf("alice's last use after the load = %v, %v; want %v", c.LastUsedAt, err, h.clock.Now())
	}
}

func TestLoadInBackground_ExpiredTokenWaitsAndIsRefreshed(t *testing.T) {
	h := newHarness(t)
	a := h.connect("alice")
	h.clock.Add(2 * time.Hour) // past the token's hour
	v, release := h.openHeld()
	if !waits(func(ctx context.Context) error {
		_, _, err := v.AccessToken(ctx, vault.TokenRequest{ID: a.ID})
		return err
	}) {
		t.Fatal("AccessToken of an expired token did not wait for the load")
	}
	if n := h.p.refreshes.Load(); n != 0 {
		t.Fatalf("%d refreshes during the load; want none", n)
	}
	got := make(chan error, 1)
	go func() {
		tok, _, err := v.AccessToken(context.Background(), vault.TokenRequest{ID: a.ID})
		if err == nil && tok.AccessToken == a.Grant.Tokens[0].AccessToken {
			err = errors.New("served the expired token")
		}
		got <- err
	}()
	release()
	if err := <-got; err != nil {
		t.Fatalf("AccessToken after the load = %v", err)
	}
	if n := h.p.refreshes.Load(); n != 1 {
		t.Fatalf("%d refreshes; want 1", n)
	}
}

func TestLoadInBackground_DamagedRecord(t *testing.T) {
	h := newHarness(t)
	a := h.connect("alice")
	b := h.connect("bob")
	ctx := context.Background()
	// b's key now holds a's sealed record: it does not open under b's key.
	val, _, err := h.store.Get(ctx, "conn/"+a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.store.Apply(ctx, vault.Op{Key: "conn/" + b.ID, Value: val, IfRev: -1}); err != nil {
		t.Fatal(err)
	}
	v, release := h.openHeld()
	_, _, err = v.AccessToken(ctx, vault.TokenRequest{ID: b.ID})
	var ue *vault.UnreadableError
	if !errors.As(err, &ue) || ue.Reason != seal.BrokenAuth {
		t.Fatalf("AccessToken(damaged) during the load = %v; want ErrRecordUnreadable (%s)", err, seal.BrokenAuth)
	}
	if !v.IsUnreadable(b.ID) {
		t.Fatal("IsUnreadable(damaged) = false during the load")
	}
	if _, ok := v.ProviderOf(b.ID); ok {
		t.Fatal("ProviderOf(damaged) found it during the load")
	}
	if n := v.UnreadableCount(); n != 0 {
		t.Fatalf("UnreadableCount() = %d during the load; the loader quarantines, not the read", n)
	}
	release()
	if n := v.UnreadableCount(); n != 1 {
		t.Fatalf("UnreadableCount() = %d after the load; want 1", n)
	}
	_, _, err2 := v.AccessToken(ctx, vault.TokenRequest{ID: b.ID})
	if err2 == nil || err2.Error() != err.Error() {
		t.Fatalf("AccessToken(damaged) after the load = %v; want what it answered during it: %v", err2, err)
	}
}

func TestLoadInBackground_FailedLoad(t *testing.T) {
	h := newHarness(t)
	h.connect("alice")
	h.store.Close()
	ctx, cancel := context.WithCancel(context.Background())
	h.openWith(ctx, func(c *vault.Config) {
		c.LoadInBackground = true
		c.Failpoint = func(name string) {
			if name == vault.FailpointLoad {
				cancel() // the load's context ends: the load fails
			}
		}
	})
	v := h.v
	<-v.Loaded()
	if err := v.LoadErr(); !errors.Is(err, context.Canceled) {
		t.Fatalf("LoadErr() = %v; want the load's failure", err)
	}
	if _, err := v.Lookup(context.Background(), vault.Selector{Owner: "alice", Provider: "fake"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lookup after a failed load = %v; want the load's error", err)
	}
}

// LoadAfter holds the load back: it does not reach FailpointLoad until the
// channel closes, a token is served from its record meanwhile, and the
// load then runs as usual.
func TestLoadInBackground_LoadAfter(t *testing.T) {
	h := newHarness(t)
	a := h.connect("alice")
	h.store.Close()
	after := make(chan struct{})
	reached := make(chan struct{})
	h.openWith(context.Background(), func(c *vault.Config) {
		c.LoadInBackground = true
		c.LoadAfter = after
		c.Failpoint = func(name string) {
			if name == vault.FailpointLoad {
				close(reached)
			}
		}
	})
	v := h.v
	select {
	case <-reached:
		t.Fatal("the load began before LoadAfter closed")
	case <-time.After(50 * time.Millisecond):
	}
	if !v.Loading() {
		t.Fatal("Loading() = false before LoadAfter closed")
	}
	if tok, _, err := v.AccessToken(context.Background(), vault.TokenRequest{ID: a.ID}); err != nil || tok.AccessToken != a.Grant.Tokens[0].AccessToken {
		t.Fatalf("AccessToken before the load = %q, %v; want alice's token from its record", tok.AccessToken, err)
	}
	close(after)
	<-reached
	<-v.Loaded()
	if err := v.LoadErr(); err != nil {
		t.Fatalf("LoadErr() = %v", err)
	}
	if _, err := v.Lookup(context.Background(), vault.Selector{Owner: "alice", Provider: "fake"}); err != nil {
		t.Fatalf("Lookup after the load: %v", err)
	}
}

// A load held back by LoadAfter fails with ctx's error if ctx ends first.
func TestLoadInBackground_LoadAfterCanceled(t *testing.T) {
	h := newHarness(t)
	h.connect("alice")
	h.store.Close()
	ctx, cancel := context.WithCancel(context.Background())
	h.openWith(ctx, func(c *vault.Config) {
		c.LoadInBackground = true
		c.LoadAfter = make(chan struct{}) // never closed
		c.Failpoint = func(name string) {
			if name == vault.FailpointLoad {
				t.Error("the load began though LoadAfter never closed")
			}
		}
	})
	cancel()
	<-h.v.Loaded()
	if err := h.v.LoadErr(); !errors.Is(err, context.Canceled) {
		t.Fatalf("LoadErr() = %v; want context.Canceled", err)
	}
}
