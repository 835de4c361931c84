package vault

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	recordv1 "github.com/tokenvault/tokenvault/proto/tokenvault/record/v1"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// Quarantine. A connection record that does not open (its tag does not
// verify, its framing is broken, it was moved from another record, it names
// a key term the keyring does not hold) or does not decode stops nothing
// else: its key is quarantined, counted, logged once, listed by
// Unreadable, and its connection answers ErrRecordUnreadable until the
// record is written again (restored, reconnected) or deleted. Every other
// connection is served.

// Why a record is unreadable besides the seal's reasons (seal.BrokenAuth,
// seal.BrokenFraming, seal.BrokenUnknownTerm).
const (
	// UnreadableUndecodable: the value opens but is not a record.
	UnreadableUndecodable = "undecodable"
	// UnreadableWrongID: the value opens and decodes, but the record
	// inside names another connection than its key.
	UnreadableWrongID = "wrong_record_id"
)

// An UnreadableRecord is one quarantined record: its store key and why it
// does not open, never its contents.
type UnreadableRecord struct {
	Key          string
	ConnectionID string
	Reason       string
	Since        time.Time
}

// An UnreadableError is the error of a connection whose record is
// quarantined. It wraps ErrRecordUnreadable.
type UnreadableError struct {
	ConnectionID string
	Reason       string
}

func (e *UnreadableError) Error() string {
	return fmt.Sprintf("vault: the record of connection %q does not open (%s)", e.ConnectionID, e.Reason)
}

func (e *UnreadableError) Unwrap() error { return ErrRecordUnreadable }

// quarantine holds the unreadable records by store key.
type quarantine struct {
	n    atomic.Int64 // len(recs), read without the lock
	mu   sync.Mutex
	recs map[string]UnreadableRecord
}

// unreadableReason classifies an error of opening or decoding a record.
func unreadableReason(err error) string {
	return cmp.Or(seal.BrokenReason(err), UnreadableUndecodable)
}

// quarantineRecord quarantines key for reason, logging it the first time,
// and returns the error its connection answers.
func (v *Vault) quarantineRecord(key, reason string) error {
	id := strings.TrimPrefix(key, connPrefix)
	q := &v.unreadable
	q.mu.Lock()
	_, known := q.recs[key]
	if !known {
		if q.recs == nil {
			q.recs = map[string]UnreadableRecord{}
		}
		q.recs[key] = UnreadableRecord{Key: key, ConnectionID: id, Reason: reason, Since: v.now()}
		q.n.Store(int64(len(q.recs)))
	}
	q.mu.Unlock()
	if !known {
		v.log.LogAttrs(context.Background(), slog.LevelError,
			"a connection record does not open: quarantined; restore it from a backup or delete the connection",
			slog.String("key", key), slog.String("reason", reason))
	}
	return &UnreadableError{ConnectionID: id, Reason: reason}
}

// releaseRecord takes key out of quarantine: it opened, or was deleted.
func (v *Vault) releaseRecord(key string) {
	q := &v.unreadable
	if q.n.Load() == 0 {
		return
	}
	q.mu.Lock()
	if _, ok := q.recs[key]; ok {
		delete(q.recs, key)
		q.n.Store(int64(len(q.recs)))
		v.log.LogAttrs(context.Background(), slog.LevelInfo, "a quarantined connection record is readable again or gone", slog.String("key", key))
	}
	q.mu.Unlock()
}

// quarantined returns the error of connection id if its record is
// quarantined, else nil.
func (v *Vault) quarantined(id string) error {
	q := &v.unreadable
	if q.n.Load() == 0 {
		return nil
	}
	q.mu.Lock()
	r, ok := q.recs[connPrefix+id]
	q.mu.Unlock()
	if !ok {
		return nil
	}
	return &UnreadableError{ConnectionID: id, Reason: r.Reason}
}

// IsUnreadable reports whether connection id's record is quarantined.
func (v *Vault) IsUnreadable(id string) bool {
	if !v.loadState.ready.Load() && v.entry(id) == nil {
		// Loading (loading.go): the record says, or the load will.
		if e, err := v.peekWait(id); e != nil || err != nil {
			return err != nil
		}
	}
	return v.quarantined(id) != nil
}

// missing is the error for a connection id the vault does not serve:
// ErrRecordUnreadable if its record is quarantined, else ErrNotFound.
func (v *Vault) missing(id string) error {
	if err := v.quarantined(id); err != nil {
		return err
	}
	return fmt.Errorf("vault: connection %q: %w", id, ErrNotFound)
}

// Unreadable lists the quarantined records in key order.
func (v *Vault) Unreadable() []UnreadableRecord {
	v.waitLoadedForever()
	q := &v.unreadable
	q.mu.Lock()
	out := make([]UnreadableRecord, 0, len(q.recs))
	for _, r := range q.recs {
		out = append(out, r)
	}
	q.mu.Unlock()
	slices.SortFunc(out, func(a, b UnreadableRecord) int { return cmp.Compare(a.Key, b.Key) })
	return out
}

// UnreadableCount is how many records are quarantined.
func (v *Vault) UnreadableCount() int { return int(v.unreadable.n.Load()) }

// forgetIfFree forgets e, whose record was just quarantined, unless its
// lock is held: its holder reads the record and forgets it then.
func (v *Vault) forgetIfFree(e *entry) {
	if e.mu.TryLock() {
		v.forget(e)
		e.mu.Unlock()
	}
}

// decodeChecked decodes the plaintext of the record under key into c and
// checks that it names the connection its key does. It returns the
// quarantine reason of a failure.
func decodeChecked(key string, plain []byte, c *Connection, pb *recordv1.Connection) (string, error) {
	if err := unmarshalRecord(plain, c, pb); err != nil {
		return UnreadableUndecodable, err
	}
	if len(key) != len(connPrefix)+len(c.ID) || key[len(connPrefix):] != c.ID {
		return UnreadableWrongID, errors.New("the record names another connection")
	}
	return "", nil
}

// deleteUnreadable deletes the quarantined record of connection id from
// the store: what an operator does with a record that cannot be restored.
// Nothing of it can be read, so no event or provider revocation comes with
// it; a stale identity index entry left behind is replaced by the next
// connect of that identity.
func (v *Vault) deleteUnreadable(ctx context.Context, id string) error {
	key := connPrefix + id
	_, rev, err := v.store.Get(ctx, key)
	if errors.Is(err, ErrNotFound) {
		v.releaseRecord(key)
		return fmt.Errorf("vault: connection %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("vault: read %s: %w", key, err)
	}
	if _, err := v.store.Apply(ctx, Op{Key: key, Delete: true, IfRev: int64(rev)}); err != nil {
		return fmt.Errorf("vault: delete %s: %w", key, err)
	}
	v.releaseRecord(key)
	v.log.LogAttrs(ctx, slog.LevelWarn, "deleted a quarantined connection record", slog.String("key", key))
	return nil
}
