package vault

import (
	"slices"
	"testing"
	"time"
)

func TestChangeEvents(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	rec := func(st Status, reason string, connects int, scopes ...string) *Connection {
		return &Connection{ID: "conn_1", Owner: "alice", Status: st, StatusReason: reason, Connects: connects, EventSeq: 7,
			Grant: Grant{Scopes: scopes, Tokens: []Token{{AccessToken: "at", RefreshToken: "rt"}}}}
	}
	active := rec(StatusActive, "", 1, "read")
	for _, tc := range []struct {
		name      string
		old, next *Connection
		want      []string // type/reason
	}{
		{"created", nil, rec(StatusActive, "", 1, "read"), []string{"connection.created/"}},
		{"refresh, nothing changed", active, rec(StatusActive, "", 1, "read"), nil},
		{"scopes changed", active, rec(StatusActive, "", 1, "read", "write"), []string{"connection.scopes_changed/"}},
		{"needs_reauth", active, rec(StatusNeedsReauth, "invalid_grant", 1, "read"), []string{"connection.needs_reauth/invalid_grant"}},
		{"needs_reauth, another reason", rec(StatusNeedsReauth, "invalid_grant", 1, "read"), rec(StatusNeedsReauth, "refresh_interrupted", 1, "read"),
			[]string{"connection.needs_reauth/refresh_interrupted"}},
		{"needs_reauth, same reason", rec(StatusNeedsReauth, "invalid_grant", 1, "read"), rec(StatusNeedsReauth, "invalid_grant", 1, "read"), nil},
		{"recovered", rec(StatusNeedsReauth, "invalid_grant", 1, "read"), rec(StatusActive, "", 1, "read"), []string{"connection.recovered/"}},
		{"recovered with new scopes", rec(StatusNeedsReauth, "invalid_grant", 1, "read"), rec(StatusActive, "", 1, "write"),
			[]string{"connection.recovered/", "connection.scopes_changed/"}},
		{"reconnected", rec(StatusNeedsReauth, "invalid_grant", 1, "read"), rec(StatusActive, "", 2, "read"), []string{"connection.reconnected/"}},
		{"reconnected while active", active, rec(StatusActive, "", 2, "read"), []string{"connection.reconnected/"}},
		{"reconnected with new scopes", active, rec(StatusActive, "", 2, "read", "write"),
			[]string{"connection.reconnected/", "connection.scopes_changed/"}},
		{"revoked", active, rec(StatusRevoked, "user_left", 1, "read"), []string{"connection.revoked/user_left"}},
		{"revoked, scopes cleared: no scopes event", active, rec(StatusRevoked, "revoked", 1), []string{"connection.revoked/revoked"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := tc.next
			evs := changeEvents(tc.old, next, now)
			var got []string
			for i, ev := range evs {
				got = append(got, ev.Type+"/"+ev.Reason)
				if want := uint64(7 + i + 1); ev.ConnectionSequence != want {
					t.Errorf("event %d: ConnectionSequence %d; want %d", i, ev.ConnectionSequence, want)
				}
				if !ev.Time.Equal(now) || ev.Connection == nil || ev.Connection.ID != "conn_1" {
					t.Errorf("event %d: time %v, connection %v", i, ev.Time, ev.Connection)
				}
				for _, tok := range ev.Connection.Grant.Tokens {
					if tok.AccessToken != "" || tok.RefreshToken != "" {
						t.Errorf("event %d carries token material", i)
					}
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("changeEvents = %v; want %v", got, tc.want)
			}
			if want := uint64(7 + len(tc.want)); next.EventSeq != want {
				t.Errorf("EventSeq = %d; want %d", next.EventSeq, want)
			}
		})
	}
}

func TestEventKey_SortsBySequence(t *testing.T) {
	seqs := []uint64{0, 1, 9, 10, 99, 100, 1 << 40, ^uint64(0)}
	for i := 1; i < len(seqs); i++ {
		a, b := eventKey(seqs[i-1]), eventKey(seqs[i])
		if a >= b {
			t.Errorf("eventKey(%d) = %q sorts after eventKey(%d) = %q", seqs[i-1], a, seqs[i], b)
		}
		if got, err := eventSeqOf(b); err != nil || got != seqs[i] {
			t.Errorf("eventSeqOf(%q) = %d, %v; want %d", b, got, err, seqs[i])
		}
	}
}
