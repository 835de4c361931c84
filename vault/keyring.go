package vault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

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
// returns the new term and how many records were re-sealed. Values that do
// not open are left as they are and logged by key; they do not fail it.
func (v *Vault) RotateKeys(ctx context.Context) (uint32, int, error) {
	if err := v.waitLoaded(ctx); err != nil {
		return 0, 0, err
	}
	term, err := v.kr.Rotate(ctx)
	if err != nil {
		return 0, 0, err
	}
	n, err := Rewrap(ctx, v.store, v.kr, sealedPrefixes...)
	if errors.Is(err, seal.ErrBroken) {
		// Values that do not open stay as they are: the connection records
		// among them are quarantined when read (quarantine.go), and keep
		// their old term from being retired until they are deleted.
		v.log.LogAttrs(ctx, slog.LevelWarn, "the re-wrap left stored values that do not open", slog.String("err", err.Error()))
		return term, n, nil
	}
	if err != nil {
		return term, n, err
	}
	return term, n, nil
}

// ErrKeyTermInUse: RetireKeys found stored values still sealed under a term
// it would drop.
var ErrKeyTermInUse = errors.New("vault: a key term to retire still seals stored values")

// A TermInUseError is RetireKeys's refusal: how many stored values each
// older term still seals. It wraps ErrKeyTermInUse.
type TermInUseError struct {
	Values map[uint32]int
}

func (e *TermInUseError) Error() string {
	terms := slices.Sorted(maps.Keys(e.Values))
	var b strings.Builder
	for i, t := range terms {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "term %d seals %d", t, e.Values[t])
	}
	return fmt.Sprintf("vault: retire keys: %s stored values; re-wrap them (keys rotate) or delete the quarantined records that hold them first", b.String())
}

func (e *TermInUseError) Unwrap() error { return ErrKeyTermInUse }

// RetireKeys drops from the keyring every term older than the current one,
// once no stored value (connection records, connect states, events) is
// sealed under one; else it returns a *TermInUseError and changes nothing.
// It returns the current term and the terms it dropped.
//
// The check reads each value's header: a quarantined record whose header
// still names an old term counts as a use, one whose header is broken does
// not (it opens under no term). Sharing the store, run it once every
// replica has read the keyring of the last rotation (they do as they see
// it change): a replica sealing under an older term meanwhile would write
// values that no longer open.
func (v *Vault) RetireKeys(ctx context.Context) (uint32, []uint32, error) {
	if err := v.waitLoaded(ctx); err != nil {
		return 0, nil, err
	}
	target := v.kr.Term()
	if target == 0 {
		return 0, nil, errors.New("vault: retire keys: the keyring is not open")
	}
	used := map[uint32]int{}
	for _, prefix := range sealedPrefixes {
		err := v.store.Scan(ctx, prefix, "", func(key string, value []byte, rev uint64) (bool, error) {
			if term, err := seal.TermOf(value); err == nil && term < target {
				used[term]++
			}
			return true, nil
		})
		if err != nil {
			return target, nil, fmt.Errorf("vault: retire keys: %w", err)
		}
	}
	if len(used) > 0 {
		return target, nil, &TermInUseError{Values: used}
	}
	dropped, err := v.kr.RetireBefore(ctx, target)
	if err != nil {
		return target, nil, err
	}
	if len(dropped) > 0 {
		v.log.LogAttrs(ctx, slog.LevelInfo, "retired key terms", slog.Any("terms", dropped), slog.Int("term", int(target)))
	}
	return target, dropped, nil
}

// RekeyMaster seals the keyring under a new master key (seal.Keyring.Rekey):
// the old key stops opening the store; every process sharing it must be
// restarted with the new one.
func (v *Vault) RekeyMaster(ctx context.Context, mk seal.MasterKey) error {
	if err := v.kr.Rekey(ctx, mk); err != nil {
		return err
	}
	v.log.LogAttrs(ctx, slog.LevelWarn, "the keyring is now sealed by a new master key; restart every replica with it",
		slog.String("master_key_id", mk.ID()))
	return nil
}
