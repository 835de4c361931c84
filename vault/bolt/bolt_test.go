package bolt_test

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/storetest"
)

func openStore(t testing.TB, path string, opts bolt.Options) *bolt.Store {
	t.Helper()
	st, err := bolt.Open(path, opts)
	if err != nil {
		t.Fatalf("Open(%q) = %v", path, err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestStore_Conformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) vault.Store {
		return openStore(t, filepath.Join(t.TempDir(), "vault.db"), bolt.Options{})
	})
}

func TestOpen_Locked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vault.db")
	first := openStore(t, path, bolt.Options{})

	const timeout = 100 * time.Millisecond
	start := time.Now()
	// In a goroutine: without the lock timeout bbolt waits forever, and
	// the test must fail, not hang until the suite's timeout.
	done := make(chan error, 1)
	go func() {
		st, err := bolt.Open(path, bolt.Options{LockTimeout: timeout})
		if err == nil {
			st.Close()
		}
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("second Open(%q) still waiting after 30s; want ErrLocked after %v", path, timeout)
	}
	took := time.Since(start)
	if !errors.Is(err, bolt.ErrLocked) {
		t.Fatalf("second Open(%q) = %v; want ErrLocked", path, err)
	}
	// bbolt polls the lock every 50ms and may give up one poll early; allow
	// generous slack for -race and a loaded machine, but far less than
	// "forever".
	if took > timeout+2*time.Second {
		t.Errorf("second Open(%q) failed after %v; want about %v", path, took, timeout)
	}

	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	openStore(t, path, bolt.Options{LockTimeout: timeout}) // the lock is free again
}

// TestOpen_Durable: a Store opened with the zero Options, as the sidecar
// opens it, fsyncs every commit; only NoSync turns that off.
func TestOpen_Durable(t *testing.T) {
	dir := t.TempDir()
	if st := openStore(t, filepath.Join(dir, "a.db"), bolt.Options{}); !st.Durable() {
		t.Error("Open with zero Options: commits not fsynced; want durable")
	}
	if st := openStore(t, filepath.Join(dir, "b.db"), bolt.Options{NoSync: true}); st.Durable() {
		t.Error("Open with NoSync: Durable() = true; want false")
	}
}

func TestOpen_FileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "tokenvault")
	path := filepath.Join(dir, "vault.db")
	openStore(t, path, bolt.Options{})
	for _, tt := range []struct {
		path string
		want os.FileMode
	}{
		{path, 0o600},
		{dir, 0o700},
	} {
		fi, err := os.Stat(tt.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != tt.want {
			t.Errorf("mode of %s = %v; want %v", tt.path, got, tt.want)
		}
	}
}

func TestOpen_NotABoltFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vault.db")
	if err := os.WriteFile(path, []byte("this is not a bbolt file, not even close; it is just text padded out to a size"), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := bolt.Open(path, bolt.Options{LockTimeout: 100 * time.Millisecond})
	if err == nil {
		st.Close()
		t.Fatalf("Open(%q) of a text file = nil; want an error", path)
	}
}

func TestStore_Reopen_Persists(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "vault.db")
	st := openStore(t, path, bolt.Options{})
	revs, err := st.Apply(ctx,
		vault.Op{Key: "conn/1", Value: []byte("one"), IfRev: vault.AnyRev},
		vault.Op{Key: "conn/2", Value: []byte("two"), IfRev: vault.AnyRev},
	)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Apply(ctx, vault.Op{Key: "conn/2", Delete: true, IfRev: vault.AnyRev}); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st = openStore(t, path, bolt.Options{})
	got, rev, err := st.Get(ctx, "conn/1")
	if err != nil || string(got) != "one" || rev != revs[0] {
		t.Errorf("Get(%q) after reopen = %q, %d, %v; want %q, %d, nil", "conn/1", got, rev, err, "one", revs[0])
	}
	if _, _, err := st.Get(ctx, "conn/2"); !errors.Is(err, vault.ErrNotFound) {
		t.Errorf("Get(%q) after reopen = %v; want ErrNotFound", "conn/2", err)
	}
	// The revision counter survives too: a re-created key gets a new one.
	again, err := st.Apply(ctx, vault.Op{Key: "conn/2", Value: []byte("two"), IfRev: 0})
	if err != nil {
		t.Fatal(err)
	}
	if again[0] <= revs[1] {
		t.Errorf("Apply(put conn/2) after reopen revision = %d; want > %d", again[0], revs[1])
	}
}

func TestStore_Closed(t *testing.T) {
	ctx := t.Context()
	st := openStore(t, filepath.Join(t.TempDir(), "vault.db"), bolt.Options{})
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Get(ctx, "k"); err == nil || errors.Is(err, vault.ErrNotFound) {
		t.Errorf("Get after Close = %v; want a closed-store error", err)
	}
	if _, err := st.Apply(ctx, vault.Op{Key: "k", IfRev: vault.AnyRev}); err == nil {
		t.Errorf("Apply after Close = nil; want an error")
	}
	if _, err := st.Take(ctx, "k"); err == nil || errors.Is(err, vault.ErrNotFound) {
		t.Errorf("Take after Close = %v; want a closed-store error", err)
	}
	if err := st.Scan(ctx, "", "", func(string, []byte, uint64) (bool, error) { return true, nil }); err == nil {
		t.Errorf("Scan after Close = nil; want an error")
	}
}

func TestStore_Apply_InvalidOps(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "vault.db"), bolt.Options{NoSync: true})
	tests := []struct {
		name string
		ops  []vault.Op
	}{
		{"empty key", []vault.Op{{Key: "", Value: []byte("v"), IfRev: vault.AnyRev}}},
		{"key too long for bbolt", []vault.Op{{Key: "ok", IfRev: vault.AnyRev}, {Key: string(make([]byte, 40000)), IfRev: vault.AnyRev}}},
	}
	for _, tt := range tests {
		if _, err := st.Apply(t.Context(), tt.ops...); err == nil {
			t.Errorf("%s: Apply = nil; want an error", tt.name)
		}
		if _, _, err := st.Get(t.Context(), "ok"); !errors.Is(err, vault.ErrNotFound) {
			t.Errorf("%s: Get(%q) after failed Apply = %v; want ErrNotFound", tt.name, "ok", err)
		}
	}
}

var benchValue = make([]byte, 512) // about one sealed connection record

func BenchmarkStore_Get(b *testing.B) {
	st := openStore(b, filepath.Join(b.TempDir(), "vault.db"), bolt.Options{NoSync: true})
	const n = 1000
	for i := range n {
		if _, err := st.Apply(b.Context(), vault.Op{Key: "conn/" + strconv.Itoa(i), Value: benchValue, IfRev: vault.AnyRev}); err != nil {
			b.Fatal(err)
		}
	}
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "conn/" + strconv.Itoa(i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		if _, _, err := st.Get(b.Context(), keys[i%n]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkStore_Apply(b *testing.B) {
	for _, bb := range []struct {
		name string
		opts bolt.Options
	}{
		{"NoSync", bolt.Options{NoSync: true}},
		{"Sync", bolt.Options{}},
	} {
		b.Run(bb.name, func(b *testing.B) {
			st := openStore(b, filepath.Join(b.TempDir(), "vault.db"), bb.opts)
			b.ReportAllocs()
			var rev uint64
			for b.Loop() {
				revs, err := st.Apply(b.Context(), vault.Op{Key: "conn/1", Value: benchValue, IfRev: int64(rev)})
				if err != nil {
					b.Fatal(err)
				}
				rev = revs[0]
			}
		})
	}
}

// syncedFreelist reads the newest of the file's two meta pages and reports
// whether it names a freelist page (bbolt's layout: a 16-byte page header,
// then magic, version, page size, flags, the root bucket (16 bytes), the
// freelist page id, the high-water page id, the transaction id).
func syncedFreelist(t *testing.T, path string) bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	pageSize := int(le.Uint32(b[24:]))
	var freelist, txid uint64
	for _, off := range []int{0, pageSize} {
		if id := le.Uint64(b[off+64:]); id >= txid {
			txid, freelist = id, le.Uint64(b[off+48:])
		}
	}
	return freelist != ^uint64(0)
}

// Commits do not write the freelist (it would be sorted and written whole
// on every one); Close writes it once, so that the next Open reads it
// instead of walking every page of the file.
func TestClose_WritesFreelist(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "vault.db")
	st, err := bolt.Open(path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		// Rewrites, so that pages are freed.
		if _, err := st.Apply(ctx, vault.Op{Key: "conn/" + strconv.Itoa(i%20), Value: make([]byte, 1000), IfRev: -1}); err != nil {
			t.Fatal(err)
		}
	}
	if syncedFreelist(t, path) {
		t.Error("a commit wrote the freelist")
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if !syncedFreelist(t, path) {
		t.Fatal("Close did not write the freelist")
	}
	// And the store opens and reads as before, then writes on.
	st = openStore(t, path, bolt.Options{})
	if _, _, err := st.Get(ctx, "conn/7"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Apply(ctx, vault.Op{Key: "conn/7", Value: []byte("x"), IfRev: -1}); err != nil {
		t.Fatal(err)
	}
}
