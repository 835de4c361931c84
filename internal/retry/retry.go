// Package retry holds the one exponential backoff and the one Retry-After
// parser of tokenvault: the vault's refresh failures, webhook delivery and
// the providers' rate limits all use them. Each caller keeps its own policy
// (base, cap, jitter); the arithmetic lives here once. It is a leaf and
// imports no network package, so the vault may use it.
package retry

import (
	"errors"
	"strconv"
	"strings"
	"time"
)

// Exponential returns min(base·2^(n-1), limit): the delay before retrying
// after the n-th consecutive failure, before any jitter. n below 1 counts
// as 1, and a large n never overflows.
func Exponential(n int, base, limit time.Duration) time.Duration {
	d := min(base, limit)
	for i := 1; i < n && d > 0 && d < limit; i++ {
		if d > limit/2 {
			return limit
		}
		d *= 2
	}
	return d
}

// httpDateLayouts are the three forms of an HTTP-date (RFC 9110 §5.6.7), as
// net/http's ParseTime accepts them.
var httpDateLayouts = [...]string{"Mon, 02 Jan 2006 15:04:05 GMT", time.RFC850, time.ANSIC}

// ParseAfter returns the delay a Retry-After header value asks for, given
// in delay-seconds or as an HTTP-date, capped at limit (a number too large
// to parse is the cap too). It returns 0 if v is empty, malformed or a date
// not after now.
func ParseAfter(v string, now time.Time, limit time.Duration) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if v[0] >= '0' && v[0] <= '9' {
		n, err := strconv.ParseUint(v, 10, 64)
		switch {
		case errors.Is(err, strconv.ErrRange):
			return limit
		case err != nil:
			return 0
		case n >= uint64(limit/time.Second):
			return limit
		}
		return time.Duration(n) * time.Second
	}
	for _, layout := range httpDateLayouts {
		if t, err := time.Parse(layout, v); err == nil {
			return min(max(t.Sub(now), 0), limit)
		}
	}
	return 0
}
