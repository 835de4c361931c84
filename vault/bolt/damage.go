package bolt

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"

	"go.etcd.io/bbolt"
)

// ErrDamaged is wrapped by the errors of a Store whose file is damaged:
// bbolt panics on some damaged pages (a page that is not what its parent
// says, a length past the end of the map) rather than fail, and the Store
// turns those panics into errors naming the file. A damaged file does not
// heal: stop, check it (bbolt check FILE) and restore the last backup.
var ErrDamaged = errors.New("bolt: database file is damaged")

// ErrEmptyFile is returned by Open when the file exists but holds nothing.
// A new data dir has no file at all; a file emptied or cut to nothing
// (a failed copy, a full disk, a truncate) is not initialised again with a
// new, empty store: that would drop every connection without a word.
var ErrEmptyFile = errors.New("bolt: database file exists but is empty")

// damaged is the error of a bbolt panic p during op on the file at path.
func damaged(path, op string, p any) error {
	return fmt.Errorf("%w: %s: %s: %v (check it with 'bbolt check %s'; restore a backup)", ErrDamaged, path, op, p, path)
}

// checkNotEmpty refuses an existing, empty file at path; a missing one is
// a new store.
func checkNotEmpty(path string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bolt: %w", err)
	}
	if fi.Mode().IsRegular() && fi.Size() == 0 {
		return fmt.Errorf("%w: %s: refusing to initialise it as a new store, which would lose every connection; "+
			"restore it from a backup, or remove it to start with an empty store", ErrEmptyFile, path)
	}
	return nil
}

// openGuarded is bbolt.Open with its panics turned into errors. A panic
// leaves the file's lock held by this process until it exits: bbolt gives
// no handle to release it.
func openGuarded(path string, bo *bbolt.Options) (db *bbolt.DB, err error) {
	// A page number past the end of the file makes bbolt read its mapping
	// past the file's end: SIGBUS, a fatal error unless faults panic.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			db, err = nil, damaged(path, "open", p)
		}
	}()
	return bbolt.Open(path, 0o600, bo)
}

// guard runs a bbolt transaction (s.db.View or s.db.Update with fn),
// turning a panic of bbolt's into an error naming the file. bbolt rolls the
// transaction back on a panic, so the Store stays usable for what is not
// damaged. A panic of fn's own callers' code (Scan's callback) is not
// bbolt's: see Scan.
func (s *Store) guard(op string, txn func(func(*bbolt.Tx) error) error, fn func(*bbolt.Tx) error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = damaged(s.path, op, p)
		}
	}()
	return txn(fn)
}
