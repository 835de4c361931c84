package vault

import (
	"context"
	"errors"
)

// ErrConflict is returned by Store.Apply when a compare fails: the record was
// changed (or created, or deleted) by someone else since it was read.
var ErrConflict = errors.New("vault: conflicting write")

// A Store is the durable key-value space a vault keeps its records in. Keys
// are short ASCII strings ("conn/<id>", "state/<hash>", "meta/keyring");
// values are opaque bytes, already sealed where they hold secrets: a Store
// never sees token material in clear.
//
// Every key carries a revision: 0 means absent, and each write of the key
// gives it a new, larger revision. Revisions make compare-and-swap possible
// with the same meaning on bbolt and on etcd.
//
// A Store is safe for concurrent use. Apply is durable (fsynced) when it
// returns nil.
type Store interface {
	// Get returns a copy of the value under key and its revision. It returns
	// ErrNotFound if the key is absent.
	Get(ctx context.Context, key string) (value []byte, rev uint64, err error)

	// Apply performs ops atomically: either all of them take effect or none.
	// An op with a non-negative IfRev only succeeds if the key's revision is
	// IfRev at the time of the write (0: the key must be absent); if any such
	// compare fails Apply returns ErrConflict and writes nothing. It returns
	// the new revision of each op's key, in order (0 for deletes).
	Apply(ctx context.Context, ops ...Op) ([]uint64, error)

	// Take reads and deletes key in one atomic step, so that of several
	// concurrent callers exactly one gets the value; the others get
	// ErrNotFound.
	Take(ctx context.Context, key string) ([]byte, error)

	// Scan calls fn for every key with the given prefix that sorts after
	// `after` (all of them if after is ""), in key order, until fn returns
	// false or an error. The value passed to fn is only valid during the
	// call; fn must copy it to keep it. fn must not call the Store.
	Scan(ctx context.Context, prefix, after string, fn func(key string, value []byte, rev uint64) (bool, error)) error

	// Close releases the store. It is safe to call more than once.
	Close() error
}

// Op is one write of Store.Apply.
type Op struct {
	Key string
	// Value is written under Key; ignored when Delete is set.
	Value []byte
	// Delete removes Key instead of writing it. Deleting an absent key is
	// not an error (unless IfRev asks for a revision other than 0).
	Delete bool
	// IfRev, if >= 0, is the revision Key must have for Apply to succeed
	// (0: Key must be absent). -1 (AnyRev) writes unconditionally.
	IfRev int64
	// Check makes the op a compare only: Apply succeeds only if Key has
	// revision IfRev (which must be >= 0), and writes nothing to Key; its
	// revision in Apply's result is 0. It fences a write: a Fence's Op.
	Check bool
}

// AnyRev as Op.IfRev writes whatever the key's current revision.
const AnyRev = -1
