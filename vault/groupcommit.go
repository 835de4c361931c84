package vault

import (
	"context"
	"errors"
	"sync"
)

// Limits of one group commit.
const (
	groupMaxCalls = 64
	groupMaxOps   = 512
)

// GroupCommit returns st with Apply calls that arrive while another is
// being written joined into one Apply of st: concurrent writers of
// different records then share a transaction, and on bbolt its fsync, which
// is what bounds how many refreshes a second a vault can commit. Every
// caller still gets exactly the Store contract: its ops take effect
// atomically or not at all, ErrConflict if one of its own compares fails,
// and durability when Apply returns. Calls with a key in common are never
// joined; when a joined Apply fails, each of its calls is applied again on
// its own, so that one caller's conflict is not another's. An Apply that
// joined others is not canceled by its caller's context: once a call is
// queued it is written. Open uses it on the Store it is given.
//
// Get, Take, Scan and Close go straight to st.
func GroupCommit(st Store) Store {
	if g, ok := st.(*groupCommit); ok {
		return g
	}
	return &groupCommit{Store: st}
}

type groupCommit struct {
	Store
	mu      sync.Mutex
	pending []*groupCall
	busy    bool // a leader is writing; the next one is woken by it
}

type groupCall struct {
	ops  []Op
	revs []uint64
	err  error
	done bool
	wake chan struct{} // done, or lead the next group
}

func (g *groupCommit) Apply(ctx context.Context, ops ...Op) ([]uint64, error) {
	c := &groupCall{ops: ops, wake: make(chan struct{}, 1)}
	g.mu.Lock()
	g.pending = append(g.pending, c)
	lead := !g.busy
	g.busy = true
	g.mu.Unlock()
	if !lead {
		<-c.wake
	}
	if !c.done {
		g.lead(ctx)
	}
	return c.revs, c.err
}

// lead writes one group, starting with the first pending call (the
// caller's own), then hands the lead to the next pending call, if any.
func (g *groupCommit) lead(ctx context.Context) {
	g.mu.Lock()
	group, nops := []*groupCall{}, 0
	keys := map[string]bool{}
	rest := g.pending[:0]
	for i, c := range g.pending {
		if i > 0 && (len(group) == groupMaxCalls || nops+len(c.ops) > groupMaxOps || overlaps(keys, c.ops)) {
			rest = append(rest, c)
			continue
		}
		group = append(group, c)
		nops += len(c.ops)
		for _, op := range c.ops {
			keys[op.Key] = true
		}
	}
	clear(g.pending[len(rest):])
	g.pending = rest
	g.mu.Unlock()

	g.write(ctx, group)
	for _, c := range group[1:] {
		c.wake <- struct{}{}
	}
	g.mu.Lock()
	if len(g.pending) == 0 {
		g.busy = false
		g.mu.Unlock()
		return
	}
	next := g.pending[0]
	g.mu.Unlock()
	next.wake <- struct{}{}
}

func overlaps(keys map[string]bool, ops []Op) bool {
	for _, op := range ops {
		if keys[op.Key] {
			return true
		}
	}
	return false
}

// write applies group's calls in one Apply, or each on its own if that
// fails, and records each call's outcome.
func (g *groupCommit) write(ctx context.Context, group []*groupCall) {
	defer func() {
		for _, c := range group {
			c.done = true
		}
	}()
	if len(group) == 1 {
		c := group[0]
		c.revs, c.err = g.Store.Apply(ctx, c.ops...)
		return
	}
	ctx = context.WithoutCancel(ctx) // others' writes are in it
	var all []Op
	for _, c := range group {
		all = append(all, c.ops...)
	}
	revs, err := g.Store.Apply(ctx, all...)
	if err == nil && len(revs) == len(all) {
		for _, c := range group {
			c.revs, revs = revs[:len(c.ops):len(c.ops)], revs[len(c.ops):]
		}
		return
	}
	if err == nil { // written, but the answer cannot be split: a broken Store
		for _, c := range group {
			c.err = errors.New("vault: store returned the wrong number of revisions")
		}
		return
	}
	// A conflict (or a failure) of the group: find whose, one by one.
	for _, c := range group {
		c.revs, c.err = g.Store.Apply(ctx, c.ops...)
	}
}
