package vault

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"
)

// loadBatch is how many records one decoding worker takes at a time.
const loadBatch = 256

type loadJob struct {
	keys []string
	vals [][]byte
	revs []uint64
	out  []*entry
	err  error
}

// loadConnections reads every connection record, in key order, opening and
// decoding them on all CPUs while the scan goes on (decoding is most of a
// start with many connections), and returns their entries. At most a few
// batches of sealed values and decoded records are held at once: each
// record is reduced to its resident part as soon as it is decoded.
func (v *Vault) loadConnections(ctx context.Context) ([]*entry, error) {
	workers := runtime.GOMAXPROCS(0)
	jobs := make(chan *loadJob, 2*workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for j := range jobs {
				j.out = make([]*entry, len(j.keys))
				for i, key := range j.keys {
					c, err := v.decodeResident(key, j.vals[i])
					if err != nil {
						j.err = err
						break
					}
					e := newEntry(c)
					e.rev = j.revs[i]
					e.res.Store(newResident(c))
					if used := nanos(c.LastUsedAt); used > 0 {
						e.lastUsed.Store(used)
					}
					j.out[i] = e
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
	out := make([]*entry, 0, n)
	for _, j := range all {
		out = append(out, j.out...)
	}
	return out, nil
}

// residentRecord is the part of a stored Connection that newResident and
// newEntry read, with the same JSON names. Open decodes records into it,
// which skips allocating the rest (transitions, secrets, labels): a third
// less garbage and time for the biggest part of a start.
type residentRecord struct {
	ID              string    `json:"id"`
	Owner           string    `json:"owner"`
	Tenant          string    `json:"tenant"`
	Provider        string    `json:"provider"`
	Status          Status    `json:"status"`
	StatusReason    string    `json:"status_reason"`
	RequestedScopes []string  `json:"requested_scopes"`
	CreatedAt       time.Time `json:"created_at"`
	LastUsedAt      time.Time `json:"last_used_at"`
	LastValidatedAt time.Time `json:"last_validated_at"`
	Generation      uint64    `json:"generation"`
	InFlight        *InFlight `json:"in_flight"`
	Failures        int       `json:"failures"`
	NextRetryAt     time.Time `json:"next_retry_at"`
	Grant           struct {
		Tokens   []Token           `json:"tokens"`
		Scopes   []string          `json:"scopes"`
		Metadata map[string]string `json:"metadata"`
	} `json:"grant"`
}

// decodeResident opens and decodes the sealed record under key into a
// Connection holding only what newResident and newEntry read.
func (v *Vault) decodeResident(key string, sealed []byte) (*Connection, error) {
	plain, err := v.kr.Open(key, sealed)
	if err != nil {
		return nil, fmt.Errorf("vault: open %s: %w", key, err)
	}
	c, err := decodeResidentJSON(plain)
	if err != nil {
		return nil, fmt.Errorf("vault: decode %s: %w", key, err)
	}
	return c, nil
}

func decodeResidentJSON(plain []byte) (*Connection, error) {
	var r residentRecord
	if err := json.Unmarshal(plain, &r); err != nil {
		return nil, err
	}
	return &Connection{
		ID: r.ID, Owner: r.Owner, Tenant: r.Tenant, Provider: r.Provider,
		Status: r.Status, StatusReason: r.StatusReason, RequestedScopes: r.RequestedScopes,
		CreatedAt: r.CreatedAt, LastUsedAt: r.LastUsedAt, LastValidatedAt: r.LastValidatedAt,
		Generation: r.Generation, InFlight: r.InFlight, Failures: r.Failures, NextRetryAt: r.NextRetryAt,
		Grant: Grant{Tokens: r.Grant.Tokens, Scopes: r.Grant.Scopes, Metadata: r.Grant.Metadata},
	}, nil
}
