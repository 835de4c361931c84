// Package webhook delivers a vault's events to HTTP endpoints in the
// Standard Webhooks format: one worker per endpoint reads the vault's outbox
// (through the Outbox it declares) from a cursor kept in the vault's Store,
// signs each request, retries with backoff, and dials only public addresses
// unless an endpoint allows private ones. It is the only package under
// vault/ that speaks HTTP.
package webhook

import (
	"github.com/tokenvault/tokenvault/internal/retry"

	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/tokenvault/tokenvault/vault"
)

// Webhook delivery: one worker per endpoint reads the outbox in sequence
// order from its persisted cursor and POSTs each event in the Standard
// Webhooks format (https://www.standardwebhooks.com): headers webhook-id
// (the event id, stable across retries), webhook-timestamp (Unix seconds of
// the attempt) and webhook-signature ("v1,<base64 HMAC-SHA256 of
// id.timestamp.body>", one per configured secret, space-separated), and the
// body {"type", "timestamp", "data"}. Delivery is at least once and in order
// per endpoint: the cursor moves past an event only once the endpoint
// answered 2xx.
//
// Replicas sharing a Store that is a vault.Fencer (etcd) deliver each
// endpoint from one replica at a time: a worker delivers only while it
// holds the endpoint's fence (a lock bound to its lease), reads the cursor
// from the Store when it takes the fence, checks before each attempt that
// the fence outlives the attempt, and moves the cursor in a write fenced by
// it. A replica that dies or is cut off loses the fence within a lease TTL;
// another takes it and goes on from the stored cursor (the event in flight
// may be delivered again: at least once).

// An Outbox is what delivery reads of a vault; *vault.Vault is one.
type Outbox interface {
	// LastEventSequence returns the sequence of the newest event and a
	// channel closed when a newer one is written.
	LastEventSequence() (uint64, <-chan struct{})
	// Events returns up to limit events after sequence after, in order.
	Events(ctx context.Context, after uint64, limit int) ([]vault.Event, error)
	// SweepEvents deletes the events older than before with a sequence of
	// at most upTo, and returns how many.
	SweepEvents(ctx context.Context, before time.Time, upTo uint64) (int, error)
}

// webhookMetaPrefix holds each endpoint's cursor and disabled marker.
const webhookMetaPrefix = "meta/webhook/"

// A Secret is a Standard Webhooks signing secret. It never prints:
// String, Format, LogValue and MarshalText all say "[redacted]".
type Secret struct{ key []byte }

// ParseSecret parses "whsec_" followed by the standard base64 of 24
// to 64 random bytes, as the Standard Webhooks specification gives secrets
// out. Errors never repeat the secret.
func ParseSecret(s string) (Secret, error) {
	b64, ok := strings.CutPrefix(strings.TrimSpace(s), "whsec_")
	if !ok {
		return Secret{}, errors.New("webhook: webhook secret must start with whsec_")
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return Secret{}, errors.New("webhook: webhook secret is not whsec_ followed by standard base64")
	}
	if len(key) < 24 || len(key) > 64 {
		return Secret{}, fmt.Errorf("webhook: webhook secret holds %d bytes; want 24 to 64", len(key))
	}
	return Secret{key: key}, nil
}

const secretRedacted = "[redacted]"

func (Secret) String() string               { return secretRedacted }
func (Secret) Format(f fmt.State, _ rune)   { io.WriteString(f, secretRedacted) }
func (Secret) LogValue() slog.Value         { return slog.StringValue(secretRedacted) }
func (Secret) MarshalText() ([]byte, error) { return []byte(secretRedacted), nil }

// sign returns the Standard Webhooks signature ("v1,<base64>") of one
// request sent at ts, made by the specification's own library (which the
// client's verifier uses too).
func (s Secret) sign(id string, ts time.Time, body []byte) (string, error) {
	wh, err := standardwebhooks.NewWebhookRaw(s.key)
	if err != nil {
		return "", err
	}
	return wh.Sign(id, ts, body)
}

// A Endpoint is one receiver of events.
type Endpoint struct {
	// Name identifies the endpoint in logs, metrics and the Store; it keeps
	// the endpoint's cursor, so renaming an endpoint starts it afresh.
	Name string
	// URL is an absolute http(s) URL without user info. It is never logged.
	URL string
	// Secrets sign every request, each giving one signature: list the new
	// secret beside the old one while receivers move over.
	Secrets []Secret
	// AllowPrivate permits loopback, private, link-local and other
	// non-public addresses. Without it they are refused when dialling,
	// whatever the URL's host resolves to.
	AllowPrivate bool
	// EventTypes, if not empty, are the only event types delivered.
	EventTypes []string
}

// Config configures a Deliverer. Everything but Endpoints has a default.
type Config struct {
	Endpoints []Endpoint
	// Retention is how long delivered events stay in the outbox (for
	// WatchEvents replays); default 168h. Events an enabled endpoint has
	// not yet received are kept regardless.
	Retention time.Duration
	// SweepEvery is how often events past their retention are deleted;
	// default 10 minutes.
	SweepEvery time.Duration
	// DisableAfter: an endpoint that has failed every attempt at one event
	// for this long is disabled, like one that answered 410; default 72h.
	DisableAfter time.Duration
	// BaseBackoff and MaxBackoff shape the retry delay after the n-th
	// failed attempt: full jitter over min(BaseBackoff*2^(n-1), MaxBackoff),
	// and never less than the endpoint's Retry-After. Defaults 1s and 10m.
	BaseBackoff, MaxBackoff time.Duration
	// Timeout bounds one attempt, response headers included; default 15s.
	Timeout time.Duration
	Logger  *slog.Logger
	// Now is the clock of signatures and retention; default time.Now.
	Now func() time.Time
	// Jitter returns a number in [0, 1); default math/rand/v2.Float64.
	Jitter func() float64
	// Wait waits d or until ctx ends; default a timer. Tests replace it.
	Wait func(ctx context.Context, d time.Duration) error
}

// maxRetryAfter caps how long an endpoint's Retry-After may hold its
// queue at once.
const maxRetryAfter = 6 * time.Hour

// Delivery outcomes, as counted by Stats.
const (
	// Delivered: the endpoint answered 2xx.
	Delivered = "delivered"
	// Failed: the endpoint answered anything else but 410
	// (redirects included: they are not followed). Retried.
	Failed = "failed"
	// NetworkError: no answer (refused, reset, timeout, TLS).
	// Retried.
	NetworkError = "network_error"
	// Blocked: the endpoint's address is not public and the
	// endpoint does not allow private addresses. Retried: DNS may change.
	Blocked = "blocked"
	// Gone: the endpoint answered 410 Gone and is now disabled.
	Gone = "gone"
)

// Outcomes lists the delivery outcomes.
var Outcomes = [...]string{Delivered, Failed, NetworkError, Blocked, Gone}

// Stats describes one endpoint for metrics. It holds no URL.
type Stats struct {
	Name string
	// Attempts counts delivery attempts by outcome (Outcomes).
	Attempts map[string]uint64
	// Backlog is how many events were written after the endpoint's cursor:
	// the events it has yet to receive (or, disabled, will not). Zero on a
	// replica sharing the endpoint that does not deliver it now.
	Backlog  uint64
	Disabled bool
	// Delivering: this replica delivers to the endpoint now (replicas
	// sharing a Store take turns; one replica always does).
	Delivering bool
}

// A Deliverer delivers the vault's events to the configured endpoints and
// sweeps the outbox. Create it with New and run it with Run.
type Deliverer struct {
	ob      Outbox
	store   vault.Store
	cfg     Config
	log     *slog.Logger
	workers []*hookWorker
}

// endpointName is compiled on first use: its bounded repetition makes a
// large program, which a start without webhooks never needs.
var endpointName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`) })

// New checks cfg, loads each endpoint's cursor and disabled marker from st
// (the Store of the vault ob is), and returns a Deliverer of ob's events. A
// new endpoint's cursor is set to the current end of the outbox here: it
// gets the events written from now on. New refuses an endpoint without secrets, with a malformed
// URL or name, with an unknown event type, or whose URL names a non-public
// IP address it does not allow.
func New(ctx context.Context, ob Outbox, st vault.Store, cfg Config) (*Deliverer, error) {
	if ob == nil || st == nil {
		return nil, errors.New("webhook: New needs an Outbox and a Store")
	}
	cfg.Retention = cmp.Or(cfg.Retention, 168*time.Hour)
	cfg.SweepEvery = cmp.Or(cfg.SweepEvery, 10*time.Minute)
	cfg.DisableAfter = cmp.Or(cfg.DisableAfter, 72*time.Hour)
	cfg.BaseBackoff = cmp.Or(cfg.BaseBackoff, time.Second)
	cfg.MaxBackoff = cmp.Or(cfg.MaxBackoff, 10*time.Minute)
	cfg.Timeout = cmp.Or(cfg.Timeout, 15*time.Second)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Jitter == nil {
		cfg.Jitter = mrand.Float64
	}
	if cfg.Wait == nil {
		cfg.Wait = wait
	}
	h := &Deliverer{ob: ob, store: st, cfg: cfg, log: cfg.Logger}
	names := map[string]bool{}
	for _, ep := range cfg.Endpoints {
		if !endpointName().MatchString(ep.Name) {
			return nil, fmt.Errorf("webhook: webhook name %q: want 1 to 63 of a-z, 0-9, _ . - (starting with a letter or digit)", ep.Name)
		}
		if names[ep.Name] {
			return nil, fmt.Errorf("webhook: two webhooks named %q", ep.Name)
		}
		names[ep.Name] = true
		if err := checkWebhookURL(ep.URL, ep.AllowPrivate); err != nil {
			return nil, fmt.Errorf("webhook: webhook %q: %w", ep.Name, err)
		}
		if len(ep.Secrets) == 0 {
			return nil, fmt.Errorf("webhook: webhook %q has no secret", ep.Name)
		}
		for _, s := range ep.Secrets {
			if len(s.key) == 0 {
				return nil, fmt.Errorf("webhook: webhook %q has an empty secret", ep.Name)
			}
		}
		var types map[string]bool
		for _, t := range ep.EventTypes {
			if !slices.Contains(vault.EventTypes, t) {
				return nil, fmt.Errorf("webhook: webhook %q: unknown event type %q", ep.Name, t)
			}
			if types == nil {
				types = map[string]bool{}
			}
			types[t] = true
		}
		h.workers = append(h.workers, &hookWorker{h: h, ep: ep, types: types, client: webhookClient(ep.AllowPrivate, cfg.Timeout)})
	}
	for _, w := range h.workers {
		if err := w.load(ctx); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// checkWebhookURL refuses what is not an absolute http(s) URL without user
// info, and IP literals that are not public unless allowed. Host names are
// checked when dialling. Its errors never repeat the URL (it may carry a
// token of the receiver's).
func checkWebhookURL(raw string, allowPrivate bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("url does not parse")
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.Fragment != "" {
		return errors.New("url must be an absolute http(s) URL without user info or fragment")
	}
	if ip, err := netip.ParseAddr(strings.Trim(u.Hostname(), "[]")); err == nil && !allowPrivate && !publicAddr(ip) {
		return fmt.Errorf("url names the non-public address %s; set allow_private to deliver there", ip)
	}
	return nil
}

// nonPublic are the IPv4 and IPv6 ranges, beyond those netip classifies
// (loopback, private, link-local, multicast, unspecified), that a webhook
// must not reach: shared, reserved, documentation and benchmark ranges,
// Teredo and discard.
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("100::/64"),
	netip.MustParsePrefix("2001::/32"),
	netip.MustParsePrefix("2001:db8::/32"),
	netip.MustParsePrefix("fec0::/10"),
	netip.MustParsePrefix("64:ff9b:1::/48"),
}

var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// publicAddr reports whether ip is a public unicast address. IPv4 addresses
// embedded in IPv6 (mapped, NAT64, 6to4) are judged as the IPv4 address.
func publicAddr(ip netip.Addr) bool {
	ip = ip.WithZone("").Unmap()
	if ip.Is6() {
		b := ip.As16()
		switch {
		case nat64.Contains(ip):
			return publicAddr(netip.AddrFrom4([4]byte(b[12:16])))
		case sixToFour.Contains(ip):
			return publicAddr(netip.AddrFrom4([4]byte(b[2:6])))
		}
	}
	if !ip.IsValid() || ip.IsLoopback() || ip.IsPrivate() || ip.IsUnspecified() ||
		ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsInterfaceLocalMulticast() || ip.IsMulticast() {
		return false
	}
	for _, p := range nonPublic {
		if p.Contains(ip) {
			return false
		}
	}
	return ip != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// errBlocked is the dial error for a non-public address.
type errBlocked struct{ addr string }

func (e *errBlocked) Error() string {
	return "webhook address " + e.addr + " is not public; set allow_private to deliver there"
}

// dialControl runs after name resolution, on the very address about to be
// connected to, so a name that resolves (or re-resolves, DNS rebinding) to
// a non-public address is refused however the URL spelled it.
func dialControl(allowPrivate bool) func(network, address string, _ syscall.RawConn) error {
	return func(network, address string, _ syscall.RawConn) error {
		if network != "tcp4" && network != "tcp6" {
			return &errBlocked{addr: network + " " + address}
		}
		host, _, err := net.SplitHostPort(address)
		if err != nil {
			return &errBlocked{addr: address}
		}
		ip, err := netip.ParseAddr(host)
		if err != nil {
			return &errBlocked{addr: address}
		}
		if !allowPrivate && !publicAddr(ip) {
			return &errBlocked{addr: ip.String()}
		}
		return nil
	}
}

// webhookClient is an HTTP client that follows no redirect, uses no proxy
// (a proxy would resolve the name itself, past dialControl) and dials only
// addresses dialControl allows.
func webhookClient(allowPrivate bool, timeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second, Control: dialControl(allowPrivate)}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           d.DialContext,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: timeout,
			MaxIdleConnsPerHost:   2,
			IdleConnTimeout:       90 * time.Second,
			ForceAttemptHTTP2:     true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       timeout,
	}
}

func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run delivers events until ctx ends, and sweeps the outbox every
// SweepEvery. It returns when every worker has stopped. Call it once.
func (h *Deliverer) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, w := range h.workers {
		wg.Go(func() { w.run(ctx) })
	}
	wg.Go(func() { h.sweepLoop(ctx) })
	wg.Wait()
}

func (h *Deliverer) sweepLoop(ctx context.Context) {
	t := time.NewTicker(h.cfg.SweepEvery)
	defer t.Stop()
	for {
		if n, err := h.Sweep(ctx); err != nil && ctx.Err() == nil {
			h.log.LogAttrs(ctx, slog.LevelWarn, "event retention sweep", slog.String("err", err.Error()))
		} else if n > 0 {
			h.log.LogAttrs(ctx, slog.LevelDebug, "event retention sweep", slog.Int("deleted", n))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sweep deletes the events older than the retention that every enabled
// endpoint has received, and returns how many.
func (h *Deliverer) Sweep(ctx context.Context) (int, error) {
	upTo := uint64(math.MaxUint64)
	for _, w := range h.workers {
		if !w.disabled.Load() {
			upTo = min(upTo, w.cursor.Load())
		}
	}
	return h.ob.SweepEvents(ctx, h.cfg.Now().Add(-h.cfg.Retention), upTo)
}

// Stats describes each endpoint, in configuration order.
func (h *Deliverer) Stats() []Stats {
	last, _ := h.ob.LastEventSequence()
	out := make([]Stats, 0, len(h.workers))
	for _, w := range h.workers {
		s := Stats{Name: w.ep.Name, Attempts: make(map[string]uint64, len(Outcomes)), Disabled: w.disabled.Load(), Delivering: w.holding.Load()}
		for i, o := range Outcomes {
			s.Attempts[o] = w.attempts[i].Load()
		}
		// A replica that does not deliver the endpoint now (replicas take
		// turns) reports no backlog: its cursor is the one it last saw,
		// and summing over replicas gives the endpoint's.
		_, shared := h.store.(vault.Fencer)
		if c := w.cursor.Load(); c < last && (s.Delivering || s.Disabled || !shared) {
			s.Backlog = last - c
		}
		out = append(out, s)
	}
	return out
}

// hookWorker delivers to one endpoint.
type hookWorker struct {
	h        *Deliverer
	ep       Endpoint
	types    map[string]bool // nil: every type
	client   *http.Client
	cursor   atomic.Uint64 // sequence of the last event handled
	disabled atomic.Bool
	attempts [len(Outcomes)]atomic.Uint64
	// fence is held while this replica delivers to the endpoint (replicas
	// sharing a Fencer); only the worker's goroutine uses it.
	fence vault.Fence
	// Holding reports whether this replica delivers to the endpoint now.
	holding atomic.Bool
}

// fenceCheckMargin is added to an attempt's timeout when checking that the
// endpoint's fence outlives it.
const fenceCheckMargin = time.Second

// fenceName is the name of the endpoint's delivery fence.
func (w *hookWorker) fenceName() string { return "webhook/" + w.ep.Name }

func (w *hookWorker) cursorKey() string   { return webhookMetaPrefix + w.ep.Name + "/cursor" }
func (w *hookWorker) disabledKey() string { return webhookMetaPrefix + w.ep.Name + "/disabled" }

// disabledMarker is stored when an endpoint is disabled. URLHash tells a
// changed URL (which re-enables the endpoint) from the one that failed.
type disabledMarker struct {
	At      time.Time `json:"at"`
	Reason  string    `json:"reason"`
	URLHash string    `json:"url_sha256"`
}

func (w *hookWorker) urlHash() string {
	sum := sha256.Sum256([]byte(w.ep.URL))
	return hex.EncodeToString(sum[:])
}

// load reads the endpoint's cursor and disabled marker. A new endpoint
// starts at the current end of the outbox: it receives the events written
// from now on, not the retained history.
func (w *hookWorker) load(ctx context.Context) error {
	st := w.h.store
	val, _, err := st.Get(ctx, w.cursorKey())
	switch {
	case errors.Is(err, vault.ErrNotFound):
		last, _ := w.h.ob.LastEventSequence()
		_, err := st.Apply(ctx, vault.Op{Key: w.cursorKey(), Value: []byte(strconv.FormatUint(last, 10)), IfRev: 0})
		if errors.Is(err, vault.ErrConflict) {
			// Another replica starting at the same time created it.
			return w.load(ctx)
		}
		if err != nil {
			return fmt.Errorf("webhook: webhook %q: store cursor: %w", w.ep.Name, err)
		}
		w.cursor.Store(last)
	case err != nil:
		return fmt.Errorf("webhook: webhook %q: read cursor: %w", w.ep.Name, err)
	default:
		c, err := strconv.ParseUint(string(val), 10, 64)
		if err != nil {
			return fmt.Errorf("webhook: webhook %q: bad cursor: %w", w.ep.Name, err)
		}
		w.cursor.Store(c)
	}
	val, rev, err := st.Get(ctx, w.disabledKey())
	switch {
	case errors.Is(err, vault.ErrNotFound):
	case err != nil:
		return fmt.Errorf("webhook: webhook %q: read disabled marker: %w", w.ep.Name, err)
	default:
		var m disabledMarker
		if json.Unmarshal(val, &m) == nil && m.URLHash == w.urlHash() {
			w.disabled.Store(true)
			w.h.log.LogAttrs(ctx, slog.LevelWarn, "webhook endpoint is disabled; give it a new URL or name to enable it again",
				slog.String("webhook", w.ep.Name), slog.String("reason", m.Reason), slog.Time("since", m.At))
			return nil
		}
		if _, err := st.Apply(ctx, vault.Op{Key: w.disabledKey(), Delete: true, IfRev: int64(rev)}); err != nil {
			return fmt.Errorf("webhook: webhook %q: clear disabled marker: %w", w.ep.Name, err)
		}
		w.h.log.LogAttrs(ctx, slog.LevelInfo, "webhook endpoint enabled again: its URL changed", slog.String("webhook", w.ep.Name))
	}
	return nil
}

// storeCursor persists the cursor, fenced by the endpoint's fence if held.
// A failure is logged, not fatal: the events after the stored cursor are
// delivered again after a restart, which at-least-once allows. It returns
// false only if the fence is lost (another replica may deliver now).
func (w *hookWorker) storeCursor(ctx context.Context) bool {
	c := w.cursor.Load()
	ops := []vault.Op{{Key: w.cursorKey(), Value: []byte(strconv.FormatUint(c, 10)), IfRev: vault.AnyRev}}
	if w.fence != nil {
		ops = append(ops, w.fence.Op())
	}
	_, err := w.h.store.Apply(ctx, ops...)
	if errors.Is(err, vault.ErrConflict) && w.fence != nil {
		w.h.log.LogAttrs(ctx, slog.LevelWarn, "webhook delivery fence lost; cursor not stored", slog.String("webhook", w.ep.Name), slog.Uint64("cursor", c))
		return false
	}
	if err != nil && ctx.Err() == nil {
		w.h.log.LogAttrs(ctx, slog.LevelWarn, "webhook cursor not stored", slog.String("webhook", w.ep.Name), slog.String("err", err.Error()))
	}
	return true
}

// run delivers events in order until ctx ends or the endpoint is disabled.
// With a Store shared by replicas (a Fencer) it delivers only while it
// holds the endpoint's fence, waiting for it otherwise.
func (w *hookWorker) run(ctx context.Context) {
	defer w.client.CloseIdleConnections()
	f, ok := w.h.store.(vault.Fencer)
	if !ok {
		w.holding.Store(true)
		w.deliverAll(ctx)
		w.holding.Store(false)
		return
	}
	fails := 0
	for !w.disabled.Load() && ctx.Err() == nil {
		fence, err := f.Fence(ctx, w.fenceName())
		if err == nil {
			// Another replica delivered before: go on from its cursor, and
			// stop if it disabled the endpoint.
			if err = w.load(ctx); err != nil {
				fence.Release()
			}
		}
		if err != nil {
			fails++
			if ctx.Err() == nil {
				w.h.log.LogAttrs(ctx, slog.LevelWarn, "webhook: cannot take the endpoint's delivery fence", slog.String("webhook", w.ep.Name), slog.String("err", err.Error()))
			}
			_ = w.h.cfg.Wait(ctx, webhookRetryDelay(fails, w.h.cfg.BaseBackoff, w.h.cfg.MaxBackoff, 0, w.h.cfg.Jitter()))
			continue
		}
		fails = 0
		w.fence = fence
		w.holding.Store(true)
		w.h.log.LogAttrs(ctx, slog.LevelInfo, "webhook: this replica delivers to the endpoint", slog.String("webhook", w.ep.Name), slog.Uint64("cursor", w.cursor.Load()))
		w.deliverAll(ctx)
		w.holding.Store(false)
		w.fence = nil
		fence.Release()
	}
}

// fenceHolds returns nil if this replica may make one more attempt: it
// holds no fence (one replica), or its fence outlives the attempt.
func (w *hookWorker) fenceHolds(ctx context.Context) error {
	if w.fence == nil {
		return nil
	}
	return w.fence.Check(ctx, w.h.cfg.Timeout+fenceCheckMargin)
}

// deliverAll delivers events in order until ctx ends, the endpoint is
// disabled, or the fence (if held) is lost.
func (w *hookWorker) deliverAll(ctx context.Context) {
	fails := 0 // consecutive outbox read failures
	for !w.disabled.Load() && ctx.Err() == nil {
		last, wake := w.h.ob.LastEventSequence()
		if w.cursor.Load() >= last {
			select {
			case <-wake:
			case <-ctx.Done():
			}
			continue
		}
		evs, err := w.h.ob.Events(ctx, w.cursor.Load(), 100)
		if err != nil {
			fails++
			if ctx.Err() == nil {
				w.h.log.LogAttrs(ctx, slog.LevelError, "webhook: read outbox", slog.String("webhook", w.ep.Name), slog.String("err", err.Error()))
			}
			_ = w.h.cfg.Wait(ctx, webhookRetryDelay(fails, w.h.cfg.BaseBackoff, w.h.cfg.MaxBackoff, 0, w.h.cfg.Jitter()))
			continue
		}
		fails = 0
		if len(evs) == 0 {
			// Only possible if the cursor is past every retained event: the
			// newest is never swept.
			w.cursor.Store(last)
			if !w.storeCursor(ctx) {
				return
			}
			continue
		}
		skipped := false
		for _, ev := range evs {
			if w.types != nil && !w.types[ev.Type] {
				w.cursor.Store(ev.Sequence)
				skipped = true
				continue
			}
			if !w.deliver(ctx, ev) {
				if skipped {
					w.storeCursor(context.WithoutCancel(ctx))
				}
				return
			}
			w.cursor.Store(ev.Sequence)
			if !w.storeCursor(ctx) {
				return
			}
			skipped = false
		}
		if skipped && !w.storeCursor(ctx) {
			return
		}
	}
}

// deliver sends ev until the endpoint takes it (true), or ctx ends, the
// endpoint is disabled or the fence is lost (false).
func (w *hookWorker) deliver(ctx context.Context, ev vault.Event) bool {
	body, err := webhookBody(ev)
	if err != nil {
		// Cannot happen for a decoded event; never block the queue on it.
		w.h.log.LogAttrs(ctx, slog.LevelError, "webhook: encode event", slog.String("event_id", ev.ID), slog.String("err", err.Error()))
		return true
	}
	var failingSince time.Time
	for n := 1; ; n++ {
		if err := w.fenceHolds(ctx); err != nil {
			if ctx.Err() == nil {
				w.h.log.LogAttrs(ctx, slog.LevelWarn, "webhook delivery fence lost; another replica delivers",
					slog.String("webhook", w.ep.Name), slog.Uint64("sequence", ev.Sequence), slog.String("err", err.Error()))
			}
			return false
		}
		outcome, code, retryAfter, err := w.attempt(ctx, ev, body)
		if ctx.Err() != nil {
			return false
		}
		w.attempts[slices.Index(Outcomes[:], outcome)].Add(1)
		switch outcome {
		case Delivered:
			return true
		case Gone:
			w.disable(ctx, "gone")
			return false
		}
		now := w.h.cfg.Now()
		if failingSince.IsZero() {
			failingSince = now
		}
		if now.Sub(failingSince) >= w.h.cfg.DisableAfter {
			w.disable(ctx, "failing")
			return false
		}
		d := webhookRetryDelay(n, w.h.cfg.BaseBackoff, w.h.cfg.MaxBackoff, retryAfter, w.h.cfg.Jitter())
		attrs := []slog.Attr{
			slog.String("webhook", w.ep.Name), slog.String("event_id", ev.ID), slog.Uint64("sequence", ev.Sequence),
			slog.Int("attempt", n), slog.String("outcome", outcome), slog.Duration("retry_in", d),
		}
		if code != 0 {
			attrs = append(attrs, slog.Int("status", code))
		}
		if err != nil {
			attrs = append(attrs, slog.String("err", err.Error()))
		}
		w.h.log.LogAttrs(ctx, slog.LevelWarn, "webhook delivery failed", attrs...)
		if w.h.cfg.Wait(ctx, d) != nil {
			return false
		}
	}
}

// disable stops the endpoint and records why, so it stays disabled after
// a restart.
func (w *hookWorker) disable(ctx context.Context, reason string) {
	w.disabled.Store(true)
	m, _ := json.Marshal(disabledMarker{At: w.h.cfg.Now(), Reason: reason, URLHash: w.urlHash()})
	ops := []vault.Op{{Key: w.disabledKey(), Value: m, IfRev: vault.AnyRev}}
	if w.fence != nil {
		ops = append(ops, w.fence.Op())
	}
	if _, err := w.h.store.Apply(context.WithoutCancel(ctx), ops...); err != nil {
		w.h.log.LogAttrs(ctx, slog.LevelError, "webhook disabled marker not stored", slog.String("webhook", w.ep.Name), slog.String("err", err.Error()))
	}
	msg := "webhook endpoint answered 410 Gone: disabled"
	if reason != "gone" {
		msg = "webhook endpoint failed for too long: disabled"
	}
	w.h.log.LogAttrs(ctx, slog.LevelError, msg, slog.String("webhook", w.ep.Name), slog.String("reason", reason),
		slog.Uint64("cursor", w.cursor.Load()))
}

// attempt makes one delivery request. err, if set, is safe to log: it
// names no URL.
func (w *hookWorker) attempt(ctx context.Context, ev vault.Event, body []byte) (outcome string, code int, retryAfter time.Duration, err error) {
	now := time.Unix(w.h.cfg.Now().Unix(), 0)
	ts := strconv.FormatInt(now.Unix(), 10)
	sigs := make([]string, len(w.ep.Secrets))
	for i, s := range w.ep.Secrets {
		if sigs[i], err = s.sign(ev.ID, now, body); err != nil {
			return NetworkError, 0, 0, errors.New("cannot sign the request")
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.ep.URL, bytes.NewReader(body))
	if err != nil {
		return NetworkError, 0, 0, errors.New("cannot build the request")
	}
	// Lower case, as the specification spells them; Go sends them as set.
	req.Header["webhook-id"] = []string{ev.ID}
	req.Header["webhook-timestamp"] = []string{ts}
	req.Header["webhook-signature"] = []string{strings.Join(sigs, " ")}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "tokenvault-webhooks/1")
	resp, err := w.client.Do(req)
	if err != nil {
		var b *errBlocked
		if errors.As(err, &b) {
			return Blocked, 0, 0, b
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the URL
		}
		return NetworkError, 0, 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return Delivered, resp.StatusCode, 0, nil
	case resp.StatusCode == http.StatusGone:
		return Gone, resp.StatusCode, 0, nil
	}
	return Failed, resp.StatusCode, parseRetryAfter(resp.Header.Get("Retry-After"), w.h.cfg.Now()), nil
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date,
// capped at maxRetryAfter. Anything else, or a time past, is 0.
func parseRetryAfter(v string, now time.Time) time.Duration {
	return retry.ParseAfter(v, now, maxRetryAfter)
}

// webhookRetryDelay is how long to wait after the n-th failed attempt (n
// >= 1): full jitter (j in [0,1)) over min(base*2^(n-1), limit), and never
// less than retryAfter, itself capped at maxRetryAfter.
func webhookRetryDelay(n int, base, limit, retryAfter time.Duration, j float64) time.Duration {
	d := time.Duration(j * float64(retry.Exponential(n, base, limit)))
	return max(d, min(retryAfter, maxRetryAfter))
}

// The webhook body: {"type", "timestamp", "data"} per Standard Webhooks;
// data is the event with the connection as the API describes it (the
// Connection message's field names), without token material.
type webhookPayload struct {
	Type      string      `json:"type"`
	Timestamp time.Time   `json:"timestamp"`
	Data      webhookData `json:"data"`
}

type webhookData struct {
	EventID            string            `json:"event_id"`
	Type               string            `json:"type"`
	Sequence           uint64            `json:"sequence"`
	ConnectionSequence uint64            `json:"connection_sequence"`
	Time               time.Time         `json:"time"`
	Reason             string            `json:"reason,omitempty"`
	Imported           bool              `json:"imported,omitempty"`
	Connection         webhookConnection `json:"connection"`
}

type webhookConnection struct {
	ConnectionID      string            `json:"connection_id"`
	Owner             string            `json:"owner"`
	Tenant            string            `json:"tenant,omitempty"`
	Provider          string            `json:"provider"`
	Label             string            `json:"label,omitempty"`
	Purpose           string            `json:"purpose,omitempty"`
	Status            vault.Status      `json:"status"`
	StatusReason      string            `json:"status_reason,omitempty"`
	RequestedScopes   []string          `json:"requested_scopes,omitempty"`
	GrantedScopes     []string          `json:"granted_scopes,omitempty"`
	MissingScopes     []string          `json:"missing_scopes,omitempty"`
	Account           string            `json:"account,omitempty"`
	Metadata          map[string]string `json:"metadata,omitempty"`
	CreateTime        time.Time         `json:"create_time,omitzero"`
	UpdateTime        time.Time         `json:"update_time,omitzero"`
	LastRefreshTime   time.Time         `json:"last_refresh_time,omitzero"`
	LastValidatedTime time.Time         `json:"last_validated_time,omitzero"`
	TokenExpireTime   time.Time         `json:"token_expire_time,omitzero"`
	Generation        uint64            `json:"generation"`
	Credentials       []string          `json:"credentials,omitempty"`
	AppMetadata       map[string]string `json:"app_metadata,omitempty"`
	CreatedBy         string            `json:"created_by,omitempty"`
	Imported          bool              `json:"imported,omitempty"`
}

func webhookBody(ev vault.Event) ([]byte, error) {
	c := ev.Connection
	if c == nil {
		return nil, errors.New("event has no connection")
	}
	return json.Marshal(webhookPayload{
		Type: ev.Type, Timestamp: ev.Time.UTC(),
		Data: webhookData{
			EventID: ev.ID, Type: ev.Type, Sequence: ev.Sequence, ConnectionSequence: ev.ConnectionSequence,
			Time: ev.Time.UTC(), Reason: ev.Reason, Imported: ev.Imported,
			Connection: webhookConnection{
				ConnectionID: c.ID, Owner: c.Owner, Tenant: c.Tenant, Provider: c.Provider, Label: c.Label,
				Purpose: c.Purpose, Status: c.Status, StatusReason: c.StatusReason,
				RequestedScopes: c.RequestedScopes, GrantedScopes: c.Grant.Scopes, MissingScopes: c.MissingScopes(),
				Account: c.Grant.Account, Metadata: maps.Clone(c.Grant.Metadata),
				CreateTime: c.CreatedAt.UTC(), UpdateTime: c.UpdatedAt.UTC(), LastRefreshTime: c.LastRefreshedAt.UTC(),
				LastValidatedTime: c.LastValidatedAt.UTC(), TokenExpireTime: c.Expiry().UTC(),
				Generation: c.Generation, Credentials: c.Credentials(),
				AppMetadata: maps.Clone(c.AppMetadata), CreatedBy: c.CreatedBy, Imported: c.Imported,
			},
		},
	})
}
