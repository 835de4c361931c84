package connectpage

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limits bound the page's requests: a token bucket per client address and
// one per session.
type Limits struct {
	// PerAddress and AddressBurst bound requests per client address to the
	// link, the connect and disconnect actions and start URLs; default 2/s,
	// burst 30.
	PerAddress   rate.Limit
	AddressBurst int
	// PerSession and SessionBurst bound one session's actions; default
	// 1 every 3 s, burst 10.
	PerSession   rate.Limit
	SessionBurst int
}

// DefaultLimits are the limits a zero Limits takes.
var DefaultLimits = Limits{PerAddress: 2, AddressBurst: 30, PerSession: rate.Every(3 * time.Second), SessionBurst: 10}

func (l Limits) withDefaults() Limits {
	if l.PerAddress == 0 {
		l.PerAddress, l.AddressBurst = DefaultLimits.PerAddress, DefaultLimits.AddressBurst
	}
	if l.PerSession == 0 {
		l.PerSession, l.SessionBurst = DefaultLimits.PerSession, DefaultLimits.SessionBurst
	}
	return l
}

// limiter keeps token buckets by key ("addr:..." or "session:..."), at
// most maxKeys of them: past that the idle ones go, and if all are busy
// the oldest half does. Memory stays bounded under a flood of addresses.
type limiter struct {
	lim Limits
	now func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	*rate.Limiter
	seen time.Time
}

const maxKeys = 10000

func newLimiter(l Limits, now func() time.Time) *limiter {
	return &limiter{lim: l, now: now, buckets: map[string]*bucket{}}
}

// allow takes a token for key; when it cannot it sets Retry-After on w and
// returns false.
func (l *limiter) allow(w http.ResponseWriter, key string) bool {
	now := l.now()
	l.mu.Lock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= maxKeys {
			l.evictLocked(now)
		}
		r, burst := l.lim.PerAddress, l.lim.AddressBurst
		if key[0] == 's' {
			r, burst = l.lim.PerSession, l.lim.SessionBurst
		}
		b = &bucket{Limiter: rate.NewLimiter(r, burst)}
		l.buckets[key] = b
	}
	b.seen = now
	ok = b.AllowN(now, 1)
	var wait time.Duration
	if !ok {
		wait = time.Duration(float64(time.Second) / float64(b.Limit()))
	}
	l.mu.Unlock()
	if !ok && w != nil {
		w.Header().Set("Retry-After", strconv.Itoa(max(int(wait.Seconds()+0.999), 1)))
	}
	return ok
}

func (l *limiter) evictLocked(now time.Time) {
	for k, b := range l.buckets {
		if now.Sub(b.seen) > time.Minute {
			delete(l.buckets, k)
		}
	}
	if len(l.buckets) < maxKeys {
		return
	}
	n := 0
	for k := range l.buckets { // map order: an arbitrary half
		delete(l.buckets, k)
		if n++; n >= maxKeys/2 {
			break
		}
	}
}

// Allow is the per-address limit for the callback, which shares the
// page's buckets: a flood of callbacks and starts from one address draws
// on one budget.
func (h *Handler) Allow(w http.ResponseWriter, r *http.Request) bool {
	return h.limits.allow(w, "addr:"+clientAddr(r))
}
