package etcd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokenvault/tokenvault/vault"
)

// memberPrefix is where live replicas register, under the store's prefix:
// one key per replica, bound to a lease of its own.
const memberPrefix = "members/"

// ErrNotMember is returned by Members.Healthy when this replica holds no
// live membership lease: the cluster has not answered for too long.
var ErrNotMember = errors.New("etcd: this replica's membership lease is lost")

// Members is this replica's membership among the replicas sharing the
// cluster, and its view of the others: each replica registers a key under
// members/ bound to a lease kept alive while it lives and reaches the
// cluster, and watches the others'. Work divided between replicas (the
// scheduler's) goes to the replica that Owns it: rendezvous hashing of the
// work's name over the live members, so every replica with the same view
// picks the same owner, and a member that leaves or joins moves only its
// own share. A replica that dies or is cut off leaves when its lease runs
// out (Options.LockTTL); the others see its key go and take its share.
//
// It is a vault.Share. Views may briefly differ while a member joins or
// leaves: two replicas may then both think they own a name, or neither;
// the connection's fence (Lock) keeps the first harmless, the second only
// delays.
type Members struct {
	s  *Store
	id string

	live    atomic.Pointer[[]string] // sorted ids of the live members, as watched
	self    atomic.Bool              // this replica's lease is alive
	contact atomic.Int64             // Unix nanoseconds of the last keepalive answer
	// watchFrom is the revision the live members were read at.
	watchFrom atomic.Int64

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change

	cancel context.CancelFunc
	done   chan struct{}
}

var _ vault.Share = (*Members)(nil)

// Join registers this replica as a member (waiting up to the dial timeout
// for the first registration) and keeps it registered, re-registering
// after a lost lease once the cluster answers again, until Leave.
func (s *Store) Join(ctx context.Context) (*Members, error) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	m := &Members{s: s, id: hex.EncodeToString(b[:]), changed: make(chan struct{}), done: make(chan struct{})}
	empty := []string{}
	m.live.Store(&empty)
	rctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	m.cancel = stop
	jctx, cancel := context.WithTimeout(ctx, s.opts.DialTimeout)
	defer cancel()
	lease, ka, err := m.register(jctx, rctx)
	if err != nil {
		stop()
		return nil, err
	}
	if err := m.list(jctx); err != nil {
		stop()
		s.revoke(lease)
		return nil, err
	}
	var wg sync.WaitGroup
	wg.Go(func() { m.keep(rctx, lease, ka) })
	wg.Go(func() { m.watch(rctx) })
	go func() { wg.Wait(); close(m.done) }()
	return m, nil
}

// ID returns this replica's member id.
func (m *Members) ID() string { return m.id }

// Live returns the ids of the live members as this replica sees them.
func (m *Members) Live() []string { return slices.Clone(*m.live.Load()) }

// Leave deletes this replica's membership (the others take its share at
// once) and stops following the others.
func (m *Members) Leave() {
	m.cancel()
	<-m.done
}

// register grants a lease, puts this replica's key under it and starts
// keeping it alive until kactx ends.
func (m *Members) register(ctx, kactx context.Context) (clientv3.LeaseID, <-chan *clientv3.LeaseKeepAliveResponse, error) {
	s := m.s
	ttl := int64(max(1, s.opts.LockTTL.Round(time.Second)/time.Second))
	lease, err := s.cli.Grant(ctx, ttl)
	if err != nil {
		return 0, nil, s.wrap(ctx, "join", err)
	}
	if _, err := s.cli.Put(ctx, s.prefix+memberPrefix+m.id, "", clientv3.WithLease(lease.ID)); err != nil {
		s.revoke(lease.ID)
		return 0, nil, s.wrap(ctx, "join", err)
	}
	// Kept alive (every third of the TTL) until kactx ends; the channel
	// closes when the lease is lost.
	ka, err := s.cli.KeepAlive(kactx, lease.ID)
	if err != nil {
		s.revoke(lease.ID)
		return 0, nil, s.wrap(ctx, "join", err)
	}
	m.contact.Store(time.Now().UnixNano())
	m.self.Store(true)
	m.notify()
	return lease.ID, ka, nil
}

// keep follows the lease's keepalive answers; when the lease is lost it
// registers again, with backoff, until ctx ends. On the way out it revokes
// the lease, so the others take this replica's share without waiting for
// it to run out.
func (m *Members) keep(ctx context.Context, lease clientv3.LeaseID, ka <-chan *clientv3.LeaseKeepAliveResponse) {
	backoff := 100 * time.Millisecond
	for {
		for ka != nil {
			select {
			case <-ctx.Done():
				m.self.Store(false)
				m.s.revoke(lease)
				return
			case r, ok := <-ka:
				if !ok {
					ka = nil
					continue
				}
				if r != nil {
					m.contact.Store(time.Now().UnixNano())
				}
			}
		}
		// The lease is lost (the cluster did not answer within its TTL):
		// this replica owns nothing until it is a member again.
		m.self.Store(false)
		m.notify()
		m.s.revoke(lease) // stops the client's keepalive of it, if any
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			rctx, cancel := m.s.reqCtx(ctx)
			l, k, err := m.register(rctx, ctx)
			cancel()
			if err == nil {
				lease, ka, backoff = l, k, 100*time.Millisecond
				break
			}
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

// list reads the live members.
func (m *Members) list(ctx context.Context) error {
	rctx, cancel := m.s.reqCtx(ctx)
	defer cancel()
	resp, err := m.s.cli.Get(rctx, m.s.prefix+memberPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return m.s.wrap(ctx, "members", err)
	}
	ids := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		ids = append(ids, string(kv.Key[len(m.s.prefix)+len(memberPrefix):]))
	}
	m.set(ids)
	m.watchFrom.Store(resp.Header.Revision)
	return nil
}

// watch follows the members' keys until ctx ends, listing them again
// after a lost watch.
func (m *Members) watch(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		from := m.watchFrom.Load()
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := m.s.cli.Watch(wctx, m.s.prefix+memberPrefix, clientv3.WithPrefix(), clientv3.WithRev(from+1), clientv3.WithKeysOnly())
		for resp := range wch {
			if resp.Err() != nil || resp.CompactRevision != 0 {
				break
			}
			backoff = 100 * time.Millisecond
			ids := m.Live()
			for _, ev := range resp.Events {
				id := string(ev.Kv.Key[len(m.s.prefix)+len(memberPrefix):])
				i, found := slices.BinarySearch(ids, id)
				switch {
				case ev.Type == mvccpb.DELETE && found:
					ids = slices.Delete(ids, i, i+1)
				case ev.Type == mvccpb.PUT && !found:
					ids = slices.Insert(ids, i, id)
				}
			}
			m.set(ids)
			m.watchFrom.Store(resp.Header.Revision)
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
		_ = m.list(ctx) // on failure the watch below resumes from the last revision
	}
}

// set makes ids (sorted or not) the live members, and tells waiters if
// that changed anything.
func (m *Members) set(ids []string) {
	slices.Sort(ids)
	ids = slices.Compact(ids)
	if slices.Equal(ids, *m.live.Load()) {
		return
	}
	m.live.Store(&ids)
	m.notify()
}

func (m *Members) notify() {
	m.mu.Lock()
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
}

// Changed returns a channel closed at the next change of the live members
// or of this replica's own membership.
func (m *Members) Changed() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changed
}

// Owns reports whether this replica owns the work named name: it is a
// live member, and of the live members it sees, the one rendezvous
// hashing picks for name. A replica that lost its lease owns nothing.
func (m *Members) Owns(name string) bool {
	if !m.self.Load() {
		return false
	}
	return Owner(*m.live.Load(), name) == m.id
}

// Owner returns the member of members that rendezvous hashing picks for
// name: the one with the highest hash of (member, name). "" if there are
// none.
func Owner(members []string, name string) string {
	var best string
	var top uint64
	for _, id := range members {
		if h := rendezvous(id, name); best == "" || h > top || (h == top && id < best) {
			best, top = id, h
		}
	}
	return best
}

// rendezvous hashes (member, name): FNV-1a, finished with a
// multiply-xorshift so the high bits mix.
func rendezvous(member, name string) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(member); i++ {
		h = (h ^ uint64(member[i])) * prime
	}
	h = (h ^ 0) * prime
	for i := 0; i < len(name); i++ {
		h = (h ^ uint64(name[i])) * prime
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// Healthy returns nil while this replica holds its membership lease and
// the cluster answered its keepalive within within; otherwise an error
// saying for how long it has not. A replica that is not healthy cannot take
// a connection's fence, so it cannot keep its resident tokens fresh.
func (m *Members) Healthy(within time.Duration) error {
	since := time.Since(time.Unix(0, m.contact.Load())).Round(time.Second)
	if !m.self.Load() {
		return fmt.Errorf("%w: no answer from %s for %v", ErrNotMember, strings.Join(m.s.opts.Endpoints, ", "), since)
	}
	if since > within {
		return fmt.Errorf("etcd: no answer from %s for %v (lease ends after %v)", strings.Join(m.s.opts.Endpoints, ", "), since, m.s.opts.LockTTL)
	}
	return nil
}
