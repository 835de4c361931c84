package etcd_test

import (
	"errors"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/etcd"
	"github.com/tokenvault/tokenvault/vault/etcd/etcdtest"
)

// On a shared etcd store, a record damaged by a write from elsewhere is
// quarantined by every replica that sees the change, answers
// ErrRecordUnreadable there, and leaves the other connections served.
func TestReplicas_DamagedRecordQuarantined(t *testing.T) {
	c := etcdtest.Start(t, 1)
	clk := &testClock{t: time.Now()}
	p := &rotatingProvider{lifetime: time.Hour, now: clk.Now, live: map[string]bool{}}
	rs := startReplicas(t, c, 2, p, clk, etcd.Options{}, vault.Config{})
	a := connectOn(t, rs[0], rs, "alice")
	b := connectOn(t, rs[0], rs, "bob")
	ctx := t.Context()
	val, _, err := rs[0].st.Get(ctx, "conn/"+a.ID)
	if err != nil {
		t.Fatal(err)
	}
	val[len(val)-3] ^= 0x01
	if _, err := rs[0].st.Apply(ctx, vault.Op{Key: "conn/" + a.ID, Value: val, IfRev: vault.AnyRev}); err != nil {
		t.Fatal(err)
	}
	for i, r := range rs {
		waitFor(t, "the damaged record to be quarantined", func() bool { return r.v.UnreadableCount() == 1 })
		_, _, err := r.v.AccessToken(ctx, vault.TokenRequest{ID: a.ID, Force: true})
		if !errors.Is(err, vault.ErrRecordUnreadable) {
			t.Fatalf("replica %d: AccessToken(damaged, force) = %v; want ErrRecordUnreadable", i, err)
		}
		if _, _, err := r.v.AccessToken(ctx, vault.TokenRequest{ID: b.ID, Force: true}); err != nil {
			t.Fatalf("replica %d: AccessToken(intact, force) = %v", i, err)
		}
		if u := r.v.Unreadable(); len(u) != 1 || u[0].Key != "conn/"+a.ID {
			t.Fatalf("replica %d: Unreadable() = %+v", i, u)
		}
	}
}
