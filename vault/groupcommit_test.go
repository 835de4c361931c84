package vault_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/storetest"
)

func openBolt(t *testing.T) *bolt.Store {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "s.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestGroupCommit_Conformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) vault.Store { return vault.GroupCommit(openBolt(t)) })
}

// applyCounter counts the Applies that reach the store below.
type applyCounter struct {
	vault.Store
	applies atomic.Int32
}

func (s *applyCounter) Apply(ctx context.Context, ops ...vault.Op) ([]uint64, error) {
	s.applies.Add(1)
	return s.Store.Apply(ctx, ops...)
}

// TestGroupCommit_ConcurrentWriters: many writers of their own records and
// of shared ones; each gets its own outcome, conflicts only where its own
// compare failed, and the writers share transactions.
func TestGroupCommit_ConcurrentWriters(t *testing.T) {
	below := &applyCounter{Store: openBolt(t)}
	st := vault.GroupCommit(below)
	defer st.Close()
	ctx := context.Background()
	const writers, rounds = 16, 20
	var wg sync.WaitGroup
	var calls atomic.Int32
	for w := range writers {
		wg.Go(func() {
			key := fmt.Sprintf("own/%d", w)
			var rev uint64
			for r := range rounds {
				calls.Add(1)
				revs, err := st.Apply(ctx, vault.Op{Key: key, Value: []byte(fmt.Sprint(r)), IfRev: int64(rev)})
				if err != nil {
					t.Errorf("writer %d round %d: Apply = %v", w, r, err)
					return
				}
				rev = revs[0]
				if r%4 != 0 {
					continue
				}
				// A read-modify-write of a shared counter: conflicts are
				// expected, and must be real ones.
				for {
					v, srev, err := st.Get(ctx, "shared")
					if errors.Is(err, vault.ErrNotFound) {
						v, srev = []byte("0"), 0
					} else if err != nil {
						t.Error(err)
						return
					}
					var n int
					fmt.Sscan(string(v), &n)
					calls.Add(1)
					_, err = st.Apply(ctx, vault.Op{Key: "shared", Value: []byte(fmt.Sprint(n + 1)), IfRev: int64(srev)})
					if err == nil {
						break
					}
					if !errors.Is(err, vault.ErrConflict) {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	v, _, err := st.Get(ctx, "shared")
	if err != nil || string(v) != fmt.Sprint(writers*rounds/4) {
		t.Errorf("shared counter = %s, %v; want %d (no lost update)", v, err, writers*rounds/4)
	}
	for w := range writers {
		if v, _, _ := st.Get(ctx, fmt.Sprintf("own/%d", w)); string(v) != fmt.Sprint(rounds-1) {
			t.Errorf("own/%d = %s; want %d", w, v, rounds-1)
		}
	}
	t.Logf("%d applies reached the store for %d calls", below.applies.Load(), calls.Load())
}
