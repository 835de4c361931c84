package vault

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
)

// loadBatch is how many records one decoding worker takes at a time.
const loadBatch = 256

// loaded is one connection record read at Open.
type loaded struct {
	conn *Connection
	rev  uint64
}

type loadJob struct {
	keys []string
	vals [][]byte
	revs []uint64
	out  []loaded
	err  error
}

// loadConnections reads every connection record, in key order, opening and
// decoding them on all CPUs while the scan goes on (decoding is most of a
// start with many connections). At most a few batches of sealed values
// are held at once. Small strings that repeat across records (provider,
// status, token type) are shared, not held once per record.
func (v *Vault) loadConnections(ctx context.Context) ([]loaded, error) {
	workers := runtime.GOMAXPROCS(0)
	jobs := make(chan *loadJob, 2*workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			in := newInterner()
			for j := range jobs {
				j.out = make([]loaded, len(j.keys))
				for i, key := range j.keys {
					c, err := v.decode(key, j.vals[i])
					if err != nil {
						j.err = err
						break
					}
					in.connection(c)
					j.out[i] = loaded{c, j.revs[i]}
				}
				j.vals = nil
			}
		})
	}
	var all []*loadJob
	cur := &loadJob{}
	err := v.store.Scan(ctx, connPrefix, "", func(key string, value []byte, rev uint64) (bool, error) {
		cur.keys = append(cur.keys, key)
		cur.vals = append(cur.vals, slices.Clone(value))
		cur.revs = append(cur.revs, rev)
		if len(cur.keys) == loadBatch {
			all = append(all, cur)
			jobs <- cur
			cur = &loadJob{}
		}
		return true, nil
	})
	if len(cur.keys) > 0 {
		all = append(all, cur)
		jobs <- cur
	}
	close(jobs)
	wg.Wait()
	if err != nil {
		return nil, fmt.Errorf("vault: load connections: %w", err)
	}
	n := 0
	for _, j := range all {
		if j.err != nil {
			return nil, j.err
		}
		n += len(j.out)
	}
	out := make([]loaded, 0, n)
	for _, j := range all {
		out = append(out, j.out...)
	}
	return out, nil
}

// interner shares equal small strings between decoded records.
type interner map[string]string

func newInterner() interner { return interner{} }

func (in interner) s(p *string) {
	if *p == "" || len(*p) > 32 {
		return
	}
	if v, ok := in[*p]; ok {
		*p = v
		return
	}
	if len(in) < 1024 {
		in[*p] = *p
	}
}

// connection interns c's provider, status and token types: the values
// shared by many connections.
func (in interner) connection(c *Connection) {
	in.s(&c.Provider)
	in.s((*string)(&c.Status))
	in.s(&c.StatusReason)
	in.s(&c.LastError)
	in.s(&c.Tenant)
	for i := range c.Transitions {
		in.s((*string)(&c.Transitions[i].From))
		in.s((*string)(&c.Transitions[i].To))
		in.s(&c.Transitions[i].Reason)
	}
	for i := range c.Grant.Tokens {
		in.s(&c.Grant.Tokens[i].Name)
		in.s(&c.Grant.Tokens[i].TokenType)
	}
}
