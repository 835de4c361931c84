package etcd

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/tokenvault/tokenvault/vault"
)

// DefaultLockTTL is the lease TTL of a lock when Options.LockTTL is zero:
// how long a lock outlives a holder that died or was cut off.
const DefaultLockTTL = 15 * time.Second

// ErrLockLost is returned by Lock.Check when the lock is no longer held, or
// will not be held for as long as asked (its lease runs out sooner, or
// cannot be checked).
var ErrLockLost = fmt.Errorf("etcd: lock lost: %w", vault.ErrFenceLost)

// lockPrefix is where locks live, under the store's prefix.
const lockPrefix = "lock/"

// A Lock is one holder's ownership of a name across every process sharing
// the cluster: a key under lock/<name>/ bound to a lease of its own, kept
// alive while the holder lives. A holder that dies or loses the cluster
// loses the lock when the lease runs out (Options.LockTTL). Writes fenced by
// the lock include Key() at Rev() as a compare: once the key is gone
// (released, expired) or replaced by another holder's, they fail.
type Lock struct {
	s    *Store
	sess *concurrency.Session
	mu   *concurrency.Mutex
	key  string // without the store prefix
	rev  int64
}

// Lock waits until this caller holds the lock on name (the waiting is a
// watch on the holders before it, not polling) or ctx ends. Holders are
// served in the order they asked. A Lock is not reentrant: one process
// must not ask for the same name twice at once (the vault asks under the
// connection's in-process lock).
func (s *Store) Lock(ctx context.Context, name string) (*Lock, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("etcd: lock: %w", err)
	}
	ttl := int64(max(1, s.opts.LockTTL.Round(time.Second)/time.Second))
	gctx, cancel := s.reqCtx(ctx)
	lease, err := s.cli.Grant(gctx, ttl)
	cancel()
	if err != nil {
		return nil, s.wrap(ctx, "lock", err)
	}
	// The session keeps the lease alive in the background until Release.
	sess, err := concurrency.NewSession(s.cli, concurrency.WithLease(lease.ID), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		s.revoke(lease.ID)
		return nil, s.wrap(ctx, "lock", err)
	}
	m := concurrency.NewMutex(sess, s.prefix+lockPrefix+name)
	if err := m.Lock(ctx); err != nil {
		s.closeSession(sess)
		return nil, s.wrap(ctx, "lock", err)
	}
	k := m.Key()
	l := &Lock{s: s, sess: sess, mu: m, key: k[len(s.prefix):]}
	// The owner key's revision, the fence of this holding.
	gctx, cancel = s.reqCtx(ctx)
	resp, err := s.cli.Get(gctx, k)
	cancel()
	if err != nil || len(resp.Kvs) == 0 {
		l.Release()
		if err == nil {
			return nil, fmt.Errorf("%w: owner key vanished as it was taken", ErrLockLost)
		}
		return nil, s.wrap(ctx, "lock", err)
	}
	l.rev = resp.Kvs[0].ModRevision
	return l, nil
}

// Key returns the owner key of this holding, relative to the store's
// prefix, and Rev its revision: a write that compares Key at Rev succeeds
// only while this holding lasts.
func (l *Lock) Key() string { return l.key }

// Rev returns the owner key's revision (see Key).
func (l *Lock) Rev() uint64 { return uint64(l.rev) }

// Check returns nil if the lock is still held and its lease has at least d
// left, so that a call bounded by d ends before anyone else can take the
// lock. It asks the cluster (one round trip for the lease, one for the
// key); any failure is ErrLockLost.
func (l *Lock) Check(ctx context.Context, d time.Duration) error {
	select {
	case <-l.sess.Done():
		return fmt.Errorf("%w: its lease is no longer kept alive", ErrLockLost)
	default:
	}
	rctx, cancel := l.s.reqCtx(ctx)
	defer cancel()
	ttl, err := l.s.cli.TimeToLive(rctx, l.sess.Lease())
	if err != nil {
		return fmt.Errorf("%w: %v", ErrLockLost, err)
	}
	// TTL is in whole seconds, rounded down: a second is a margin.
	if left := time.Duration(ttl.TTL) * time.Second; left < d {
		return fmt.Errorf("%w: its lease has %v left, less than %v", ErrLockLost, left, d)
	}
	resp, err := l.s.cli.Get(rctx, l.s.prefix+l.key)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrLockLost, err)
	}
	if len(resp.Kvs) == 0 || resp.Kvs[0].ModRevision != l.rev {
		return fmt.Errorf("%w: its owner key is gone", ErrLockLost)
	}
	return nil
}

// Release gives the lock up: its key and lease are deleted. If the cluster
// cannot be reached the lease is no longer kept alive and runs out within
// the lock TTL. Release is bounded by the request timeout.
func (l *Lock) Release() {
	l.s.closeSession(l.sess)
}

func (s *Store) closeSession(sess *concurrency.Session) {
	// Close revokes the lease (deleting the owner key) within the session's
	// TTL at most; bound it tighter.
	sess.Orphan()
	s.revoke(sess.Lease())
}

func (s *Store) revoke(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.RequestTimeout)
	defer cancel()
	s.cli.Revoke(ctx, id) // on failure the lease runs out by itself
}

// LockTTL returns the lease TTL of the store's locks.
func (s *Store) LockTTL() time.Duration { return s.opts.LockTTL }
