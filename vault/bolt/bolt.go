// Package bolt implements vault.Store on a single bbolt file, for a
// tokenvault that runs as one replica.
//
// All keys live in one bucket. Each value is stored as an 8-byte big-endian
// revision followed by the data. Revisions come from the bucket's sequence,
// one counter for the whole store, so a key that is deleted and created again
// never gets an old revision back. No bbolt type or error crosses the
// package boundary.
package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/tokenvault/tokenvault/vault"
)

// ErrLocked is returned by Open when another process (or another Open in
// this process) holds the database file.
var ErrLocked = errors.New("bolt: database is locked by another process")

// DefaultLockTimeout is how long Open waits for the file lock when
// Options.LockTimeout is zero.
const DefaultLockTimeout = time.Second

// revLen is the size of the revision prefix of every stored value.
const revLen = 8

// bucketName is the one bucket holding every key.
var bucketName = []byte("kv")

// Options configures Open. The zero value is the production setting.
type Options struct {
	// LockTimeout bounds how long Open waits for another holder of the file
	// to let go; then Open fails with ErrLocked. Zero or negative means
	// DefaultLockTimeout. (bbolt itself would wait forever.)
	LockTimeout time.Duration
	// NoSync skips the fsync on commit: a crash can lose acknowledged
	// writes. For tests and benchmarks only.
	NoSync bool
}

// Store is a vault.Store on a bbolt file. It is safe for concurrent use:
// reads run in parallel, writes are serialized by bbolt.
type Store struct {
	db   *bbolt.DB
	path string

	// The mapping's pages are released after so many operations
	// (release.go).
	ops       atomic.Int64
	releasing atomic.Bool
	// wrote is set by the first write: Close then writes the freelist.
	wrote atomic.Bool

	closeOnce sync.Once
	closeErr  error
}

var _ vault.Store = (*Store)(nil)

// Open opens the bbolt file at path, creating it (mode 0600) and its parent
// directory (mode 0700) if needed. Only one Store may have a file open at a
// time: a second Open of the same file, from another process or this one,
// fails after opts.LockTimeout with an error wrapping ErrLocked instead of
// hanging. An existing file that is empty is refused (ErrEmptyFile), not
// initialised; a damaged one is refused with an error wrapping ErrDamaged
// or bbolt's own, naming the file.
func Open(path string, opts Options) (*Store, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = DefaultLockTimeout
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("bolt: %w", err)
	}
	if err := checkNotEmpty(path); err != nil {
		return nil, err
	}
	bo := *bbolt.DefaultOptions
	bo.Timeout = opts.LockTimeout
	bo.NoSync = opts.NoSync
	// The freelist as etcd keeps it: a map (allocating and freeing pages
	// merges no sorted arrays), not written on every commit. Written on
	// every commit it was 85% of what a refresh allocated and a third of
	// its CPU with 100,000 connections: each commit sorted and wrote all
	// ~14,000 free page ids. Close writes it once (see Close), so a clean
	// restart reads it; after a crash Open rebuilds it by walking the
	// file's pages.
	bo.FreelistType = bbolt.FreelistMapType
	bo.NoFreelistSync = true
	db, err := openGuarded(path, &bo)
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s (waited %v)", ErrLocked, path, opts.LockTimeout)
	}
	if errors.Is(err, ErrDamaged) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("bolt: open %s: %w (if the file is damaged: check it with 'bbolt check %s'; restore a backup)", path, err, path)
	}
	s := &Store{db: db, path: path}
	created, err := s.ensureBucket()
	if err != nil {
		db.Close()
		if errors.Is(err, ErrDamaged) {
			return nil, err // names the file already
		}
		return nil, fmt.Errorf("bolt: open %s: %w", path, err)
	}
	s.wrote.Store(created)
	// A freelist rebuilt after a crash touched every page: let them go.
	_ = s.guard("open", db.View, func(tx *bbolt.Tx) error {
		s.release(tx)
		return nil
	})
	return s, nil
}

// ensureBucket creates the bucket, writing only if it is missing, and
// reports whether it wrote.
func (s *Store) ensureBucket() (bool, error) {
	var exists bool
	if err := s.guard("open", s.db.View, func(tx *bbolt.Tx) error {
		exists = tx.Bucket(bucketName) != nil
		return nil
	}); err != nil || exists {
		return false, err
	}
	return true, s.guard("open", s.db.Update, func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketName)
		return err
	})
}

// Durable reports whether a commit is fsynced before Apply and Take
// return: true unless the Store was opened with NoSync.
func (s *Store) Durable() bool { return !s.db.NoSync }

// splitRecord splits a stored value into its revision and data. The data
// aliases v.
func splitRecord(key, v []byte) (uint64, []byte, error) {
	if len(v) < revLen {
		return 0, nil, fmt.Errorf("record %q is corrupt", key)
	}
	return binary.BigEndian.Uint64(v), v[revLen:], nil
}

// Get returns a copy of the value under key and its revision, or
// vault.ErrNotFound.
func (s *Store) Get(ctx context.Context, key string) ([]byte, uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, fmt.Errorf("bolt: get: %w", err)
	}
	var (
		val []byte
		rev uint64
	)
	err := s.guard("get", s.db.View, func(tx *bbolt.Tx) error {
		k := []byte(key)
		v := tx.Bucket(bucketName).Get(k)
		if v == nil {
			return vault.ErrNotFound
		}
		r, data, err := splitRecord(k, v)
		if err != nil {
			return err
		}
		// v points into the mmap, valid only until the transaction ends.
		val, rev = bytes.Clone(data), r
		return nil
	})
	s.touched(1)
	if err == vault.ErrNotFound {
		return nil, 0, err
	}
	if err != nil {
		return nil, 0, fmt.Errorf("bolt: get: %w", err)
	}
	return val, rev, nil
}

// Apply performs ops in one bbolt transaction, fsynced on commit unless the
// Store was opened with NoSync. Compares are checked against the state
// before any op of the call is applied; if one fails Apply returns
// vault.ErrConflict and writes nothing. All keys written by one call get the
// same new revision. A key may appear only once in ops. Apply does not
// retain the ops' values.
func (s *Store) Apply(ctx context.Context, ops ...vault.Op) ([]uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("bolt: apply: %w", err)
	}
	if err := checkOps(ops); err != nil {
		return nil, fmt.Errorf("bolt: apply: %w", err)
	}
	revs := make([]uint64, len(ops))
	if len(ops) == 0 {
		return revs, nil
	}
	err := s.guard("apply", s.db.Update, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketName)
		for _, op := range ops {
			if op.IfRev < 0 {
				continue
			}
			k := []byte(op.Key)
			var cur uint64
			if v := b.Get(k); v != nil {
				r, _, err := splitRecord(k, v)
				if err != nil {
					return err
				}
				cur = r
			}
			if cur != uint64(op.IfRev) {
				return vault.ErrConflict
			}
		}
		var rev uint64
		for i, op := range ops {
			if op.Check {
				continue // compared above, nothing to write
			}
			if op.Delete {
				if err := b.Delete([]byte(op.Key)); err != nil {
					return err
				}
				continue
			}
			if rev == 0 {
				var err error
				if rev, err = b.NextSequence(); err != nil {
					return err
				}
			}
			// bbolt keeps the key and value slices until commit: give it
			// fresh ones.
			v := make([]byte, revLen+len(op.Value))
			binary.BigEndian.PutUint64(v, rev)
			copy(v[revLen:], op.Value)
			if err := b.Put([]byte(op.Key), v); err != nil {
				return err
			}
			revs[i] = rev
		}
		return nil
	})
	s.touched(len(ops))
	s.wrote.Store(true)
	if err == vault.ErrConflict {
		return nil, err
	}
	if err != nil {
		// Including a failed commit (a full disk): bbolt has rolled back.
		return nil, fmt.Errorf("bolt: apply: %w", err)
	}
	return revs, nil
}

// checkOps rejects empty and repeated keys before a transaction starts.
// (etcd refuses a transaction that writes a key twice; so does this Store.)
func checkOps(ops []vault.Op) error {
	for _, op := range ops {
		if op.Key == "" {
			return errors.New("empty key")
		}
		if op.Check && op.IfRev < 0 {
			return fmt.Errorf("check of %q without a revision", op.Key)
		}
	}
	if len(ops) <= 16 {
		for i, op := range ops {
			for _, prev := range ops[:i] {
				if prev.Key == op.Key {
					return fmt.Errorf("key %q given twice", op.Key)
				}
			}
		}
		return nil
	}
	seen := make(map[string]struct{}, len(ops))
	for _, op := range ops {
		if _, dup := seen[op.Key]; dup {
			return fmt.Errorf("key %q given twice", op.Key)
		}
		seen[op.Key] = struct{}{}
	}
	return nil
}

// Take reads and deletes key in one write transaction and returns the value,
// or vault.ErrNotFound if the key is absent (or another Take got it first).
func (s *Store) Take(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("bolt: take: %w", err)
	}
	var val []byte
	err := s.guard("take", s.db.Update, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketName)
		k := []byte(key)
		v := b.Get(k)
		if v == nil {
			return vault.ErrNotFound
		}
		_, data, err := splitRecord(k, v)
		if err != nil {
			return err
		}
		val = bytes.Clone(data) // before Delete changes the page under v
		return b.Delete(k)
	})
	s.touched(1)
	s.wrote.Store(true)
	if err == vault.ErrNotFound {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("bolt: take: %w", err)
	}
	return val, nil
}

// Scan calls fn for each key with the given prefix that sorts after `after`,
// in key order, inside one read transaction, until fn returns false or an
// error; fn's error is returned as is. The value passed to fn is a copy in a
// buffer Scan reuses for the next key. fn must not call the Store: a write
// from inside fn deadlocks. Cancelling ctx stops the scan.
func (s *Store) Scan(ctx context.Context, prefix, after string, fn func(key string, value []byte, rev uint64) (bool, error)) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("bolt: scan: %w", err)
	}
	var (
		fnErr   error
		fnPanic any // fn's own panic, not bbolt's: raised again below
	)
	err := s.guard("scan", s.db.View, func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketName).Cursor()
		p := []byte(prefix)
		var k, v []byte
		if after != "" && after >= prefix {
			k, v = c.Seek([]byte(after))
			if k != nil && string(k) == after {
				k, v = c.Next()
			}
		} else {
			k, v = c.Seek(p)
		}
		var buf []byte
		read := 0 // bytes read since the mapping was last released
		for n := 0; k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			if n++; n%64 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			if read += len(k) + len(v); read >= releaseBytes {
				s.release(tx)
				read = 0
			}
			rev, data, err := splitRecord(k, v)
			if err != nil {
				return err
			}
			// k and v point into the mmap: hand fn copies, which it may
			// even write to.
			buf = append(buf[:0], data...)
			more, err, p := callScanFn(fn, string(k), buf, rev)
			if p != nil {
				fnPanic = p
				return nil
			}
			if err != nil {
				fnErr = err
				return err
			}
			if !more {
				break
			}
		}
		if read > 0 {
			// The tail since the last release: with fault-around, up to
			// 16 times what was read, and nobody may read it again soon.
			s.release(tx)
		}
		return nil
	})
	s.touched(1)
	if fnPanic != nil {
		panic(fnPanic)
	}
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		return fmt.Errorf("bolt: scan: %w", err)
	}
	return nil
}

// callScanFn calls Scan's callback, returning its panic rather than
// letting the transaction's guard take it for bbolt's.
func callScanFn(fn func(string, []byte, uint64) (bool, error), k string, v []byte, rev uint64) (more bool, err error, p any) {
	defer func() { p = recover() }()
	more, err = fn(k, v, rev)
	return more, err, nil
}

// Close closes the file and releases its lock. It is safe to call more than
// once; later calls return the first call's result. Calls on a closed Store
// return an error.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		// If this Store wrote, one commit that writes the freelist, so
		// that the next Open reads it instead of walking the whole file.
		// If it fails, that Open walks: nothing is lost. (Set inside the
		// write transaction, the flag is read by this commit alone.) A
		// Store that only read leaves the file as it found it.
		var syncErr error
		if s.wrote.Load() {
			syncErr = s.guard("close", s.db.Update, func(*bbolt.Tx) error {
				s.db.NoFreelistSync = false
				return nil
			})
		}
		if err := errors.Join(syncErr, s.db.Close()); err != nil {
			s.closeErr = fmt.Errorf("bolt: close: %w", err)
		}
	})
	return s.closeErr
}
