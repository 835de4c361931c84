package vault

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	recordv1 "github.com/tokenvault/tokenvault/proto/tokenvault/record/v1"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// randomConnection returns a record using every field of record.proto,
// some left empty at random, times anywhere an int64 reaches.
func randomConnection(rng *rand.Rand, i int) *Connection {
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	when := func() time.Time {
		switch rng.IntN(6) {
		case 0:
			return time.Time{}
		case 1:
			return time.Unix(0, rng.Int64()).UTC()
		case 2:
			return time.Unix(0, -rng.Int64()).UTC()
		case 3:
			return time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC) // clamped by nanos
		}
		return time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(rng.Int64N(int64(1000 * time.Hour))))
	}
	scopes := func() []string {
		var s []string
		for range rng.IntN(4) {
			s = append(s, pick("read", "write", "admin", "a-scope-name-longer-than-sixty-four-bytes-so-that-it-is-never-interned-xx"))
		}
		return s
	}
	meta := func() map[string]string {
		if rng.IntN(3) > 0 {
			return nil
		}
		m := map[string]string{}
		for j := range rng.IntN(3) + 1 {
			m[fmt.Sprintf("k%d", j)] = pick("", "v", "é✓")
		}
		return m
	}
	c := &Connection{
		ID: fmt.Sprintf("conn_%06d", i), Owner: pick("alice", "bob", "ünïcode-owner", ""), Tenant: pick("", "acme"),
		Provider: pick("github", "google", "slack"), Label: pick("", "work", "personal"), Purpose: pick("", "ci"),
		Status: Status(pick("active", "needs_reauth", "revoked")), StatusReason: pick("", "refresh_failed", "invalid_grant"),
		RequestedScopes: scopes(), CreatedAt: when(), UpdatedAt: when(), LastRefreshedAt: when(), LastUsedAt: when(),
		LastValidatedAt: when(), Generation: rng.Uint64(), Connects: rng.IntN(5), EventSeq: rng.Uint64N(100),
		Failures: pick2(rng, 0, 3, math.MaxInt32+7, -2), LastError: pick("", "boom"), NextRetryAt: when(),
		AppMetadata: meta(), CreatedBy: pick("", "app"), Imported: rng.IntN(2) == 0,
		Grant: Grant{Scopes: scopes(), Account: pick("", "acct"), Metadata: meta(), Secrets: meta()},
	}
	if rng.IntN(4) == 0 {
		c.InFlight = &InFlight{Credential: pick("", "user"), StartedAt: when(), Attempts: rng.IntN(3)}
	}
	for range rng.IntN(4) {
		c.Transitions = append(c.Transitions, Transition{At: when(), From: StatusActive, To: StatusRevoked, Reason: pick("", "x")})
	}
	for j := range rng.IntN(3) {
		c.Grant.Tokens = append(c.Grant.Tokens, Token{
			Name: []string{"", "user", "bot"}[j], AccessToken: pick("", fmt.Sprintf("at-%d-%d", i, j)),
			RefreshToken: pick("", "rt"), TokenType: pick("", "Bearer", "bot"), Expiry: when(), RefreshExpiry: when(),
			Scopes: scopes(), IssuedAt: when(),
		})
	}
	return c
}

func pick2(rng *rand.Rand, xs ...int) int { return xs[rng.IntN(len(xs))] }

// generalEntry is the entry the general decoder makes of plain.
func generalEntry(plain []byte) (*entry, error) {
	var c Connection
	if err := unmarshalRecord(plain, &c, nil); err != nil {
		return nil, err
	}
	e := newEntry(&c)
	e.res.Store(newResident(&c))
	if used := nanos(c.LastUsedAt); used > 0 {
		e.lastUsed.Store(used)
	}
	return e, nil
}

func sameEntry(t *testing.T, what string, got, want *entry) {
	t.Helper()
	if got.id != want.id || got.owner != want.owner || got.label != want.label || *got.placement != *want.placement ||
		got.lastUsed.Load() != want.lastUsed.Load() {
		t.Fatalf("%s: entry %q/%q/%q %v used %d; the general decoder's %q/%q/%q %v used %d", what,
			got.id, got.owner, got.label, *got.placement, got.lastUsed.Load(),
			want.id, want.owner, want.label, *want.placement, want.lastUsed.Load())
	}
	if g, w := got.res.Load(), want.res.Load(); !reflect.DeepEqual(g, w) {
		t.Fatalf("%s: resident\n%+v\n%+v (grant %+v)\nthe general decoder's\n%+v\n%+v (grant %+v)", what, g, g.tokens, *g.grant, w, w.tokens, *w.grant)
	}
}

// TestLoadDecoder_SameAsGeneral: loading's decoder builds the entry and the
// resident the general decoder builds, record by record, for records
// using every field; and on damaged encodings it either builds the same or
// leaves the record to the general decoder, never accepting what the
// general decoder refuses.
func TestLoadDecoder_SameAsGeneral(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var d loadDecoder // one decoder throughout, as a worker: its memory of shared parts is exercised
	var fast, general int
	deadline := time.Now().Add(20 * time.Second)
	for i := range 3000 {
		if time.Now().After(deadline) {
			break
		}
		c := randomConnection(rng, i)
		plain, err := marshalRecord(c)
		if err != nil {
			t.Fatal(err)
		}
		want, err := generalEntry(plain)
		if err != nil {
			t.Fatal(err)
		}
		got, err := d.decode(plain)
		if err != nil {
			t.Fatalf("record %d: loading's decoder left a well-formed record to the general one: %v", i, err)
		}
		sameEntry(t, fmt.Sprintf("record %d", i), got, want)

		// Damaged: a byte changed, or the end cut off.
		bad := append([]byte(nil), plain...)
		if len(bad) > 0 && rng.IntN(2) == 0 {
			bad[rng.IntN(len(bad))] ^= byte(1 << rng.IntN(8))
		} else {
			bad = bad[:rng.IntN(len(bad)+1)]
		}
		want, wantErr := generalEntry(bad)
		got, err = d.decode(bad)
		switch {
		case err != nil:
			general++
			if err != errGeneral {
				t.Fatalf("damaged record %d: %v; want errGeneral", i, err)
			}
		case wantErr != nil:
			t.Fatalf("damaged record %d: loading's decoder accepted what the general one refuses (%v)", i, wantErr)
		default:
			fast++
			sameEntry(t, fmt.Sprintf("damaged record %d", i), got, want)
		}
	}
	t.Logf("damaged records: %d decoded alike, %d left to the general decoder", fast, general)
	if _, err := d.decode([]byte(`{"id":"conn_1"}`)); err != errGeneral {
		t.Fatalf("a JSON record: %v; want errGeneral", err)
	}
}

// TestLoadDecoder_Duplicates: a message field twice, which the runtime
// would merge (the grant, the refresh in flight), goes to the general
// decoder.
func TestLoadDecoder_Duplicates(t *testing.T) {
	c := &Connection{ID: "conn_1", Owner: "o", Provider: "p", Status: StatusActive,
		InFlight: &InFlight{Credential: "x"}, Grant: Grant{Tokens: []Token{{AccessToken: "at"}}}}
	plain, err := marshalRecord(c)
	if err != nil {
		t.Fatal(err)
	}
	field := func(num protowire.Number, m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), b)
	}
	for _, tc := range []struct {
		name  string
		extra []byte
	}{
		{"grant", field(23, &recordv1.Grant{Tokens: []*recordv1.Token{{AccessToken: "at2"}}})},
		{"in_flight", field(19, &recordv1.InFlight{Attempts: 3})},
	} {
		twice := append(slices.Clone(plain), tc.extra...)
		var d loadDecoder
		if _, err := d.decode(twice); err != errGeneral {
			t.Fatalf("%s twice: %v; want errGeneral", tc.name, err)
		}
		e, err := decodeEntry(twice, &d, &Connection{}, &recordv1.Connection{})
		if err != nil {
			t.Fatal(err)
		}
		want, err := generalEntry(twice)
		if err != nil {
			t.Fatal(err)
		}
		sameEntry(t, tc.name+" twice", e, want)
	}
}

// BenchmarkLoadConnections loads 10,000 sealed records (from memory: the
// store's own cost is not in it) and reports the cost per record.
func BenchmarkLoadConnections(b *testing.B) {
	ctx := context.Background()
	st := &mapStore{m: map[string][]byte{}}
	mk, err := seal.GenerateMasterKey()
	if err != nil {
		b.Fatal(err)
	}
	kr, err := OpenKeyring(ctx, st, mk)
	if err != nil {
		b.Fatal(err)
	}
	const n = 10000
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		// As the bench command seeds: one token each, 128-byte access
		// tokens, 64-byte refresh tokens, a few scopes.
		c := &Connection{
			ID: fmt.Sprintf("conn_%08d", i), Owner: fmt.Sprintf("user-%d", i), Provider: "bench", Status: StatusActive,
			CreatedAt: t0, UpdatedAt: t0, Generation: 2, Connects: 1, EventSeq: 1, LastRefreshedAt: t0,
			Transitions: []Transition{{At: t0, To: StatusActive, Reason: "connected"}},
			Grant: Grant{Scopes: []string{"read", "write"}, Tokens: []Token{{
				AccessToken: fmt.Sprintf("%0128d", i), RefreshToken: fmt.Sprintf("%064d", i),
				TokenType: "Bearer", Expiry: t0.Add(time.Hour), IssuedAt: t0,
			}}},
		}
		plain, err := marshalRecord(c)
		if err != nil {
			b.Fatal(err)
		}
		sealed, err := kr.Seal(connPrefix+c.ID, plain)
		if err != nil {
			b.Fatal(err)
		}
		st.Apply(ctx, Op{Key: connPrefix + c.ID, Value: sealed})
	}
	v := &Vault{store: st, kr: kr}
	for b.Loop() {
		if _, bad, err := v.loadConnections(ctx); err != nil || len(bad) != 0 {
			b.Fatal(bad, err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/record")
}

// The load decoder reads record.proto by field number and skips what it
// does not list. A field added to the schema would be skipped silently,
// and a resident built without it would differ from the general decoder's
// only for records that hold it, which the random records above do not
// (they are written by hand). This list is the schema loaddecode.go was
// written against: a new field fails here until loaddecode.go has been
// taught whether the resident needs it, and the list updated.
func TestLoadDecoder_KnowsTheSchema(t *testing.T) {
	known := map[string][]string{
		"Connection": {"id", "owner", "tenant", "provider", "label", "purpose", "status", "status_reason", "requested_scopes",
			"created_at", "updated_at", "last_refreshed_at", "last_used_at", "last_validated_at", "generation", "transitions",
			"connects", "event_seq", "in_flight", "failures", "last_error", "next_retry_at", "grant", "app_metadata",
			"created_by", "imported"},
		"InFlight": {"credential", "started_at", "attempts"},
		"Grant":    {"tokens", "scopes", "account", "metadata", "secrets"},
		"Token":    {"name", "access_token", "refresh_token", "token_type", "expiry", "refresh_expiry", "scopes", "issued_at"},
	}
	msgs := map[string]protoreflect.MessageDescriptor{
		"Connection": (&recordv1.Connection{}).ProtoReflect().Descriptor(),
		"InFlight":   (&recordv1.InFlight{}).ProtoReflect().Descriptor(),
		"Grant":      (&recordv1.Grant{}).ProtoReflect().Descriptor(),
		"Token":      (&recordv1.Token{}).ProtoReflect().Descriptor(),
	}
	for name, md := range msgs {
		var got []string
		for i := range md.Fields().Len() {
			got = append(got, string(md.Fields().Get(i).Name()))
		}
		if !slices.Equal(got, known[name]) {
			t.Errorf("record.proto's %s has fields %v; loaddecode.go was written for %v: teach it the new ones (or whether it may skip them), then update this list", name, got, known[name])
		}
	}
}
