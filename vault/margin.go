package vault

import "time"

// How much validity a read may demand of a token. A caller's min_valid_for
// (or the default, 5 minutes) is capped at MaxMarginFraction of the
// token's real lifetime (from when the vault received it to its expiry),
// but never below MarginFloor, as golang.org/x/oauth2 treats a token as
// expired a fixed 10 s early. So a token just refreshed satisfies any
// request it can, and a read refreshes only a token with less than the
// fitted margin left: whatever callers ask, a token is refreshed at most
// once per (1 - MaxMarginFraction) of its lifetime, i.e. each token once,
// when a quarter of its life (at least 10 s) is left. A 5-minute token
// asked for the default 5 minutes is refreshed when 75 s are left, not on
// every read; Google's 3,599 s tokens asked for an hour, when 15 minutes
// are left. The scheduler refreshes ahead of the same margin
// (RefreshPolicy.Ahead, 0.25 by default), so that reads do not wait.
//
// A token whose lifetime is unknown (no expiry, or received before the
// vault recorded IssuedAt) gets the caller's margin as asked.
const (
	MaxMarginFraction = 0.25
	MarginFloor       = 10 * time.Second
)

// fitMargin returns the validity a read may demand, asking want, of a
// token with lifetime life (0: unknown).
func fitMargin(want, life time.Duration) time.Duration {
	if life <= 0 {
		return want
	}
	return min(want, max(time.Duration(MaxMarginFraction*float64(life)), MarginFloor))
}

// lifetime returns the token's lifetime, or 0 if unknown.
func lifetime(issued, expiry time.Time) time.Duration {
	if issued.IsZero() || expiry.IsZero() || !expiry.After(issued) {
		return 0
	}
	return expiry.Sub(issued)
}

// margin is fitMargin for t.
func (t *Token) margin(want time.Duration) time.Duration {
	return fitMargin(want, lifetime(t.IssuedAt, t.Expiry))
}

// margin is fitMargin for t.
func (t *residentToken) margin(want time.Duration) time.Duration {
	if t.issuedAt == 0 || t.expiry <= t.issuedAt {
		return want
	}
	return fitMargin(want, time.Duration(t.expiry-t.issuedAt))
}
