package vault_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
)

// connectAs runs a connect flow for owner in tenant with label.
func (h *harness) connectAs(tenant, owner, label string) string {
	h.t.Helper()
	state := h.start(vault.ConnectRequest{Owner: owner, Tenant: tenant, Provider: "fake", Label: label})
	res, err := h.v.CompleteConnect(context.Background(), vault.CallbackRequest{Binding: "b", Provider: "fake", State: state, Code: "code"})
	if err != nil {
		h.t.Fatalf("CompleteConnect = %v", err)
	}
	return res.Connection.ID
}

// TestVault_Lookup: the owner index answers selectors from memory, the
// same after a restart (labels and tenants come back from the store), and
// never picks among several connections.
func TestVault_Lookup(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	alice := h.connectAs("", "alice", "")
	bobWork := h.connectAs("", "bob", "work")
	bobHome := h.connectAs("", "bob", "home")
	erinT1 := h.connectAs("t1", "erin", "")
	h.connectAs("t2", "erin", "")
	carol := h.connectAs("", "carol", "")
	if _, err := h.v.Revoke(ctx, carol, "test"); err != nil {
		t.Fatal(err)
	}
	daveOld := h.connectAs("", "dave", "")
	if _, err := h.v.Revoke(ctx, daveOld, "test"); err != nil {
		t.Fatal(err)
	}
	h.clock.Add(time.Second)
	daveNew := h.connectAs("", "dave", "")
	if daveNew == daveOld {
		t.Fatal("reconnecting after a revocation kept the id; the test needs a new connection")
	}
	type row struct {
		sel       vault.Selector
		want      string
		wantErr   error
		wantAmbig *vault.AmbiguousError
	}
	rows := []row{
		{sel: vault.Selector{Owner: "alice", Provider: "fake"}, want: alice},
		{sel: vault.Selector{Owner: "bob", Provider: "fake", Label: "work"}, want: bobWork},
		{sel: vault.Selector{Owner: "bob", Provider: "fake", Label: "home"}, want: bobHome},
		{sel: vault.Selector{Owner: "bob", Provider: "fake"}, wantAmbig: &vault.AmbiguousError{Connections: 2, Labels: 2}},
		{sel: vault.Selector{Owner: "erin", Provider: "fake"}, wantAmbig: &vault.AmbiguousError{Connections: 2, Labels: 1}},
		{sel: vault.Selector{Owner: "erin", Provider: "fake", Tenant: "t1"}, want: erinT1},
		{sel: vault.Selector{Owner: "carol", Provider: "fake"}, want: carol},  // only revoked: the revoked one
		{sel: vault.Selector{Owner: "dave", Provider: "fake"}, want: daveNew}, // the live one, not the revoked record
		{sel: vault.Selector{Owner: "alice", Provider: "other"}, wantErr: vault.ErrNotFound},
		{sel: vault.Selector{Owner: "alice", Provider: "fake", Label: "work"}, wantErr: vault.ErrNotFound},
		{sel: vault.Selector{Owner: "alice", Provider: "fake", Tenant: "t1"}, wantErr: vault.ErrNotFound},
		{sel: vault.Selector{Owner: "zed", Provider: "fake"}, wantErr: vault.ErrNotFound},
	}
	check := func(when string) {
		t.Helper()
		for _, r := range rows {
			got, err := h.v.Lookup(context.Background(), r.sel)
			var amb *vault.AmbiguousError
			switch {
			case r.wantAmbig != nil:
				if !errors.As(err, &amb) || *amb != *r.wantAmbig || !errors.Is(err, vault.ErrInvalidArgument) {
					t.Errorf("%s: Lookup(%+v) = %q, %v; want %+v (an ErrInvalidArgument)", when, r.sel, got, err, r.wantAmbig)
				}
			case r.wantErr != nil:
				if !errors.Is(err, r.wantErr) {
					t.Errorf("%s: Lookup(%+v) = %q, %v; want %v", when, r.sel, got, err, r.wantErr)
				}
			case err != nil || got != r.want:
				t.Errorf("%s: Lookup(%+v) = %q, %v; want %s", when, r.sel, got, err, r.want)
			}
		}
		// The revoked answer reports the revocation when used.
		if _, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: carol}); !errors.Is(err, vault.ErrRevoked) {
			t.Errorf("%s: AccessToken of carol's revoked connection = %v; want ErrRevoked", when, err)
		}
	}
	check("before restart")
	h.reopen()
	check("after restart")
}
