package vault

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"

	recordv1 "github.com/tokenvault/tokenvault/proto/tokenvault/record/v1"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// loadBatch is how many records one decoding worker takes at a time, and
// loadRecordSize a typical record's plaintext size, to size a batch's buffer
// (it grows past it as needed).
const (
	loadBatch      = 256
	loadRecordSize = 768
)

type loadJob struct {
	bad   []badRecord // what did not decode
	keys  []string
	plain []byte // the records' plaintexts, back to back
	ends  []int  // where each ends in plain
	revs  []uint64
	out   []*entry
	err   error
}

// A badRecord is a record that did not open or decode at load, and why.
type badRecord struct {
	key, reason string
	term        uint32 // the term its header names; 0 if it names none
}

// loadConnections reads every connection record, in key order, and returns
// their entries, and the records that did not open or decode (quarantined
// by loadUnreadable: one damaged record does not stop the start). The scan opens each sealed value into its batch's buffer;
// workers on all CPUs decode the batches while the scan goes on (decoding
// is most of a start with many connections). A decoded record is reduced to
// its resident part at once: at most a few batches of plaintext and one
// record per worker are held besides what stays. The batches' buffers are
// recycled (they were a third of what a start allocated) and cleared at the
// end, so that no plaintext record is left behind in freed memory.
func (v *Vault) loadConnections(ctx context.Context) ([]*entry, []badRecord, error) {
	workers := runtime.GOMAXPROCS(0)
	jobs := make(chan *loadJob, 2*workers)
	// A buffer is made only when free is empty, and every buffer is queued
	// (at most 2*workers), in a worker's hands (one each), the scan's
	// current one, or here: free never needs more room than all of them.
	free := make(chan []byte, 2*workers+workers+1)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			var (
				d  loadDecoder
				pb recordv1.Connection
				c  Connection
			)
			for j := range jobs {
				j.out = make([]*entry, len(j.keys))
				start := 0
				for i, key := range j.keys {
					plain := j.plain[start:j.ends[i]]
					start = j.ends[i]
					e, reason, err := decodeEntryChecked(key, plain, &d, &c, &pb)
					if err != nil {
						j.bad = append(j.bad, badRecord{key: key, reason: reason})
						continue
					}
					e.rev = j.revs[i]
					j.out[i] = e
				}
				select {
				case free <- j.plain[:0]:
				default: // cannot happen (see free); dropped, it is only garbage
					clear(j.plain)
				}
				j.plain = nil
			}
		})
	}
	var all []*loadJob
	newJob := func() *loadJob {
		select {
		case b := <-free:
			return &loadJob{plain: b}
		default:
			return &loadJob{plain: make([]byte, 0, loadBatch*loadRecordSize)}
		}
	}
	cur := newJob()
	var bad []badRecord
	err := v.store.Scan(ctx, connPrefix, "", func(key string, value []byte, rev uint64) (bool, error) {
		plain, err := v.kr.OpenAppend(cur.plain, key, value)
		if err != nil {
			term, _ := seal.TermOf(value)
			bad = append(bad, badRecord{key, unreadableReason(err), term})
			return true, nil
		}
		cur.plain = plain
		cur.keys = append(cur.keys, key)
		cur.ends = append(cur.ends, len(plain))
		cur.revs = append(cur.revs, rev)
		if len(cur.keys) == loadBatch {
			all = append(all, cur)
			jobs <- cur
			cur = newJob()
		}
		return true, nil
	})
	if len(cur.keys) > 0 {
		all = append(all, cur)
		jobs <- cur
	}
	close(jobs)
	wg.Wait()
	clear(cur.plain[:cap(cur.plain)]) // unsent if the scan failed
	for len(free) > 0 {
		b := <-free
		clear(b[:cap(b)])
	}
	if err != nil {
		return nil, nil, fmt.Errorf("vault: load connections: %w", err)
	}
	n := 0
	for _, j := range all {
		if j.err != nil {
			return nil, nil, j.err
		}
		n += len(j.out)
		bad = append(bad, j.bad...)
	}
	out := make([]*entry, 0, n)
	for _, j := range all {
		for _, e := range j.out {
			if e != nil { // nil: did not decode
				out = append(out, e)
			}
		}
	}
	return out, bad, nil
}

// loadUnreadable quarantines the records loadConnections could not read,
// of total. Sharing the store, one sealed under a key term another replica
// added while this one started is read again after reloading the keyring,
// and its entry returned.
//
// If most records, two at least, are sealed under terms newer than the
// keyring's newest, it is the keyring that is old, not the records that
// are damaged: the start is refused (seal.ErrRolledBack) rather than
// quarantining them. This catches a keyring put back together with its
// high-water mark, which the keyring alone cannot tell.
func (v *Vault) loadUnreadable(ctx context.Context, bad []badRecord, total int) ([]*entry, error) {
	var (
		out    []*entry
		left   []badRecord
		newest uint32
	)
	for _, b := range bad {
		if b.reason == seal.BrokenUnknownTerm && v.shared {
			val, rev, err := v.store.Get(ctx, b.key)
			if errors.Is(err, ErrNotFound) {
				continue // deleted meanwhile
			}
			if err == nil {
				c, err := v.decode(b.key, val)
				if err == nil {
					e := newEntry(c)
					e.rev = rev
					e.res.Store(newResident(c))
					out = append(out, e)
				}
				if err == nil || errors.Is(err, ErrRecordUnreadable) {
					continue // served, or decode quarantined it
				}
				// The keyring could not be read again: quarantined as it
				// stands, until the record is next read.
			}
		}
		left = append(left, b)
	}
	newer, cur := 0, v.kr.Term()
	for _, b := range left {
		if b.reason == seal.BrokenUnknownTerm && b.term > cur {
			newer++
			newest = max(newest, b.term)
		}
	}
	if newer >= 2 && 2*newer > total {
		return nil, fmt.Errorf("vault: %w: %d of %d connection records are sealed under key terms newer than the keyring's newest (%d), up to term %d; "+
			"restore the newest keyring (or the whole store) from a backup", seal.ErrRolledBack, newer, total, cur, newest)
	}
	for _, b := range left {
		v.quarantineRecord(b.key, b.reason)
	}
	return out, nil
}

// decodeEntryChecked is decodeEntry, and the check that the record is the
// one its key names; on failure it says why, as a quarantine reason.
func decodeEntryChecked(key string, plain []byte, d *loadDecoder, c *Connection, pb *recordv1.Connection) (*entry, string, error) {
	e, err := decodeEntry(plain, d, c, pb)
	if err != nil {
		return nil, UnreadableUndecodable, err
	}
	if len(key) != len(connPrefix)+len(e.id) || key[len(connPrefix):] != e.id {
		return nil, UnreadableWrongID, errors.New("the record names another connection")
	}
	return e, "", nil
}

// decodeEntry returns the entry of a record's plaintext, its resident
// stored: by d (loaddecode.go) or, for a record d leaves to it, the general
// decoder into c and pb (scratch).
func decodeEntry(plain []byte, d *loadDecoder, c *Connection, pb *recordv1.Connection) (*entry, error) {
	if e, err := d.decode(plain); err == nil {
		return e, nil
	}
	if err := unmarshalRecord(plain, c, pb); err != nil {
		return nil, err
	}
	e := newEntry(c)
	e.res.Store(newResident(c))
	if used := nanos(c.LastUsedAt); used > 0 {
		e.lastUsed.Store(used)
	}
	return e, nil
}
