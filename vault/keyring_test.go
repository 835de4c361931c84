package vault_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/seal"
	"github.com/tokenvault/tokenvault/vault/storetest"
)

// ringStore is an in-memory vault.Store for the keyring tests. It counts
// writes, and beforeApply (if set) runs before each Apply, outside the lock,
// to play a concurrent writer. It passes storetest.
type ringStore struct {
	mu          sync.Mutex
	seq         uint64
	recs        map[string]ringRec
	writes      int // Apply and Take calls that changed something
	beforeApply func(ops []vault.Op)
}

type ringRec struct {
	val []byte
	rev uint64
}

func newRingStore() *ringStore { return &ringStore{recs: map[string]ringRec{}} }

func (s *ringStore) Get(ctx context.Context, key string) ([]byte, uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recs[key]
	if !ok {
		return nil, 0, vault.ErrNotFound
	}
	return bytes.Clone(r.val), r.rev, nil
}

func (s *ringStore) Apply(ctx context.Context, ops ...vault.Op) ([]uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.beforeApply != nil {
		s.beforeApply(ops)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	for _, op := range ops {
		if op.Key == "" || seen[op.Key] {
			return nil, errors.New("ringStore: empty or repeated key")
		}
		seen[op.Key] = true
		if op.Check && op.IfRev < 0 {
			return nil, errors.New("ringStore: check without a revision")
		}
		if op.IfRev >= 0 && s.recs[op.Key].rev != uint64(op.IfRev) {
			return nil, vault.ErrConflict
		}
	}
	s.seq++
	revs := make([]uint64, len(ops))
	for i, op := range ops {
		if op.Check {
			continue
		}
		if op.Delete {
			delete(s.recs, op.Key)
			continue
		}
		s.recs[op.Key] = ringRec{bytes.Clone(op.Value), s.seq}
		revs[i] = s.seq
	}
	s.writes++
	return revs, nil
}

func (s *ringStore) Take(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recs[key]
	if !ok {
		return nil, vault.ErrNotFound
	}
	delete(s.recs, key)
	s.writes++
	return r.val, nil
}

func (s *ringStore) Scan(ctx context.Context, prefix, after string, fn func(string, []byte, uint64) (bool, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	var keys []string
	for k := range s.recs {
		if strings.HasPrefix(k, prefix) && k > after {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	recs := make([]ringRec, len(keys))
	for i, k := range keys {
		recs[i] = s.recs[k]
	}
	s.mu.Unlock()
	for i, k := range keys {
		if more, err := fn(k, bytes.Clone(recs[i].val), recs[i].rev); err != nil || !more {
			return err
		}
	}
	return nil
}

func (s *ringStore) Close() error { return nil }

func (s *ringStore) writeCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writes
}

func TestRingStore_Conformance(t *testing.T) {
	storetest.Run(t, func(*testing.T) vault.Store { return newRingStore() })
}

// ringBolt returns a bbolt Store in a temporary directory.
func ringBolt(t testing.TB) *bolt.Store {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "vault.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func ringMasterKey(t testing.TB) seal.MasterKey {
	t.Helper()
	mk, err := seal.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	return mk
}

func ringOpen(t testing.TB, st vault.Store, mk seal.MasterKey) *seal.Keyring {
	t.Helper()
	k, err := vault.OpenKeyring(context.Background(), st, mk)
	if err != nil {
		t.Fatalf("OpenKeyring() = %v", err)
	}
	return k
}

func ringSeal(t testing.TB, k *seal.Keyring, key, plaintext string) []byte {
	t.Helper()
	sealed, err := k.Seal(key, []byte(plaintext))
	if err != nil {
		t.Fatalf("Seal(%q) = %v", key, err)
	}
	return sealed
}

func ringWantOpen(t testing.TB, k *seal.Keyring, key string, sealed []byte, want string) {
	t.Helper()
	got, err := k.Open(key, sealed)
	if err != nil || string(got) != want {
		t.Fatalf("Open(%q) = %q, %v; want %q", key, got, err, want)
	}
}

// ringSnapshot is every key, value and revision in st.
func ringSnapshot(t *testing.T, st vault.Store) []string {
	t.Helper()
	var snap []string
	err := st.Scan(context.Background(), "", "", func(key string, value []byte, rev uint64) (bool, error) {
		snap = append(snap, fmt.Sprintf("%s rev %d %x", key, rev, value))
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func TestOpenKeyring_New(t *testing.T) {
	ctx := t.Context()
	st := newRingStore()
	k := ringOpen(t, st, ringMasterKey(t))
	if got := k.Term(); got != 1 {
		t.Errorf("Term() of a new keyring = %d; want 1", got)
	}
	if v, _, err := st.Get(ctx, "meta/schema"); err != nil || string(v) != "1" {
		t.Errorf("Get(%q) = %q, %v; want %q", "meta/schema", v, err, "1")
	}
	v, _, err := st.Get(ctx, "meta/keyring")
	if err != nil {
		t.Fatalf("Get(%q) = %v", "meta/keyring", err)
	}
	if term, err := seal.TermOf(v); term != 0 || err != nil {
		t.Errorf("SealedTerm(meta/keyring) = %d, %v; want 0 (the master key), nil", term, err)
	}
	if bytes.Contains(v, []byte(`"terms"`)) {
		t.Errorf("meta/keyring holds its JSON in clear")
	}
	if n := st.writeCount(); n != 1 {
		t.Errorf("OpenKeyring on an empty store made %d writes; want 1", n)
	}
}

func TestOpenKeyring_Existing(t *testing.T) {
	st, mk := newRingStore(), ringMasterKey(t)
	sealed := ringSeal(t, ringOpen(t, st, mk), "conn/1", "token")
	before := st.writeCount()
	k := ringOpen(t, st, mk)
	ringWantOpen(t, k, "conn/1", sealed, "token")
	if n := st.writeCount() - before; n != 0 {
		t.Errorf("OpenKeyring of an existing keyring made %d writes; want 0", n)
	}
}

// TestOpenKeyring_Concurrent starts several processes on one empty store at
// once: one creates the keyring, all end up with it.
func TestOpenKeyring_Concurrent(t *testing.T) {
	st, mk := newRingStore(), ringMasterKey(t)
	rings := make([]*seal.Keyring, 8)
	var wg sync.WaitGroup
	for i := range rings {
		wg.Go(func() {
			k, err := vault.OpenKeyring(context.Background(), st, mk)
			if err != nil {
				t.Errorf("OpenKeyring() = %v", err)
				return
			}
			rings[i] = k
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	sealed := ringSeal(t, rings[0], "conn/1", "token")
	for _, k := range rings[1:] {
		ringWantOpen(t, k, "conn/1", sealed, "token")
	}
}

func TestOpenKeyring_WrongMasterKey(t *testing.T) {
	for _, tt := range []struct {
		name string
		st   vault.Store
	}{
		{"bolt", ringBolt(t)},
		{"memory", newRingStore()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			k := ringOpen(t, tt.st, ringMasterKey(t))
			mustApplyRing(t, tt.st, vault.Op{Key: "conn/1", Value: ringSeal(t, k, "conn/1", "token"), IfRev: vault.AnyRev})
			before := ringSnapshot(t, tt.st)
			var writes int
			if rs, ok := tt.st.(*ringStore); ok {
				writes = rs.writeCount()
			}

			got, err := vault.OpenKeyring(t.Context(), tt.st, ringMasterKey(t))
			if !errors.Is(err, seal.ErrWrongMasterKey) || got != nil {
				t.Fatalf("OpenKeyring(wrong key) = %v, %v; want nil, ErrWrongMasterKey", got, err)
			}
			if after := ringSnapshot(t, tt.st); !slices.Equal(after, before) {
				t.Errorf("OpenKeyring(wrong key) changed the store:\nbefore %q\nafter  %q", before, after)
			}
			if rs, ok := tt.st.(*ringStore); ok && rs.writeCount() != writes {
				t.Errorf("OpenKeyring(wrong key) made %d writes; want 0", rs.writeCount()-writes)
			}
		})
	}
}

func mustApplyRing(t *testing.T, st vault.Store, ops ...vault.Op) {
	t.Helper()
	if _, err := st.Apply(context.Background(), ops...); err != nil {
		t.Fatalf("Apply = %v", err)
	}
}

func TestOpenKeyring_SchemaVersion(t *testing.T) {
	tests := []struct {
		schema  string
		keyring bool // whether the store already holds a keyring
		wantErr error
	}{
		{"1", true, nil},
		{"2", true, seal.ErrSchemaVersion},
		{"4294967296", true, seal.ErrSchemaVersion},
		{"two", true, seal.ErrSchemaVersion},
		{"0", true, seal.ErrSchemaVersion},
		{"2", false, seal.ErrSchemaVersion},
	}
	for _, tt := range tests {
		st, mk := newRingStore(), ringMasterKey(t)
		if tt.keyring {
			ringOpen(t, st, mk)
		}
		mustApplyRing(t, st, vault.Op{Key: "meta/schema", Value: []byte(tt.schema), IfRev: vault.AnyRev})
		before, writes := ringSnapshot(t, st), st.writeCount()
		_, err := vault.OpenKeyring(t.Context(), st, mk)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("OpenKeyring() with meta/schema %q = %v; want %v", tt.schema, err, tt.wantErr)
		}
		if after := ringSnapshot(t, st); !slices.Equal(after, before) || st.writeCount() != writes {
			t.Errorf("OpenKeyring() with meta/schema %q wrote to the store", tt.schema)
		}
	}
}

// TestOpenKeyring_SchemaWithoutKeyring: a store that was initialized but
// lost its keyring is not silently given a new one.
func TestOpenKeyring_SchemaWithoutKeyring(t *testing.T) {
	st := newRingStore()
	mustApplyRing(t, st, vault.Op{Key: "meta/schema", Value: []byte("1"), IfRev: 0})
	writes := st.writeCount()
	if k, err := vault.OpenKeyring(t.Context(), st, ringMasterKey(t)); err == nil {
		t.Errorf("OpenKeyring() on a store with a schema but no keyring = %v, nil; want an error", k)
	}
	if st.writeCount() != writes {
		t.Errorf("OpenKeyring() wrote to the store")
	}
}

// ringFill writes n sealed values under prefix and returns their plaintexts
// by key.
func ringFill(t *testing.T, st vault.Store, k *seal.Keyring, prefix string, n int) map[string]string {
	t.Helper()
	want := map[string]string{}
	for i := range n {
		key := fmt.Sprintf("%s%04d", prefix, i)
		want[key] = "token for " + key
		mustApplyRing(t, st, vault.Op{Key: key, Value: ringSeal(t, k, key, want[key]), IfRev: vault.AnyRev})
	}
	return want
}

// ringWantStored checks that every key in want opens under k to its plaintext
// and carries the given term.
func ringWantStored(t *testing.T, st vault.Store, k *seal.Keyring, want map[string]string, term uint32) {
	t.Helper()
	for key, plain := range want {
		v, _, err := st.Get(t.Context(), key)
		if err != nil {
			t.Fatalf("Get(%q) = %v", key, err)
		}
		if got, err := seal.TermOf(v); got != term || err != nil {
			t.Fatalf("SealedTerm(%q) = %d, %v; want %d", key, got, err, term)
		}
		ringWantOpen(t, k, key, v, plain)
	}
}

func TestKeyring_Rotate(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "vault.db")
	st, err := bolt.Open(path, bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { st.Close() }()
	mk := ringMasterKey(t)
	k := ringOpen(t, st, mk)
	want := ringFill(t, st, k, "conn/", 10)
	maps := ringFill(t, st, k, "state/", 5)
	for key, v := range maps {
		want[key] = v
	}
	mustApplyRing(t, st, vault.Op{Key: "ident/x", Value: []byte("not sealed"), IfRev: vault.AnyRev})
	early := ringSeal(t, k, "conn/early", "sealed under term 1")

	term, err := k.Rotate(ctx)
	if err != nil || term != 2 || k.Term() != 2 {
		t.Fatalf("Rotate() = %d, %v, Term() = %d; want 2, nil, 2", term, err, k.Term())
	}
	ringWantOpen(t, k, "conn/early", early, "sealed under term 1")
	ringWantStored(t, st, k, want, 1)
	if got, _ := seal.TermOf(ringSeal(t, k, "conn/new", "x")); got != 2 {
		t.Errorf("SealedTerm(Seal after Rotate) = %d; want 2", got)
	}

	if n, err := vault.Rewrap(ctx, st, k, "conn/", "state/"); n != len(want) || err != nil {
		t.Fatalf("Rewrap() = %d, %v; want %d, nil", n, err, len(want))
	}
	ringWantStored(t, st, k, want, 2)
	if n, err := vault.Rewrap(ctx, st, k, "conn/", "state/"); n != 0 || err != nil {
		t.Fatalf("second Rewrap() = %d, %v; want 0, nil", n, err)
	}

	// A restart finds the rotated keyring.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if st, err = bolt.Open(path, bolt.Options{NoSync: true}); err != nil {
		t.Fatal(err)
	}
	k = ringOpen(t, st, mk)
	if k.Term() != 2 {
		t.Fatalf("Term() after reopen = %d; want 2", k.Term())
	}
	ringWantStored(t, st, k, want, 2)
	ringWantOpen(t, k, "conn/early", early, "sealed under term 1")

	if term, err := k.Rotate(ctx); term != 3 || err != nil {
		t.Fatalf("Rotate() after reopen = %d, %v; want 3, nil", term, err)
	}
	if n, err := vault.Rewrap(ctx, st, k, "conn/", "state/"); n != len(want) || err != nil {
		t.Fatalf("Rewrap() after the second Rotate = %d, %v; want %d, nil", n, err, len(want))
	}
	ringWantStored(t, st, k, want, 3)
	if v, _, err := st.Get(ctx, "ident/x"); err != nil || string(v) != "not sealed" {
		t.Errorf("Get(%q) = %q, %v; want it untouched", "ident/x", v, err)
	}
}

// TestKeyring_Rotate_OtherProcess plays two processes sharing one store.
func TestKeyring_Rotate_OtherProcess(t *testing.T) {
	ctx := t.Context()
	st, mk := newRingStore(), ringMasterKey(t)
	a, b := ringOpen(t, st, mk), ringOpen(t, st, mk)

	if term, err := a.Rotate(ctx); term != 2 || err != nil {
		t.Fatalf("a.Rotate() = %d, %v; want 2, nil", term, err)
	}
	fromA := ringSeal(t, a, "conn/1", "from a")
	if got, err := b.Open("conn/1", fromA); !errors.Is(err, seal.ErrBroken) {
		t.Fatalf("b.Open(%q) of a term-2 value before Reload = %q, %v; want ErrSealBroken", "conn/1", got, err)
	}
	if err := b.Reload(ctx); err != nil || b.Term() != 2 {
		t.Fatalf("b.Reload() = %v, Term() = %d; want nil, 2", err, b.Term())
	}
	ringWantOpen(t, b, "conn/1", fromA, "from a")

	// a rotates again; b's Rotate from a stale keyring conflicts, reloads
	// and adds a term on top.
	if term, err := a.Rotate(ctx); term != 3 || err != nil {
		t.Fatalf("a.Rotate() = %d, %v; want 3, nil", term, err)
	}
	if term, err := b.Rotate(ctx); term != 4 || err != nil {
		t.Fatalf("b.Rotate() on a stale keyring = %d, %v; want 4, nil", term, err)
	}
	if err := a.Reload(ctx); err != nil || a.Term() != 4 {
		t.Fatalf("a.Reload() = %v, Term() = %d; want nil, 4", err, a.Term())
	}
	for _, k := range []*seal.Keyring{a, b} {
		ringWantOpen(t, k, "conn/1", fromA, "from a")
		ringWantOpen(t, k, "conn/2", ringSeal(t, a, "conn/2", "a at 4"), "a at 4")
		ringWantOpen(t, k, "conn/3", ringSeal(t, b, "conn/3", "b at 4"), "b at 4")
	}
}

func TestKeyring_Rewrap_ConcurrentWriter(t *testing.T) {
	tests := []struct {
		name string
		// write plays a writer racing Rewrap's write of conn/0001; old is
		// a value sealed for conn/0001 under term 1.
		write     func(t *testing.T, st *ringStore, k *seal.Keyring, old []byte)
		wantCount int
		wantValue string // conn/0001 afterwards; "" if deleted
	}{{
		name: "writes under the new term",
		write: func(t *testing.T, st *ringStore, k *seal.Keyring, _ []byte) {
			mustApplyRing(t, st, vault.Op{Key: "conn/0001", Value: ringSeal(t, k, "conn/0001", "newer"), IfRev: vault.AnyRev})
		},
		wantCount: 4, wantValue: "newer",
	}, {
		name: "writes under the old term",
		write: func(t *testing.T, st *ringStore, _ *seal.Keyring, old []byte) {
			mustApplyRing(t, st, vault.Op{Key: "conn/0001", Value: old, IfRev: vault.AnyRev})
		},
		wantCount: 5, wantValue: "older writer",
	}, {
		name: "deletes",
		write: func(t *testing.T, st *ringStore, _ *seal.Keyring, _ []byte) {
			mustApplyRing(t, st, vault.Op{Key: "conn/0001", Delete: true, IfRev: vault.AnyRev})
		},
		wantCount: 4,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			st := newRingStore()
			k := ringOpen(t, st, ringMasterKey(t))
			want := ringFill(t, st, k, "conn/", 5)
			old := ringSeal(t, k, "conn/0001", "older writer")
			if _, err := k.Rotate(ctx); err != nil {
				t.Fatal(err)
			}
			var fired atomic.Bool // the writer's own Apply comes through here too
			st.beforeApply = func(ops []vault.Op) {
				if ops[0].Key == "conn/0001" && fired.CompareAndSwap(false, true) {
					tt.write(t, st, k, old)
				}
			}
			n, err := vault.Rewrap(ctx, st, k, "conn/")
			st.beforeApply = nil
			if n != tt.wantCount || err != nil {
				t.Fatalf("Rewrap() = %d, %v; want %d, nil", n, err, tt.wantCount)
			}
			if tt.wantValue == "" {
				delete(want, "conn/0001")
				if _, _, err := st.Get(ctx, "conn/0001"); !errors.Is(err, vault.ErrNotFound) {
					t.Errorf("Get(%q) = %v; want ErrNotFound", "conn/0001", err)
				}
			} else {
				want["conn/0001"] = tt.wantValue
			}
			ringWantStored(t, st, k, want, 2)
		})
	}
}

func TestKeyring_Rewrap_Unopenable(t *testing.T) {
	ctx := t.Context()
	st := newRingStore()
	k := ringOpen(t, st, ringMasterKey(t))
	want := ringFill(t, st, k, "conn/", 3)
	garbage := []byte("plain-refresh-token-not-sealed-at-all")
	forged := ringWithTerm(ringSeal(t, k, "conn/forged", "x"), 1)
	forged[20] ^= 1
	mustApplyRing(t, st,
		vault.Op{Key: "conn/bad", Value: garbage, IfRev: vault.AnyRev},
		vault.Op{Key: "conn/forged", Value: forged, IfRev: vault.AnyRev},
	)
	if _, err := k.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := vault.Rewrap(ctx, st, k, "conn/")
	if n != len(want) || !errors.Is(err, seal.ErrBroken) {
		t.Fatalf("Rewrap() = %d, %v; want %d, ErrSealBroken", n, err, len(want))
	}
	msg := err.Error()
	if !strings.Contains(msg, "conn/bad") || !strings.Contains(msg, "conn/forged") {
		t.Errorf("Rewrap() error %q does not name the broken keys", msg)
	}
	if strings.Contains(msg, "plain-refresh") || strings.Contains(msg, fmt.Sprintf("%x", garbage[:8])) {
		t.Errorf("Rewrap() error %q shows a value", msg)
	}
	ringWantStored(t, st, k, want, 2)
}

// TestKeyring_Rewrap_Many crosses Rewrap's batch size.
func TestKeyring_Rewrap_Many(t *testing.T) {
	ctx := t.Context()
	st, mk := newRingStore(), ringMasterKey(t)
	k := ringOpen(t, st, mk)
	want := ringFill(t, st, k, "conn/", 700)
	if _, err := k.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := vault.Rewrap(ctx, st, k, "conn/"); n != len(want) || err != nil {
		t.Fatalf("Rewrap() = %d, %v; want %d, nil", n, err, len(want))
	}
	ringWantStored(t, st, k, want, 2)
	// meta/ holds the keyring itself, which Rewrap must leave alone.
	if n, err := vault.Rewrap(ctx, st, k, ""); n != 0 || err != nil {
		t.Fatalf("Rewrap(\"\") = %d, %v; want 0, nil", n, err)
	}
	if k := ringOpen(t, st, mk); k.Term() != 2 {
		t.Errorf("Term() after reopen = %d; want 2", k.Term())
	}
}

// TestKeyring_Concurrent seals and opens from many goroutines while the
// keyring rotates (run with -race).
func TestKeyring_Concurrent(t *testing.T) {
	st := newRingStore()
	k := ringOpen(t, st, ringMasterKey(t))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			key := fmt.Sprintf("conn/%d", g)
			for i := range 200 {
				plain := fmt.Sprint(g, i)
				sealed, err := k.Seal(key, []byte(plain))
				if err != nil {
					t.Error(err)
					return
				}
				if got, err := k.Open(key, sealed); err != nil || string(got) != plain {
					t.Errorf("Open(%q) = %q, %v; want %q", key, got, err, plain)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 5 {
			if _, err := k.Rotate(context.Background()); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()
	if k.Term() != 6 {
		t.Errorf("Term() after 5 rotations = %d; want 6", k.Term())
	}
}

func ringWithTerm(sealed []byte, term uint32) []byte {
	b := bytes.Clone(sealed)
	b[1], b[2], b[3], b[4] = byte(term>>24), byte(term>>16), byte(term>>8), byte(term)
	return b
}
