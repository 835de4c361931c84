package vault_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
)

var t0 = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

// conn builds an active connection whose primary token was issued at t0
// and expires after life (0: no expiry), with a refresh token if rt.
func conn(life time.Duration, rt bool) *vault.Connection {
	t := vault.Token{AccessToken: "at", IssuedAt: t0}
	if life > 0 {
		t.Expiry = t0.Add(life)
	}
	if rt {
		t.RefreshToken = "rt"
	}
	return &vault.Connection{ID: "conn_a", Status: vault.StatusActive, CreatedAt: t0, Grant: vault.Grant{Tokens: []vault.Token{t}}}
}

func with(c *vault.Connection, f func(c *vault.Connection)) *vault.Connection {
	f(c)
	return c
}

const (
	day  = 24 * time.Hour
	none = vault.ActionNone
	ref  = vault.ActionRefresh
	val  = vault.ActionValidate
	exp  = vault.ActionExpire
)

func TestNextPlan(t *testing.T) {
	validate6h := vault.RefreshPolicy{ValidateInterval: 6 * time.Hour}
	for _, tc := range []struct {
		name        string
		c           *vault.Connection
		policy      vault.RefreshPolicy
		canValidate bool
		now         time.Duration // after t0
		j           float64
		want        vault.Action
		wantAt      time.Duration // after t0
		wantCred    string
	}{
		// Refresh ahead of expiry: at 75% of the lifetime, less up to
		// 10% of it by jitter.
		{"1h token, no jitter", conn(time.Hour, true), vault.RefreshPolicy{}, false, 0, 0, ref, 45 * time.Minute, ""},
		{"1h token, half jitter", conn(time.Hour, true), vault.RefreshPolicy{}, false, 0, 0.5, ref, 42 * time.Minute, ""},
		{"1h token, full jitter", conn(time.Hour, true), vault.RefreshPolicy{}, false, 0, 1, ref, 39 * time.Minute, ""},
		{"12h token", conn(12*time.Hour, true), vault.RefreshPolicy{}, false, 0, 0, ref, 9 * time.Hour, ""},
		{"policy ahead 0.5", conn(time.Hour, true), vault.RefreshPolicy{Ahead: 0.5}, false, 0, 0, ref, 30 * time.Minute, ""},
		// Short lifetimes: never later than MinValid (5m) before expiry,
		// as fitted to the token (a quarter of its life, at least 10 s:
		// margin.go), never sooner than MinInterval (10s) after issue.
		{"8m token", conn(8*time.Minute, true), vault.RefreshPolicy{}, false, 0, 0, ref, 6 * time.Minute, ""},
		{"8m token, full jitter", conn(8*time.Minute, true), vault.RefreshPolicy{}, false, 0, 1, ref, 6*time.Minute - 48*time.Second, ""},
		{"5m token (Keycloak's default)", conn(5*time.Minute, true), vault.RefreshPolicy{}, false, 0, 0, ref, 3*time.Minute + 45*time.Second, ""},
		{"30s token: 10 s floor of the margin", conn(30*time.Second, true), vault.RefreshPolicy{}, false, 0, 0, ref, 20 * time.Second, ""},
		{"30s token, full jitter", conn(30*time.Second, true), vault.RefreshPolicy{}, false, 0, 1, ref, 17 * time.Second, ""},
		{"3s token floored at min interval", conn(3*time.Second, true), vault.RefreshPolicy{}, false, 0, 0, ref, 10 * time.Second, ""},
		// States.
		{"needs_reauth", with(conn(time.Hour, true), func(c *vault.Connection) { c.Status = vault.StatusNeedsReauth }), vault.RefreshPolicy{}, false, 0, 0, none, 0, ""},
		{"revoked", with(conn(time.Hour, true), func(c *vault.Connection) { c.Status = vault.StatusRevoked; c.Grant.Tokens = nil }), vault.RefreshPolicy{}, false, 0, 0, none, 0, ""},
		// A grant nothing can renew is expired when its last token dies.
		{"no refresh token, no validation: expire at expiry", conn(time.Hour, false), vault.RefreshPolicy{}, false, 0, 0.7, exp, time.Hour, ""},
		{"no refresh token, no expiry, no validation", conn(0, false), vault.RefreshPolicy{}, false, 0, 0, none, 0, ""},
		{"expire when the last token dies", with(conn(time.Hour, false), func(c *vault.Connection) {
			c.Grant.Tokens = append(c.Grant.Tokens, vault.Token{Name: "user", AccessToken: "u", IssuedAt: t0, Expiry: t0.Add(3 * time.Hour)})
		}), vault.RefreshPolicy{}, false, 2 * time.Hour, 0, exp, 3 * time.Hour, ""},
		{"one token renewable: never expire", with(conn(12*time.Hour, true), func(c *vault.Connection) {
			c.Grant.Tokens = append(c.Grant.Tokens, vault.Token{Name: "user", AccessToken: "u", IssuedAt: t0, Expiry: t0.Add(time.Hour)})
		}), vault.RefreshPolicy{}, false, 2 * time.Hour, 0, ref, 9 * time.Hour, ""},
		{"one token without expiry: never expire", with(conn(time.Hour, false), func(c *vault.Connection) {
			c.Grant.Tokens = append(c.Grant.Tokens, vault.Token{Name: "user", AccessToken: "u", IssuedAt: t0})
		}), vault.RefreshPolicy{}, false, 2 * time.Hour, 0, none, 0, ""},
		// Backoff after a transient failure.
		{"backing off past the due time", with(conn(time.Hour, true), func(c *vault.Connection) { c.NextRetryAt = t0.Add(50 * time.Minute) }), vault.RefreshPolicy{}, false, 0, 0, ref, 50 * time.Minute, ""},
		{"backoff already over", with(conn(time.Hour, true), func(c *vault.Connection) { c.NextRetryAt = t0.Add(time.Minute) }), vault.RefreshPolicy{}, false, 0, 0, ref, 45 * time.Minute, ""},
		// Overdue (restart, clock jump): spread over what is left before
		// expiry - MinValid; due now only when nothing is left.
		{"overdue, spread by jitter", conn(time.Hour, true), vault.RefreshPolicy{}, false, 50 * time.Minute, 0.5, ref, 52*time.Minute + 30*time.Second, ""},
		{"overdue, no jitter: now", conn(time.Hour, true), vault.RefreshPolicy{}, false, 50 * time.Minute, 0, ref, 50 * time.Minute, ""},
		{"inside min_valid: now", conn(time.Hour, true), vault.RefreshPolicy{}, false, 57 * time.Minute, 0.9, ref, 57 * time.Minute, ""},
		{"expired: now", conn(time.Hour, true), vault.RefreshPolicy{}, false, 2 * time.Hour, 0.9, ref, 2 * time.Hour, ""},
		{"clock behind the issue time", conn(time.Hour, true), vault.RefreshPolicy{}, false, -time.Hour, 0, ref, 45 * time.Minute, ""},
		// An interrupted refresh is retried first, once its backoff allows.
		{"in flight: now", with(conn(time.Hour, true), func(c *vault.Connection) { c.InFlight = &vault.InFlight{Attempts: 1} }), vault.RefreshPolicy{}, false, time.Minute, 0.5, ref, time.Minute, ""},
		{"in flight, backing off", with(conn(time.Hour, true), func(c *vault.Connection) {
			c.InFlight = &vault.InFlight{Attempts: 2}
			c.NextRetryAt = t0.Add(5 * time.Minute)
		}), vault.RefreshPolicy{}, false, time.Minute, 0, ref, 5 * time.Minute, ""},
		// Tokens without expires_in: a configured lifetime, or validation.
		{"no expiry, token_lifetime 2h", conn(0, true), vault.RefreshPolicy{TokenLifetime: 2 * time.Hour}, false, 0, 0, ref, 90 * time.Minute, ""},
		{"no expiry, no lifetime, cannot validate", conn(0, true), validate6h, false, 0, 0, none, 0, ""},
		{"no expiry, no validate_interval", conn(0, true), vault.RefreshPolicy{}, true, 0, 0, none, 0, ""},
		{"no expiry: validate", conn(0, true), validate6h, true, 0, 0, val, 6 * time.Hour, ""},
		{"no refresh token: validate, full jitter", conn(0, false), validate6h, true, 0, 1, val, 6*time.Hour - 36*time.Minute, ""},
		{"validated an hour in", with(conn(0, false), func(c *vault.Connection) { c.LastValidatedAt = t0.Add(time.Hour) }), validate6h, true, time.Hour, 0, val, 7 * time.Hour, ""},
		{"validation overdue, spread", conn(0, false), validate6h, true, 6*time.Hour + 30*time.Minute, 0.5, val, 6*time.Hour + 33*time.Minute, ""},
		{"expiring token without refresh token: validate", conn(30*day, false), validate6h, true, 0, 0, val, 6 * time.Hour, ""},
		{"expiring token without refresh token, validated first", conn(7*time.Hour, false), validate6h, true, 0, 0, val, 6 * time.Hour, ""},
		{"expiring token without refresh token, expires before validation", conn(5*time.Hour, false), validate6h, true, 0, 0, exp, 5 * time.Hour, ""},
		{"expired token without refresh token: expire now", conn(time.Hour, false), validate6h, true, 2 * time.Hour, 0.9, exp, 2 * time.Hour, ""},
		// Refresh tokens that die unused.
		{"idle max, no expiry", conn(0, true), vault.RefreshPolicy{RefreshIdleMax: 180 * day}, false, 0, 0, ref, 135 * day, ""},
		{"idle max before expiry", conn(30*day, true), vault.RefreshPolicy{RefreshIdleMax: 7 * day}, false, 0, 0, ref, 5*day + 6*time.Hour, ""},
		{"expiry before idle max", conn(time.Hour, true), vault.RefreshPolicy{RefreshIdleMax: 180 * day}, false, 0, 0, ref, 45 * time.Minute, ""},
		{"idle max before validation", conn(0, true), vault.RefreshPolicy{RefreshIdleMax: 4 * time.Hour, ValidateInterval: 6 * time.Hour}, true, 0, 0, ref, 3 * time.Hour, ""},
		// Several credentials: the earliest wins.
		{"bot 12h, user 1h", with(conn(12*time.Hour, true), func(c *vault.Connection) {
			c.Grant.Tokens = append(c.Grant.Tokens, vault.Token{Name: "user", AccessToken: "u", RefreshToken: "urt", IssuedAt: t0, Expiry: t0.Add(time.Hour)})
		}), vault.RefreshPolicy{}, false, 0, 0, ref, 45 * time.Minute, "user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := vault.NextPlan(tc.c, tc.policy, tc.canValidate, t0.Add(tc.now), tc.j)
			want := vault.Plan{Action: tc.want, Credential: tc.wantCred}
			if tc.want != none {
				want.At = t0.Add(tc.wantAt)
			}
			if got != want {
				t.Errorf("NextPlan = %s; want %s", planString(got), planString(want))
			}
		})
	}
}

func planString(p vault.Plan) string {
	if p.Action == vault.ActionNone {
		return "none"
	}
	return fmt.Sprintf("%s %q at t0%+v", p.Action, p.Credential, p.At.Sub(t0))
}

// TestNextPlan_Bounds checks, over random lifetimes, jitters and times,
// that a refresh is never planned before now, nor after the token falls
// inside min_valid while there is time left, nor within MinInterval of its
// issue.
func TestNextPlan_Bounds(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		life := time.Duration(r.Int64N(int64(48 * time.Hour)))
		now := t0.Add(time.Duration(r.Int64N(int64(2*life+time.Minute))) - time.Minute)
		j := r.Float64()
		c := conn(life, true)
		p := vault.NextPlan(c, vault.RefreshPolicy{}, false, now, j)
		exp, floor := t0.Add(life), t0.Add(10*time.Second)
		minValid := min(5*time.Minute, max(life/4, 10*time.Second)) // fitted to the token
		switch {
		case p.Action != ref:
			t.Fatalf("life %v now %v: NextPlan = %s; want a refresh", life, now.Sub(t0), planString(p))
		case p.At.Before(now):
			t.Fatalf("life %v now %v j %.2f: NextPlan = %s; before now", life, now.Sub(t0), j, planString(p))
		case p.At.Before(floor) && now.Before(floor):
			t.Fatalf("life %v now %v j %.2f: NextPlan = %s; sooner than MinInterval after issue", life, now.Sub(t0), j, planString(p))
		case p.At.After(later(exp.Add(-minValid), floor, now)):
			t.Fatalf("life %v now %v j %.2f: NextPlan = %s; after expiry - min_valid", life, now.Sub(t0), j, planString(p))
		}
	}
}

func later(ts ...time.Time) time.Time {
	m := ts[0]
	for _, t := range ts[1:] {
		if t.After(m) {
			m = t
		}
	}
	return m
}

func BenchmarkNextPlan(b *testing.B) {
	c := conn(time.Hour, true)
	b.ReportAllocs()
	for b.Loop() {
		vault.NextPlan(c, vault.RefreshPolicy{}, false, t0, 0.5)
	}
}
