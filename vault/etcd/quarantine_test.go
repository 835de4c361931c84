package etcd_test

import (
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/etcd"
	"github.com/tokenvault/tokenvault/vault/etcd/etcdtest"
	"github.com/tokenvault/tokenvault/vault/seal"
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

// logBuffer collects log lines from several goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A master-key rekey on one replica: the others keep serving with the keys
// they hold and say, once they see the keyring change, that they must be
// restarted with the new key; a replica started with it serves everything.
func TestReplicas_RekeyMaster(t *testing.T) {
	c := etcdtest.Start(t, 1)
	clk := &testClock{t: time.Now()}
	p := &rotatingProvider{lifetime: time.Hour, now: clk.Now, live: map[string]bool{}}
	logs := &logBuffer{}
	rs := startReplicas(t, c, 2, p, clk, etcd.Options{}, vault.Config{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	a := connectOn(t, rs[0], rs, "alice")
	newMK, err := seal.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := rs[0].v.RekeyMaster(t.Context(), newMK); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the other replica to say it needs the new key", func() bool {
		return strings.Contains(logs.String(), "restart this replica with the new key")
	})
	for i, r := range rs {
		if _, _, err := r.v.AccessToken(t.Context(), vault.TokenRequest{ID: a.ID, Force: true}); err != nil {
			t.Fatalf("replica %d after the rekey: AccessToken(force) = %v", i, err)
		}
	}
	st := openStore(t, etcd.Options{Endpoints: c.Endpoints(), Prefix: "replicas/"})
	kr, err := vault.OpenKeyring(t.Context(), st, newMK)
	if err != nil {
		t.Fatalf("OpenKeyring(new master key) = %v", err)
	}
	v, err := vault.Open(t.Context(), vault.Config{Store: st, Keyring: kr, Providers: map[string]vault.Provider{"fake": p}, Now: clk.Now})
	if err != nil || v.Len() != 1 || v.UnreadableCount() != 0 {
		t.Fatalf("Open with the new key = %v (%d served)", err, v.Len())
	}
	if _, _, err := v.AccessToken(t.Context(), vault.TokenRequest{ID: a.ID, Force: true}); err != nil {
		t.Fatalf("a replica started with the new key: AccessToken(force) = %v", err)
	}
}
