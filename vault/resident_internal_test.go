package vault

import (
	"encoding/json"
	"fmt"
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
		Generation: 9, Transitions: []Transition{{At: t0, To: StatusActive}, {At: t0.Add(time.Hour), From: StatusActive, To: StatusNeedsReauth, Reason: "invalid_grant"}}, Connects: 2, EventSeq: 5,
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
		AppMetadata: map[string]string{"workspace": "w_42"}, CreatedBy: "app", Imported: true,
	}
}

// Every field of a record survives the store's encoding, and the JSON of
// records written before it still reads the same.
func TestRecord_RoundTrip(t *testing.T) {
	full := fullRecord()
	assertAllSet(t, reflect.ValueOf(*full), "Connection")
	b, err := marshalRecord(full)
	if err != nil {
		t.Fatal(err)
	}
	if b[0] == '{' {
		t.Fatal("the protobuf encoding starts with '{', which reads as JSON")
	}
	var got Connection
	if err := unmarshalRecord(b, &got, nil); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&got, full) {
		t.Errorf("protobuf round trip:\n%+v\nwant\n%+v", got, *full)
	}
	legacy, err := json.Marshal(full)
	if err != nil {
		t.Fatal(err)
	}
	got = Connection{ID: "stale"}
	if err := unmarshalRecord(legacy, &got, nil); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&got, full) {
		t.Errorf("JSON record:\n%+v\nwant\n%+v", got, *full)
	}
	if err := unmarshalRecord([]byte{0xff, 0xff, 0xff}, &got, nil); err == nil {
		t.Error("garbage decoded without an error")
	}
}

// assertAllSet fails for every zero field of v (recursively in structs and
// in some element of slices), so that a field added to Connection without
// a place in the record fails TestRecord_RoundTrip.
func assertAllSet(t *testing.T, v reflect.Value, path string) {
	t.Helper()
	if v.Type() == reflect.TypeOf(time.Time{}) {
		if v.Interface().(time.Time).IsZero() {
			t.Errorf("fullRecord leaves %s zero", path)
		}
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			assertAllSet(t, v.Field(i), path+"."+v.Type().Field(i).Name)
		}
	case reflect.Pointer:
		if v.IsNil() {
			t.Errorf("fullRecord leaves %s nil", path)
			return
		}
		assertAllSet(t, v.Elem(), path)
	case reflect.Slice:
		if v.Len() == 0 {
			t.Errorf("fullRecord leaves %s empty", path)
			return
		}
		if v.Type().Elem().Kind() != reflect.Struct {
			return
		}
		// Each field set in some element.
		for f := range v.Type().Elem().NumField() {
			at := 0
			for i := range v.Len() {
				if !v.Index(i).Field(f).IsZero() {
					at = i
					break
				}
			}
			assertAllSet(t, v.Index(at).Field(f), fmt.Sprintf("%s[%d].%s", path, at, v.Type().Elem().Field(f).Name))
		}
	default:
		if v.IsZero() {
			t.Errorf("fullRecord leaves %s zero", path)
		}
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
