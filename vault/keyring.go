package vault

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/tokenvault/tokenvault/vault/seal"
)

const (
	// rewrapAttempts bounds how often Rewrap retries one record that keeps
	// being rewritten under it.
	rewrapAttempts = 10
	// rewrapBatch is how many stale records Rewrap collects per Scan (a Scan
	// callback must not write to the Store).
	rewrapBatch = 256
)

// OpenKeyring opens (or, on an empty store, creates) the keyring kept in st,
// sealed by mk: seal.OpenKeyring over st. The Keyring keeps st for Rotate
// and Reload.
func OpenKeyring(ctx context.Context, st Store, mk seal.MasterKey) (*seal.Keyring, error) {
	if st == nil {
		return nil, errors.New("vault: OpenKeyring needs a Store")
	}
	return seal.OpenKeyring(ctx, keyringStore{st}, mk)
}

// keyringStore is a Store as the seal.Store a Keyring keeps its records in.
type keyringStore struct{ st Store }

func (s keyringStore) Get(ctx context.Context, key string) ([]byte, uint64, error) {
	v, rev, err := s.st.Get(ctx, key)
	if errors.Is(err, ErrNotFound) {
		return nil, 0, nil
	}
	return v, rev, err
}

func (s keyringStore) Put(ctx context.Context, recs ...seal.Record) ([]uint64, error) {
	ops := make([]Op, len(recs))
	for i, r := range recs {
		ops[i] = Op{Key: r.Key, Value: r.Value, IfRev: int64(r.IfRev)}
	}
	revs, err := s.st.Apply(ctx, ops...)
	if errors.Is(err, ErrConflict) {
		// Both sentinels match: the keyring retries on seal.ErrConflict,
		// callers of Rotate test for vault.ErrConflict.
		err = fmt.Errorf("%w: %w", seal.ErrConflict, err)
	}
	return revs, err
}

// Rewrap re-seals with k, under its current term, every value below each of the
// given key prefixes whose term is older, each with a compare-and-swap on its
// revision: if a concurrent writer changes the record first, Rewrap reads it
// again and re-seals it only if it is still stale. It returns how many values
// it rewrote, so a second pass after a complete one returns 0.
//
// Every value below the prefixes must be one this keyring sealed; the
// keyring's own records (seal.KeyringKey, seal.SchemaKey) are skipped. A stale
// value that does not open does not stop the pass: Rewrap carries on and then
// returns an error naming such keys (never their values) along with the
// count. A Store error stops the pass.
func Rewrap(ctx context.Context, st Store, k *seal.Keyring, prefixes ...string) (int, error) {
	target := k.Term()
	if target == 0 {
		return 0, errors.New("vault: rewrap: the keyring is not open")
	}
	var (
		n      int
		broken []string
	)
	for _, prefix := range prefixes {
		after := ""
		for {
			batch, last, more, err := staleBatch(ctx, st, prefix, after, target)
			if err != nil {
				return n, fmt.Errorf("vault: rewrap: %w", err)
			}
			for _, r := range batch {
				done, err := rewrapOne(ctx, st, k, r, target)
				switch {
				case errors.Is(err, seal.ErrBroken):
					broken = append(broken, r.key)
				case err != nil:
					return n, fmt.Errorf("vault: rewrap %s: %w", r.key, err)
				case done:
					n++
				}
			}
			if !more {
				break
			}
			after = last
		}
	}
	if len(broken) > 0 {
		const show = 10
		names := broken[:min(len(broken), show)]
		more := ""
		if len(broken) > show {
			more = fmt.Sprintf(" and %d more", len(broken)-show)
		}
		return n, fmt.Errorf("vault: rewrap: %d values do not open: %q%s: %w", len(broken), names, more, seal.ErrBroken)
	}
	return n, nil
}

type staleRecord struct {
	key string
	val []byte
	rev uint64
}

// staleBatch scans prefix after `after` and collects up to rewrapBatch
// records sealed under a term older than target. It returns the last key it
// visited and whether the scan stopped early (more to come).
func staleBatch(ctx context.Context, st Store, prefix, after string, target uint32) (batch []staleRecord, last string, more bool, err error) {
	err = st.Scan(ctx, prefix, after, func(key string, value []byte, rev uint64) (bool, error) {
		last = key
		if key == seal.KeyringKey || key == seal.SchemaKey {
			return true, nil
		}
		// A value with a broken header is collected too: rewrapOne reports it.
		if term, err := seal.TermOf(value); err == nil && term >= target {
			return true, nil
		}
		batch = append(batch, staleRecord{key: key, val: slices.Clone(value), rev: rev})
		if len(batch) == rewrapBatch {
			more = true
			return false, nil
		}
		return true, nil
	})
	return batch, last, more, err
}

// rewrapOne re-seals r under the current term. It reports false with a nil
// error when a concurrent writer deleted r or already moved it forward.
func rewrapOne(ctx context.Context, st Store, k *seal.Keyring, r staleRecord, target uint32) (bool, error) {
	for range rewrapAttempts {
		plain, err := k.Open(r.key, r.val)
		if err != nil {
			return false, err
		}
		sealed, err := k.Seal(r.key, plain)
		clear(plain)
		if err != nil {
			return false, err
		}
		_, err = st.Apply(ctx, Op{Key: r.key, Value: sealed, IfRev: int64(r.rev)})
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, ErrConflict) {
			return false, err
		}
		// A concurrent writer won. Look again.
		val, rev, err := st.Get(ctx, r.key)
		if errors.Is(err, ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if term, err := seal.TermOf(val); err == nil && term >= target {
			return false, nil
		}
		r.val, r.rev = val, rev
	}
	return false, fmt.Errorf("gave up after %d conflicting writes: %w", rewrapAttempts, ErrConflict)
}

// RotateKeys starts a new key term and re-seals every record under it. It
// returns the new term and how many records were re-sealed.
func (v *Vault) RotateKeys(ctx context.Context) (uint32, int, error) {
	term, err := v.kr.Rotate(ctx)
	if err != nil {
		return 0, 0, err
	}
	n, err := Rewrap(ctx, v.store, v.kr, connPrefix, statePrefix, flowPrefix, sessionPrefix, eventPrefix)
	if err != nil {
		return term, n, err
	}
	return term, n, nil
}
