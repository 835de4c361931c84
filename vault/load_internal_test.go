package vault

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault/seal"
)

// mapStore is the least Store loadConnections and the keyring need.
type mapStore struct {
	mu  sync.Mutex
	m   map[string][]byte
	rev uint64
}

func (s *mapStore) Get(_ context.Context, key string) ([]byte, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[key]
	if !ok {
		return nil, 0, ErrNotFound
	}
	return slices.Clone(v), 1, nil
}

func (s *mapStore) Apply(_ context.Context, ops ...Op) ([]uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	revs := make([]uint64, len(ops))
	for i, op := range ops {
		s.rev++
		s.m[op.Key], revs[i] = slices.Clone(op.Value), s.rev
	}
	return revs, nil
}

func (s *mapStore) Take(context.Context, string) ([]byte, error) { return nil, ErrNotFound }
func (s *mapStore) Close() error                                 { return nil }

func (s *mapStore) Scan(_ context.Context, prefix, after string, fn func(string, []byte, uint64) (bool, error)) error {
	s.mu.Lock()
	var keys []string
	for k := range s.m {
		if strings.HasPrefix(k, prefix) && k > after {
			keys = append(keys, k)
		}
	}
	s.mu.Unlock()
	slices.Sort(keys)
	for _, k := range keys {
		s.mu.Lock()
		v := s.m[k]
		s.mu.Unlock()
		if ok, err := fn(k, v, 1); err != nil || !ok {
			return err
		}
	}
	return nil
}

// TestLoadConnections_ManyBatches loads enough records for the batches'
// buffers to be recycled many times over: every record comes back whole,
// its token and identity its own.
func TestLoadConnections_ManyBatches(t *testing.T) {
	ctx := context.Background()
	st := &mapStore{m: map[string][]byte{}}
	mk, err := seal.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := OpenKeyring(ctx, st, mk)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20*loadBatch + 7
	t0 := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	for i := range n {
		c := &Connection{
			ID: fmt.Sprintf("conn_%05d", i), Owner: fmt.Sprintf("owner-%d", i), Provider: "fake", Status: StatusActive,
			CreatedAt: t0, Generation: uint64(i + 1),
			// Records of different sizes, so that batches end at different
			// offsets of their buffers.
			Grant: Grant{Tokens: []Token{{
				AccessToken: fmt.Sprintf("at-%d-%s", i, strings.Repeat("x", i%300)), RefreshToken: fmt.Sprintf("rt-%d", i),
				TokenType: "Bearer", Expiry: t0.Add(time.Hour), IssuedAt: t0,
			}}},
		}
		plain, err := marshalRecord(c)
		if err != nil {
			t.Fatal(err)
		}
		sealed, err := kr.Seal(connPrefix+c.ID, plain)
		if err != nil {
			t.Fatal(err)
		}
		st.Apply(ctx, Op{Key: connPrefix + c.ID, Value: sealed})
	}
	v := &Vault{store: st, kr: kr}
	entries, bad, err := v.loadConnections(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != n || len(bad) != 0 {
		t.Fatalf("loaded %d records; want %d", len(entries), n)
	}
	for i, e := range entries {
		r := e.res.Load()
		want := fmt.Sprintf("at-%d-%s", i, strings.Repeat("x", i%300))
		if e.id != fmt.Sprintf("conn_%05d", i) || e.owner != fmt.Sprintf("owner-%d", i) || r.gen != uint64(i+1) ||
			len(r.tokens) != 1 || r.tokens[0].access != want {
			t.Fatalf("record %d loaded as %s/%s gen %d, %d tokens; want its own", i, e.id, e.owner, r.gen, len(r.tokens))
		}
	}
}

// Records that open but do not decode, or that name another connection
// than their key (sealed for conn/b, holding conn a's record: only a
// holder of the data key could write it), are loadConnections's bad
// records with their reasons, in batches of several workers; the others
// load.
func TestLoadConnections_UndecodableAndWrongID(t *testing.T) {
	ctx := context.Background()
	st := &mapStore{m: map[string][]byte{}}
	mk, err := seal.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := OpenKeyring(ctx, st, mk)
	if err != nil {
		t.Fatal(err)
	}
	put := func(key string, plain []byte) {
		sealed, err := kr.Seal(key, plain)
		if err != nil {
			t.Fatal(err)
		}
		st.Apply(ctx, Op{Key: key, Value: sealed})
	}
	const n = 2*loadBatch + 3
	for i := range n {
		c := &Connection{ID: fmt.Sprintf("conn_%05d", i), Owner: "o", Provider: "fake", Status: StatusActive}
		plain, err := marshalRecord(c)
		if err != nil {
			t.Fatal(err)
		}
		switch i {
		case 5:
			plain = []byte{0xff, 0xff, 0xff} // not a record
		case loadBatch + 1:
			c.ID = "conn_other"
			plain, _ = marshalRecord(c)
		}
		put(connPrefix+fmt.Sprintf("conn_%05d", i), plain)
	}
	v := &Vault{store: st, kr: kr}
	entries, bad, err := v.loadConnections(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []badRecord{
		{key: connPrefix + "conn_00005", reason: UnreadableUndecodable},
		{key: connPrefix + fmt.Sprintf("conn_%05d", loadBatch+1), reason: UnreadableWrongID},
	}
	if len(entries) != n-2 || !slices.Equal(bad, want) {
		t.Fatalf("loaded %d, bad %+v; want %d and %+v", len(entries), bad, n-2, want)
	}
}
