package etcd

import (
	"context"

	"github.com/tokenvault/tokenvault/vault"
)

// The Store is a vault.Fencer (its locks fence each connection's refresh
// across replicas) and a vault.Watcher (each replica's resident view
// follows the others' writes).
var (
	_ vault.Fencer  = (*Store)(nil)
	_ vault.Watcher = (*Store)(nil)
)

// Fence takes the lock on name (Lock) as a vault.Fence.
func (s *Store) Fence(ctx context.Context, name string) (vault.Fence, error) {
	l, err := s.Lock(ctx, name)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Op returns the compare that fences a write by this holding: the owner
// key at its revision.
func (l *Lock) Op() vault.Op {
	return vault.Op{Key: l.key, Check: true, IfRev: l.rev}
}
