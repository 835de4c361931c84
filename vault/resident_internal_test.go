package vault

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// fullRecord returns a connection with every field set.
func fullRecord() *Connection {
	t0 := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	return &Connection{
		ID: "conn_abc", Owner: "alice", Tenant: "acme", Provider: "slack", Label: "ops", Purpose: "alerts",
		Status: StatusNeedsReauth, StatusReason: "invalid_grant", RequestedScopes: []string{"chat:write", "users:read"},
		CreatedAt: t0, UpdatedAt: t0.Add(time.Hour), LastRefreshedAt: t0.Add(2 * time.Hour),
		LastUsedAt: t0.Add(3 * time.Hour), LastValidatedAt: t0.Add(4 * time.Hour),
		Generation: 9, Transitions: []Transition{{At: t0, To: StatusActive}}, Connects: 2, EventSeq: 5,
		InFlight: &InFlight{Credential: "user", StartedAt: t0, Attempts: 1}, Failures: 3, LastError: "server_error",
		NextRetryAt: t0.Add(5 * time.Hour),
		Grant: Grant{
			Tokens: []Token{
				{AccessToken: "xoxb-1", RefreshToken: "xoxe-1", TokenType: "Bearer", Expiry: t0.Add(12 * time.Hour),
					RefreshExpiry: t0.Add(48 * time.Hour), Scopes: []string{"chat:write"}, IssuedAt: t0.Add(time.Hour)},
				{Name: "user", AccessToken: "xoxp-1", TokenType: "Bearer", IssuedAt: t0},
			},
			Scopes: []string{"chat:write"}, Account: "T1", Metadata: map[string]string{"team_id": "T1"},
			Secrets: map[string]string{"incoming_webhook_url": "https://hooks.example/x"},
		},
	}
}

// Open decodes only the resident part of each record: what it builds from
// that must be what a full decode gives.
func TestDecodeResidentJSON_SameAsFullRecord(t *testing.T) {
	full := fullRecord()
	plain, err := json.Marshal(full)
	if err != nil {
		t.Fatal(err)
	}
	var decoded Connection
	if err := json.Unmarshal(plain, &decoded); err != nil {
		t.Fatal(err)
	}
	part, err := decodeResidentJSON(plain)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := newResident(part), newResident(&decoded); !reflect.DeepEqual(got, want) {
		t.Errorf("resident from the partial decode:\n%+v\nwant\n%+v", got, want)
	}
	if got, want := newEntry(part), newEntry(&decoded); got.id != want.id || got.owner != want.owner ||
		got.tenant != want.tenant || got.provider != want.provider {
		t.Errorf("entry from the partial decode: %+v; want %+v", got, want)
	}
}

func TestResident_Fields(t *testing.T) {
	c := fullRecord()
	r := newResident(c)
	if r.status != c.Status || r.reason != c.StatusReason || r.gen != c.Generation || int(r.failures) != c.Failures ||
		!r.inFlight || r.inFlightCred != "user" || !timeOf(r.retryAt).Equal(c.NextRetryAt) {
		t.Errorf("resident = %+v", r)
	}
	if got := r.grant.missing; !reflect.DeepEqual(got, []string{"users:read"}) {
		t.Errorf("missing scopes = %v", got)
	}
	tok := r.token("")
	if tok == nil || !tok.refreshable || tok.access != "xoxb-1" {
		t.Fatalf("primary token = %+v", tok)
	}
	out := tok.out()
	want := c.Grant.Tokens[0]
	want.RefreshToken = ""
	if !out.Expiry.Equal(want.Expiry) || !out.IssuedAt.Equal(want.IssuedAt) {
		t.Errorf("times: %v %v; want %v %v", out.Expiry, out.IssuedAt, want.Expiry, want.IssuedAt)
	}
	out.Expiry, out.IssuedAt, want.Expiry, want.IssuedAt, want.RefreshExpiry = time.Time{}, time.Time{}, time.Time{}, time.Time{}, time.Time{}
	if !reflect.DeepEqual(out, want) {
		t.Errorf("out() = %+v; want %+v", out, want)
	}
	if u := r.token("user"); u == nil || u.refreshable || u.expiry != 0 {
		t.Errorf("user token = %+v", u)
	}
	// Equal scope lists are shared between residents, not copied.
	if r2 := newResident(fullRecord()); &r2.grant.missing[0] != &r.grant.missing[0] {
		t.Error("equal missing-scope lists are not shared")
	}
}

func TestNanos_Range(t *testing.T) {
	for _, tc := range []time.Time{{}, time.Unix(0, 1), time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} {
		if got := timeOf(nanos(tc)); !got.Equal(tc) {
			t.Errorf("timeOf(nanos(%v)) = %v", tc, got)
		}
	}
	far := time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)
	if n := nanos(far); timeOf(n).Before(time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("a far expiry became %v, which is sooner", timeOf(n))
	}
}
