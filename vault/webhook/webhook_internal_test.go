package webhook

import (
	"errors"
	"net/http"
	"net/netip"
	"testing"
	"time"
)

func TestPublicAddr(t *testing.T) {
	for _, tc := range []struct {
		ip   string
		want bool
	}{
		{"93.184.215.14", true},
		{"8.8.8.8", true},
		{"2606:4700::1111", true},
		{"127.0.0.1", false},
		{"127.9.9.9", false},
		{"::1", false},
		{"10.0.0.1", false},
		{"172.16.5.4", false},
		{"192.168.1.1", false},
		{"169.254.169.254", false}, // cloud metadata
		{"fe80::1", false},
		{"fe80::1%eth0", false},
		{"fd00::1", false},
		{"0.0.0.0", false},
		{"::", false},
		{"100.64.0.1", false}, // shared address space
		{"224.0.0.1", false},
		{"ff02::1", false},
		{"255.255.255.255", false},
		{"240.0.0.1", false},
		{"198.18.0.1", false},
		{"::ffff:127.0.0.1", false},    // IPv4-mapped
		{"::ffff:10.0.0.1", false},     // IPv4-mapped
		{"::ffff:93.184.215.14", true}, // IPv4-mapped public
		{"64:ff9b::a9fe:a9fe", false},  // NAT64 of 169.254.169.254
		{"64:ff9b::808:808", true},     // NAT64 of 8.8.8.8
		{"2002:7f00:1::", false},       // 6to4 of 127.0.0.1
		{"2001:0:4136:e378::1", false}, // Teredo
	} {
		if got := publicAddr(netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("publicAddr(%s) = %v; want %v", tc.ip, got, tc.want)
		}
	}
}

func TestDialControl(t *testing.T) {
	for _, tc := range []struct {
		network, addr string
		allow         bool
		wantErr       bool
	}{
		{"tcp4", "93.184.215.14:443", false, false},
		{"tcp6", "[2606:4700::1111]:443", false, false},
		{"tcp4", "127.0.0.1:8080", false, true},
		{"tcp4", "127.0.0.1:8080", true, false},
		{"tcp6", "[::1]:8080", false, true},
		{"tcp4", "169.254.169.254:80", false, true},
		{"tcp4", "10.0.0.1:80", true, false},
		{"udp4", "93.184.215.14:53", false, true},
		{"tcp4", "not-an-address", false, true},
	} {
		err := dialControl(tc.allow)(tc.network, tc.addr, nil)
		if (err != nil) != tc.wantErr {
			t.Errorf("dialControl(allow %v)(%s, %s) = %v; want error %v", tc.allow, tc.network, tc.addr, err, tc.wantErr)
		}
		var b *errBlocked
		if err != nil && !errors.As(err, &b) {
			t.Errorf("dialControl error %v is not errBlocked", err)
		}
	}
}

func TestWebhookRetryDelay(t *testing.T) {
	const base, limit = time.Second, time.Minute
	for _, tc := range []struct {
		n          int
		retryAfter time.Duration
		j          float64
		want       time.Duration
	}{
		{1, 0, 0.5, 500 * time.Millisecond},
		{2, 0, 0.5, time.Second},
		{3, 0, 1, 4 * time.Second},
		{6, 0, 1, 32 * time.Second},
		{7, 0, 1, time.Minute}, // capped
		{1000, 0, 1, time.Minute},
		{1, 0, 0, 0},                                 // full jitter may retry at once
		{1, 30 * time.Second, 0.5, 30 * time.Second}, // Retry-After wins
		{10, 30 * time.Second, 1, time.Minute},       // backoff wins
		{1, 24 * time.Hour, 0.5, maxRetryAfter},      // Retry-After capped
		{1 << 30, time.Second, 0.999, 59940 * time.Millisecond},
	} {
		if got := webhookRetryDelay(tc.n, base, limit, tc.retryAfter, tc.j); got != tc.want {
			t.Errorf("webhookRetryDelay(%d, %v, %v) = %v; want %v", tc.n, tc.retryAfter, tc.j, got, tc.want)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"120", 2 * time.Minute},
		{" 5 ", 5 * time.Second},
		{"0", 0},
		{"-3", 0},
		{"99999999999", maxRetryAfter},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
		{now.Add(100 * time.Hour).Format(http.TimeFormat), maxRetryAfter},
		{"soon", 0},
	} {
		if got := parseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("parseRetryAfter(%q) = %v; want %v", tc.in, got, tc.want)
		}
	}
}

// The signature is the Standard Deliverer example: secret, id, timestamp and
// body from the specification's test vectors.
func TestSecret_SignStandardVector(t *testing.T) {
	s, err := ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want || err != nil {
		t.Errorf("sign = %s, %v; want %s, nil", got, err, want)
	}
}
