package vault_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// readBolt returns the stored value under key in the bbolt file at path,
// closed, with bolt's 8-byte revision prefix.
func readBolt(t *testing.T, path, key string) []byte {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var out []byte
	db.View(func(tx *bbolt.Tx) error {
		out = slices.Clone(tx.Bucket([]byte("kv")).Get([]byte(key)))
		return nil
	})
	if out == nil {
		t.Fatalf("no %s in %s", key, path)
	}
	return out
}

// writeBolt puts raw (revision prefix included) under key.
func writeBolt(t *testing.T, path, key string, raw []byte) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bbolt.Tx) error { return tx.Bucket([]byte("kv")).Put([]byte(key), raw) }); err != nil {
		t.Fatal(err)
	}
}

// openKeyring opens the keyring of the bbolt file at path with mk.
func openKeyring(t *testing.T, path string, mk seal.MasterKey) (*seal.Keyring, error) {
	t.Helper()
	st, err := bolt.Open(path, bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	return vault.OpenKeyring(context.Background(), st, mk)
}

// servesAll checks that every id is served with a refresh, which reads,
// re-seals and writes its record.
func servesAll(t *testing.T, h *harness, ids []string) {
	t.Helper()
	if h.v.UnreadableCount() != 0 || h.v.Len() != len(ids) {
		t.Fatalf("%d served, %d unreadable; want %d and 0", h.v.Len(), h.v.UnreadableCount(), len(ids))
	}
	for _, id := range ids {
		if _, _, err := h.v.AccessToken(context.Background(), vault.TokenRequest{ID: id, Force: true}); err != nil {
			t.Fatalf("AccessToken(%s, force) = %v", id, err)
		}
	}
}

// After a rotation and its re-wrap, RetireKeys drops the old term and
// everything still opens, after a restart too; while one stored value is
// still sealed under the old term it refuses and changes nothing.
func TestKeys_RotateRewrapRetire(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	var ids []string
	for i := range 5 {
		ids = append(ids, h.connect("user-"+strconv.Itoa(i)).ID)
	}
	stale, _, err := h.store.Get(ctx, "conn/"+ids[2]) // sealed under term 1
	if err != nil {
		t.Fatal(err)
	}
	if term, n, err := h.v.RotateKeys(ctx); err != nil || term != 2 || n == 0 {
		t.Fatalf("RotateKeys() = %d, %d, %v", term, n, err)
	}
	// A value of the old term comes back (a write from a replica that had
	// not read the new keyring yet, say).
	if _, err := h.store.Apply(ctx, vault.Op{Key: "conn/" + ids[2], Value: stale, IfRev: vault.AnyRev}); err != nil {
		t.Fatal(err)
	}
	_, dropped, err := h.v.RetireKeys(ctx)
	var inUse *vault.TermInUseError
	if !errors.Is(err, vault.ErrKeyTermInUse) || !errors.As(err, &inUse) || inUse.Values[1] != 1 || len(dropped) != 0 {
		t.Fatalf("RetireKeys() with a value under term 1 = %v, %v; want ErrKeyTermInUse (term 1: 1 value)", dropped, err)
	}
	// The re-wrap pass moves it to term 2; now retiring drops term 1.
	kr, err := vault.OpenKeyring(ctx, h.store, h.mk)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := vault.Rewrap(ctx, h.store, kr, "conn/", "state/", "event/"); err != nil || n != 1 {
		t.Fatalf("Rewrap() = %d, %v; want the one stale value", n, err)
	}
	term, dropped, err := h.v.RetireKeys(ctx)
	if err != nil || term != 2 || !slices.Equal(dropped, []uint32{1}) {
		t.Fatalf("RetireKeys() = %d, %v, %v; want term 2, [1] dropped", term, dropped, err)
	}
	servesAll(t, h, ids)
	h.reopen()
	kr, err = vault.OpenKeyring(ctx, h.store, h.mk)
	if err != nil {
		t.Fatal(err)
	}
	if got := kr.Terms(); !slices.Equal(got, []uint32{2}) {
		t.Fatalf("the keyring holds terms %v after retiring; want [2]", got)
	}
	servesAll(t, h, ids)
	if _, dropped, err := h.v.RetireKeys(ctx); err != nil || len(dropped) != 0 {
		t.Fatalf("RetireKeys() again = %v, %v; want nothing to do", dropped, err)
	}
}

// A keyring put back to the copy it was before a rotation (an edit of the
// bbolt file) is refused at start with an error that says so, rather than
// quarantining every record the newer term sealed; so is one put back with
// its high-water mark, by the records that are newer than both.
func TestKeys_RolledBackKeyringRefused(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	for i := range 3 {
		h.connect("user-" + strconv.Itoa(i))
	}
	h.store.Close()
	before := readBolt(t, h.path, seal.KeyringKey)
	hwmBefore := readBolt(t, h.path, seal.HighWaterKey)
	h.open()
	if _, _, err := h.v.RotateKeys(ctx); err != nil {
		t.Fatal(err)
	}
	h.store.Close()
	writeBolt(t, h.path, seal.KeyringKey, before)
	_, err := openKeyring(t, h.path, h.mk)
	if !errors.Is(err, seal.ErrRolledBack) || !strings.Contains(err.Error(), "term 2") || !strings.Contains(err.Error(), "restore") {
		t.Fatalf("OpenKeyring(rolled back) = %v; want ErrRolledBack naming term 2 and what to do", err)
	}

	// The keyring and its high-water mark put back together agree with
	// each other; the records sealed under the lost term tell.
	writeBolt(t, h.path, seal.HighWaterKey, hwmBefore)
	if _, err := openKeyring(t, h.path, h.mk); err != nil {
		t.Fatalf("OpenKeyring(keyring and mark both put back) = %v; they agree", err)
	}
	st, err := bolt.Open(h.path, bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	kr, err := vault.OpenKeyring(ctx, st, h.mk)
	if err == nil {
		_, err = vault.Open(ctx, vault.Config{Store: st, Keyring: kr, Providers: map[string]vault.Provider{"fake": h.p}})
	}
	st.Close()
	if !errors.Is(err, seal.ErrRolledBack) || !strings.Contains(err.Error(), "3 of 3 connection records") {
		t.Fatalf("Open(keyring and mark both put back) = %v; want ErrRolledBack counting 3 of 3 records", err)
	}

	// Retiring changes the generation without a new term: rolling back
	// over a retirement is refused too.
	h2 := newHarness(t)
	h2.connect("x")
	if _, _, err := h2.v.RotateKeys(ctx); err != nil {
		t.Fatal(err)
	}
	h2.store.Close()
	before = readBolt(t, h2.path, seal.KeyringKey)
	h2.open()
	if _, dropped, err := h2.v.RetireKeys(ctx); err != nil || len(dropped) != 1 {
		t.Fatalf("RetireKeys() = %v, %v", dropped, err)
	}
	h2.store.Close()
	writeBolt(t, h2.path, seal.KeyringKey, before)
	if _, err := openKeyring(t, h2.path, h2.mk); !errors.Is(err, seal.ErrRolledBack) || !strings.Contains(err.Error(), "generation") {
		t.Fatalf("OpenKeyring(rolled back over a retirement) = %v; want ErrRolledBack naming the generations", err)
	}
	// Deleting the high-water mark does not get around it.
	writeBolt(t, h2.path, seal.KeyringKey, readBolt(t, h2.path, seal.KeyringKey))
	db, err := bbolt.Open(h2.path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bbolt.Tx) error { return tx.Bucket([]byte("kv")).Delete([]byte(seal.HighWaterKey)) })
	db.Close()
	if _, err := openKeyring(t, h2.path, h2.mk); !errors.Is(err, seal.ErrRolledBack) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("OpenKeyring(high-water mark deleted) = %v; want ErrRolledBack", err)
	}
}

// RekeyMaster seals the keyring under a new master key while serving: the
// vault goes on serving and rotating; after a restart the new key opens
// everything and the old one is refused with an error naming its id.
func TestKeys_RekeyMaster(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	var ids []string
	for i := range 4 {
		ids = append(ids, h.connect("user-"+strconv.Itoa(i)).ID)
	}
	oldMK := h.mk
	newMK, err := seal.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.v.RekeyMaster(ctx, newMK); err != nil {
		t.Fatalf("RekeyMaster() = %v", err)
	}
	servesAll(t, h, ids)
	if term, _, err := h.v.RotateKeys(ctx); err != nil || term != 2 {
		t.Fatalf("RotateKeys() after rekey = %d, %v", term, err)
	}
	h.store.Close()
	_, err = openKeyring(t, h.path, oldMK)
	if !errors.Is(err, seal.ErrWrongMasterKey) || !strings.Contains(err.Error(), oldMK.ID()) || !strings.Contains(err.Error(), "rekeyed") {
		t.Fatalf("OpenKeyring(old master key) after rekey = %v; want ErrWrongMasterKey naming key %s", err, oldMK.ID())
	}
	h.mk = newMK
	h.open()
	servesAll(t, h, ids)
	if oldMK.ID() == newMK.ID() || len(newMK.ID()) != 16 || strings.Contains(newMK.ID(), newMK.Encode()[:8]) {
		t.Fatalf("master key ids %s, %s", oldMK.ID(), newMK.ID())
	}
}

// A connect session (and a flow no browser has opened yet) made before a
// rotation is re-wrapped with the connections, so retiring the old term
// leaves it working; a retire that skipped them would leave the user's
// link dead.
func TestKeys_RetireKeepsSessionsAndFlows(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	tok, _, err := h.v.CreateSession(ctx, vault.SessionRequest{Owner: "alice", TTL: 20 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.v.RotateKeys(ctx); err != nil {
		t.Fatal(err)
	}
	if _, dropped, err := h.v.RetireKeys(ctx); err != nil || !slices.Equal(dropped, []uint32{1}) {
		t.Fatalf("RetireKeys() = %v, %v; want [1] dropped", dropped, err)
	}
	h.reopen()
	if s, err := h.v.Session(ctx, tok); err != nil || s.Owner != "alice" {
		t.Fatalf("Session after rotate and retire = %+v, %v; want alice's session", s, err)
	}
}
