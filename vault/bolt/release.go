package bolt

import (
	"go.etcd.io/bbolt"
)

// bbolt reads through a shared, read-only mapping of the whole file. The
// pages a scan or a transaction touched stay in the process's resident set
// afterwards (with the kernel's fault-around, up to 16 neighbours each),
// though the vault, which keeps what it serves in memory, may not read them
// again for an hour: the startup scan of 100,000 connections alone left the
// whole 280 MB file resident. So the Store hands the mapping's pages back to
// the kernel (madvise MADV_DONTNEED, see release_linux.go) after every
// releaseBytes that a scan has read, at the end of every scan, and after
// every releaseOps reads and writes. The pages stay in the page cache: the next read of one costs a
// minor fault, not a disk read.
const (
	releaseBytes = 1 << 20
	releaseOps   = 32
)

// touched counts a read or write of n keys, and releases the mapping once
// enough have been made since the last release. It is called outside any
// transaction.
func (s *Store) touched(n int) {
	if s.ops.Add(int64(n)) < releaseOps {
		return
	}
	if !s.releasing.CompareAndSwap(false, true) {
		return // another caller is releasing
	}
	defer s.releasing.Store(false)
	s.ops.Store(0)
	_ = s.guard("release", s.db.View, func(tx *bbolt.Tx) error {
		s.release(tx)
		return nil
	})
}

// release hands the pages of the file mapping back to the kernel. The
// caller is inside a transaction, which holds bbolt's mapping in place
// (a remap waits for every transaction to end) and whose size the mapping
// covers.
func (s *Store) release(tx *bbolt.Tx) {
	releaseMapping(s.db.Info().Data, uintptr(tx.Size()))
}
