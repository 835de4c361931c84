package vault_test

import (
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"strconv"
	"testing"

	bbolt "go.etcd.io/bbolt"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// editBolt changes the stored values of keys in the bbolt file at path,
// closed, as someone with the file would: edit gets the sealed value
// (without bolt's 8-byte revision prefix) and returns the new one.
func editBolt(t *testing.T, path string, edit map[string]func([]byte) []byte) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("kv"))
		if b == nil {
			return errors.New("no kv bucket")
		}
		for key, f := range edit {
			v := b.Get([]byte(key))
			if len(v) < 8 {
				return errors.New("no value under " + key)
			}
			nv := append(slices.Clone(v[:8]), f(slices.Clone(v[8:]))...)
			if err := b.Put([]byte(key), nv); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// wantUnreadable checks that err is the quarantine's answer, for reason.
func wantUnreadable(t *testing.T, what string, err error, reason string) {
	t.Helper()
	var ue *vault.UnreadableError
	if !errors.Is(err, vault.ErrRecordUnreadable) || !errors.As(err, &ue) || ue.Reason != reason {
		t.Fatalf("%s = %v; want ErrRecordUnreadable (%s)", what, err, reason)
	}
}

// One tampered record does not stop the vault: records damaged in a real
// bbolt file (a flipped ciphertext byte, a truncated value, a header naming
// a key term the keyring never had) are quarantined at start, counted and
// listed by key, and their connections answer ErrRecordUnreadable while
// every other connection is served. A record damaged while serving is
// quarantined when it is next read, never a bare internal error. Deleting
// a quarantined connection takes it out of the store and the count.
func TestQuarantine_DamagedRecordsInABoltFile(t *testing.T) {
	h := newHarness(t)
	const n = 7
	var ids []string
	for i := range n {
		ids = append(ids, h.connect("user-"+strconv.Itoa(i)).ID)
	}
	h.store.Close()
	flipped, truncated, future := ids[1], ids[3], ids[5]
	editBolt(t, h.path, map[string]func([]byte) []byte{
		"conn/" + flipped:   func(b []byte) []byte { b[len(b)/2] ^= 0x40; return b },
		"conn/" + truncated: func(b []byte) []byte { return b[:10] },
		"conn/" + future:    func(b []byte) []byte { binary.BigEndian.PutUint32(b[1:5], 99); return b },
	})
	h.open()
	ctx := context.Background()

	if h.v.Len() != n-3 || h.v.UnreadableCount() != 3 {
		t.Fatalf("Len() = %d, UnreadableCount() = %d; want %d served and 3 quarantined", h.v.Len(), h.v.UnreadableCount(), n-3)
	}
	reasons := map[string]string{flipped: seal.BrokenAuth, truncated: seal.BrokenFraming, future: seal.BrokenUnknownTerm}
	for _, id := range ids {
		_, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: id})
		if reason, bad := reasons[id]; bad {
			wantUnreadable(t, "AccessToken(damaged "+id+")", err, reason)
			_, err = h.v.Get(ctx, id)
			wantUnreadable(t, "Get(damaged)", err, reason)
			_, err = h.v.Revoke(ctx, id, "test")
			wantUnreadable(t, "Revoke(damaged)", err, reason)
			continue
		}
		if err != nil {
			t.Fatalf("AccessToken(%s), an intact record = %v", id, err)
		}
	}
	var listed []string
	for _, r := range h.v.Unreadable() {
		if r.Key != "conn/"+r.ConnectionID || reasons[r.ConnectionID] != r.Reason || r.Since.IsZero() {
			t.Errorf("Unreadable() holds %+v", r)
		}
		listed = append(listed, r.ConnectionID)
	}
	want := []string{flipped, truncated, future}
	slices.Sort(want)
	if !slices.Equal(listed, want) {
		t.Fatalf("Unreadable() lists %v; want %v", listed, want)
	}

	// Damaged while serving: the next read of the store finds it.
	live := ids[0]
	val, _, err := h.store.Get(ctx, "conn/"+live)
	if err != nil {
		t.Fatal(err)
	}
	val[len(val)-1] ^= 1
	if _, err := h.store.Apply(ctx, vault.Op{Key: "conn/" + live, Value: val, IfRev: vault.AnyRev}); err != nil {
		t.Fatal(err)
	}
	_, _, err = h.v.AccessToken(ctx, vault.TokenRequest{ID: live, Force: true})
	wantUnreadable(t, "AccessToken(force) of a record damaged while serving", err, seal.BrokenAuth)
	if h.v.UnreadableCount() != 4 || h.v.Len() != n-4 {
		t.Fatalf("UnreadableCount() = %d, Len() = %d after a record was damaged while serving; want 4 and %d", h.v.UnreadableCount(), h.v.Len(), n-4)
	}
	// Not served from memory either, and no longer the scheduler's.
	_, _, err = h.v.AccessToken(ctx, vault.TokenRequest{ID: live})
	wantUnreadable(t, "AccessToken of a record quarantined while serving", err, seal.BrokenAuth)
	if _, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: ids[2], Force: true}); err != nil {
		t.Fatalf("AccessToken(force) of an intact record = %v", err)
	}

	// Listing skips one found damaged on the way, and forgets it.
	listed2 := ids[4]
	val, _, err = h.store.Get(ctx, "conn/"+listed2)
	if err != nil {
		t.Fatal(err)
	}
	val[len(val)-2] ^= 1
	if _, err := h.store.Apply(ctx, vault.Op{Key: "conn/" + listed2, Value: val, IfRev: vault.AnyRev}); err != nil {
		t.Fatal(err)
	}
	page, _, err := h.v.List(ctx, vault.Filter{}, "", 100)
	if err != nil || len(page) != n-5 || h.v.UnreadableCount() != 5 || h.v.Len() != n-5 {
		t.Fatalf("List() with a record damaged while serving = %d connections, %v; %d quarantined, %d served; want %d, nil, 5, %d",
			len(page), err, h.v.UnreadableCount(), h.v.Len(), n-5, n-5)
	}

	// Rotating re-wraps the others and leaves the damaged ones be; their
	// headers still naming term 1 keep it from being retired.
	if term, _, err := h.v.RotateKeys(ctx); err != nil || term != 2 {
		t.Fatalf("RotateKeys() with quarantined records = %d, %v; want term 2", term, err)
	}
	if _, _, err := h.v.RetireKeys(ctx); !errors.Is(err, vault.ErrKeyTermInUse) {
		t.Fatalf("RetireKeys() with quarantined records under term 1 = %v; want ErrKeyTermInUse", err)
	}

	// The operator deletes one that cannot be restored.
	if _, err := h.v.Delete(ctx, flipped, "unreadable"); err != nil {
		t.Fatalf("Delete(quarantined) = %v", err)
	}
	if _, _, err := h.store.Get(ctx, "conn/"+flipped); !errors.Is(err, vault.ErrNotFound) {
		t.Fatalf("the deleted record is still stored: %v", err)
	}
	if h.v.UnreadableCount() != 4 {
		t.Fatalf("UnreadableCount() = %d after deleting one; want 4", h.v.UnreadableCount())
	}
	if _, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: flipped}); !errors.Is(err, vault.ErrNotFound) {
		t.Fatalf("AccessToken(deleted) = %v; want ErrNotFound", err)
	}
	// Once the rest are deleted too, term 1 goes.
	for _, r := range h.v.Unreadable() {
		if _, err := h.v.Delete(ctx, r.ConnectionID, "unreadable"); err != nil {
			t.Fatalf("Delete(%s) = %v", r.ConnectionID, err)
		}
	}
	if _, dropped, err := h.v.RetireKeys(ctx); err != nil || !slices.Equal(dropped, []uint32{1}) || h.v.UnreadableCount() != 0 {
		t.Fatalf("RetireKeys() after deleting the quarantined records = %v, %v (%d quarantined)", dropped, err, h.v.UnreadableCount())
	}
	for _, id := range []string{ids[2], ids[6]} {
		if _, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: id, Force: true}); err != nil {
			t.Fatalf("AccessToken(%s) after retiring = %v", id, err)
		}
	}
}
