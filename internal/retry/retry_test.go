package retry

import (
	"net/http"
	"testing"
	"time"
)

func TestExponential(t *testing.T) {
	for _, tc := range []struct {
		n           int
		base, limit time.Duration
		want        time.Duration
	}{
		{1, time.Second, time.Minute, time.Second},
		{0, time.Second, time.Minute, time.Second}, // n < 1 counts as 1
		{-7, time.Second, time.Minute, time.Second},
		{2, time.Second, time.Minute, 2 * time.Second},
		{6, time.Second, time.Minute, 32 * time.Second},
		{7, time.Second, time.Minute, time.Minute}, // capped
		{1 << 30, time.Second, time.Minute, time.Minute},
		{1 << 62, time.Nanosecond, time.Duration(1<<63 - 1), time.Duration(1<<63 - 1)}, // no overflow
		{1, time.Hour, time.Minute, time.Minute},                                       // base above the cap
		{10, time.Second, 10 * time.Minute, 512 * time.Second},
		{11, time.Second, 10 * time.Minute, 10 * time.Minute},
	} {
		if got := Exponential(tc.n, tc.base, tc.limit); got != tc.want {
			t.Errorf("Exponential(%d, %v, %v) = %v; want %v", tc.n, tc.base, tc.limit, got, tc.want)
		}
	}
}

// TestExponential_SameAsBefore holds Exponential to the two formulas it
// replaced: the vault's shift (base 1s, cap 10m) and webhook delivery's
// doubling loop.
func TestExponential_SameAsBefore(t *testing.T) {
	vaultBefore := func(n int) time.Duration {
		const base, limit = time.Second, 10 * time.Minute
		d := limit
		if n < 20 {
			d = min(base<<max(n-1, 0), limit)
		}
		return d
	}
	webhookBefore := func(n int, base, limit time.Duration) time.Duration {
		d := min(base, limit)
		for i := 1; i < n; i++ {
			if d > limit/2 {
				d = limit
				break
			}
			d *= 2
		}
		return d
	}
	for n := -1; n < 70; n++ {
		if got, want := Exponential(n, time.Second, 10*time.Minute), vaultBefore(n); got != want {
			t.Errorf("Exponential(%d, 1s, 10m) = %v; the vault's formula gave %v", n, got, want)
		}
		for _, bl := range [][2]time.Duration{{time.Second, time.Minute}, {300 * time.Millisecond, 10 * time.Minute}, {time.Minute, time.Second}} {
			if got, want := Exponential(n, bl[0], bl[1]), webhookBefore(n, bl[0], bl[1]); got != want {
				t.Errorf("Exponential(%d, %v, %v) = %v; webhook delivery's formula gave %v", n, bl[0], bl[1], got, want)
			}
		}
	}
}

func TestParseAfter(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in    string
		limit time.Duration
		want  time.Duration
	}{
		{"", time.Hour, 0},
		{"0", time.Hour, 0},
		{"7", time.Hour, 7 * time.Second},
		{" 120 ", time.Hour, 2 * time.Minute},
		{"3600", time.Hour, time.Hour},
		{"3601", time.Hour, time.Hour},
		{"7200", 6 * time.Hour, 2 * time.Hour},
		{"99999999999", 6 * time.Hour, 6 * time.Hour},
		{"99999999999999999999999", time.Hour, time.Hour},
		{"-5", time.Hour, 0},
		{"1.5", time.Hour, 0},
		{"soon", time.Hour, 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), time.Hour, 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), time.Hour, 0},
		{now.Add(48 * time.Hour).Format(http.TimeFormat), time.Hour, time.Hour},
		{now.Add(100 * time.Hour).Format(http.TimeFormat), 6 * time.Hour, 6 * time.Hour},
		{now.Add(30 * time.Second).Format(time.RFC850), time.Hour, 30 * time.Second},
		{now.Add(45 * time.Second).Format(time.ANSIC), time.Hour, 45 * time.Second},
	} {
		if got := ParseAfter(tc.in, now, tc.limit); got != tc.want {
			t.Errorf("ParseAfter(%q, %v) = %v; want %v", tc.in, tc.limit, got, tc.want)
		}
	}
}

// TestParseAfter_HTTPDates holds the date forms to net/http's ParseTime,
// which this package may not import.
func TestParseAfter_HTTPDates(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, v := range []string{
		"Sun, 01 Mar 2026 12:01:00 GMT", "Sunday, 01-Mar-26 12:01:00 GMT", "Sun Mar  1 12:01:00 2026",
		"Sun, 01 Mar 2026 12:01:00 UTC", "01 Mar 2026 12:01:00 GMT", "Sun, 1 Mar 2026 12:01:00 GMT",
	} {
		want := time.Duration(0)
		if at, err := http.ParseTime(v); err == nil {
			want = min(max(at.Sub(now), 0), time.Hour)
		}
		if got := ParseAfter(v, now, time.Hour); got != want {
			t.Errorf("ParseAfter(%q) = %v; net/http's reading gives %v", v, got, want)
		}
	}
}
