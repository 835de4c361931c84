package etcd

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokenvault/tokenvault/vault"
)

// ErrCompacted is returned by Watch when the history it was asked to
// resume from has been compacted away: the caller must read the current
// state again (Scan) and watch from its revision.
var ErrCompacted = fmt.Errorf("etcd: %w", vault.ErrCompacted)

// A Change is one write of a key, as Watch reports it: its Key is relative
// to the store's prefix, its Value the caller's.
type Change = vault.Change

// Revision returns the cluster's current revision: every write so far has
// a revision at most this, and Watch(after = it) reports every later one.
func (s *Store) Revision(ctx context.Context) (uint64, error) {
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(rctx, s.prefix+"\x00rev", clientv3.WithCountOnly())
	if err != nil {
		return 0, s.wrap(ctx, "revision", err)
	}
	return uint64(resp.Header.Revision), nil
}

// Watch calls fn with every change of the keys under prefix made after
// revision after, in revision order (the changes of one transaction
// together, in one call), until ctx ends (then it returns ctx's error), fn
// returns an error (returned as is), or the watch is lost. Resuming after a
// reconnect is done inside, from the last revision seen. It returns an
// error wrapping ErrCompacted if that history is gone. A member that loses
// the cluster's leader ends the watch with an error rather than going
// silent: the caller watches again, from the last revision it saw.
func (s *Store) Watch(ctx context.Context, prefix string, after uint64, fn func([]Change) error) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := s.cli.Watch(wctx, s.prefix+prefix, clientv3.WithPrefix(), clientv3.WithRev(int64(after)+1))
	for resp := range wch {
		if resp.CompactRevision != 0 {
			return fmt.Errorf("%w: resume from %d, compacted up to %d", ErrCompacted, after, resp.CompactRevision)
		}
		if err := resp.Err(); err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) {
				return fmt.Errorf("%w: %v", ErrCompacted, err)
			}
			return fmt.Errorf("etcd: watch: %w", err)
		}
		if len(resp.Events) == 0 {
			continue
		}
		changes := make([]Change, 0, len(resp.Events))
		flush := func() error {
			if len(changes) == 0 {
				return nil
			}
			err := fn(changes)
			changes = changes[:0:0]
			return err
		}
		for _, ev := range resp.Events {
			// One call per transaction (revision).
			if len(changes) > 0 && changes[0].Rev != uint64(ev.Kv.ModRevision) {
				if err := flush(); err != nil {
					return err
				}
			}
			c := Change{Key: string(ev.Kv.Key[len(s.prefix):]), Rev: uint64(ev.Kv.ModRevision)}
			if ev.Type == mvccpb.DELETE {
				c.Deleted = true
			} else {
				c.Value = ev.Kv.Value
			}
			changes = append(changes, c)
			after = c.Rev
		}
		if err := flush(); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("etcd: watch: %w", err)
	}
	return errors.New("etcd: watch: lost")
}
