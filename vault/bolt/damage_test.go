package bolt_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
)

// TestOpen_EmptyFile_Refused: a new data dir (no file) gets a new store;
// an existing file emptied to nothing is refused with ErrEmptyFile and left
// as it is, not initialised as a new store.
func TestOpen_EmptyFile_Refused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vault.db")
	st := openStore(t, path, bolt.Options{})
	if _, err := st.Apply(context.Background(), vault.Op{Key: "k", Value: []byte("v"), IfRev: -1}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	st, err := bolt.Open(path, bolt.Options{})
	if err == nil {
		st.Close()
	}
	if !errors.Is(err, bolt.ErrEmptyFile) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Open(emptied file) = %v; want ErrEmptyFile naming %s", err, path)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != 0 {
		t.Errorf("the emptied file after Open: %v, %v; want it left empty", fi, err)
	}
}

// TestOpen_Damaged_ErrorsNotPanics damages copies of a store page by page
// (each page zeroed, then bytes flipped inside each page) and by
// truncation, and opens and reads each: bbolt panics on many of them; the
// Store answers an error naming the file instead, on Open or on read, and
// reads what is not damaged.
func TestOpen_Damaged_ErrorsNotPanics(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "vault.db")
	st := openStore(t, path, bolt.Options{})
	const n = 200
	for i := range n {
		if _, err := st.Apply(ctx, vault.Op{Key: fmt.Sprintf("conn/%04d", i), Value: make([]byte, 300), IfRev: -1}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const page = 4096
	type damage struct {
		name string
		data []byte
	}
	var cases []damage
	for _, size := range []int{100, page, 2 * page, 3 * page, len(orig) / 2, len(orig) - page} {
		cases = append(cases, damage{fmt.Sprintf("truncated to %d", size), orig[:size]})
	}
	for p := range len(orig) / page {
		zero := append([]byte(nil), orig...)
		clear(zero[p*page : (p+1)*page])
		flip := append([]byte(nil), orig...)
		for i := p*page + 16; i < p*page+64; i++ {
			flip[i] ^= 0xa5
		}
		cases = append(cases, damage{fmt.Sprintf("page %d zeroed", p), zero}, damage{fmt.Sprintf("page %d flipped", p), flip})
	}
	refused, readErrs := 0, 0
	for i, c := range cases {
		p := filepath.Join(dir, fmt.Sprintf("damaged-%03d.db", i))
		if err := os.WriteFile(p, c.data, 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := bolt.Open(p, bolt.Options{})
		if err != nil {
			refused++
			if !strings.Contains(err.Error(), p) {
				t.Errorf("%s: Open = %v; want an error naming the file", c.name, err)
			}
			continue
		}
		got := 0
		err = st.Scan(ctx, "", "", func(string, []byte, uint64) (bool, error) { got++; return true, nil })
		for j := range n {
			if _, _, gerr := st.Get(ctx, fmt.Sprintf("conn/%04d", j)); gerr != nil && !errors.Is(gerr, vault.ErrNotFound) {
				err = errors.Join(err, gerr)
			}
		}
		if err != nil {
			readErrs++
			if !errors.Is(err, bolt.ErrDamaged) || !strings.Contains(err.Error(), p) {
				t.Errorf("%s: reads = %v; want errors wrapping ErrDamaged naming the file", c.name, err)
			}
		}
		st.Close()
	}
	t.Logf("%d damaged copies: %d refused at Open, %d with read errors", len(cases), refused, readErrs)
	if refused == 0 || readErrs == 0 {
		t.Errorf("%d refused at Open, %d with read errors; want some of each (the damage reached nothing?)", refused, readErrs)
	}
}

// TestScan_CallbackPanic_IsNotDamage: a panic in Scan's callback is the
// caller's, raised again as it was, not reported as a damaged file.
func TestScan_CallbackPanic_IsNotDamage(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, filepath.Join(t.TempDir(), "vault.db"), bolt.Options{})
	if _, err := st.Apply(ctx, vault.Op{Key: "k", Value: []byte("v"), IfRev: -1}); err != nil {
		t.Fatal(err)
	}
	func() {
		defer func() {
			if p := recover(); p != "callback" {
				t.Errorf("Scan with a panicking callback: recovered %v; want the callback's panic", p)
			}
		}()
		st.Scan(ctx, "", "", func(string, []byte, uint64) (bool, error) { panic("callback") })
	}()
	if _, _, err := st.Get(ctx, "k"); err != nil {
		t.Errorf("Get after the callback's panic = %v", err)
	}
}
