package vault

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The event outbox. Every committed change of a connection's state writes
// its events in the same Store.Apply as the record itself (see commit), so a
// change without its event, or an event without its change, cannot be
// stored. Events are sealed like connections (the snapshot holds owner ids,
// not tokens) under eventPrefix + the 20-digit sequence, so a Scan returns
// them in sequence order.
//
// Sequences come from an in-process counter initialised at Open from the
// last stored event: the Store has one writing process (bbolt's file lock).
// Commits that emit events hold the outbox lock across the Apply, so events
// become visible strictly in sequence order and a reader that saw sequence
// n has seen every event before it.

const eventPrefix = "event/"

// Event types.
const (
	// EventCreated: a connect flow stored a new connection.
	EventCreated = "connection.created"
	// EventReconnected: a connect flow granted an existing connection again,
	// keeping its id (typically one that needed re-authorization).
	EventReconnected = "connection.reconnected"
	// EventNeedsReauth: the provider rejected the grant; Reason says why
	// ("invalid_grant", "refresh_interrupted", ...).
	EventNeedsReauth = "connection.needs_reauth"
	// EventRecovered: a connection needing re-authorization became active
	// again without a connect flow (a refresh or a validation succeeded).
	EventRecovered = "connection.recovered"
	// EventRevoked: the connection was revoked; Reason is the caller's.
	EventRevoked = "connection.revoked"
	// EventScopesChanged: the granted scopes of an active connection differ
	// after a reconnect or a refresh.
	EventScopesChanged = "connection.scopes_changed"
)

// EventTypes lists every event type, in the order above.
var EventTypes = []string{EventCreated, EventReconnected, EventNeedsReauth, EventRecovered, EventRevoked, EventScopesChanged, EventDeleted}

// ErrSlowSubscriber is returned by Subscription.Next once the subscriber fell
// so far behind that its buffer overflowed. Events up to the last one Next
// returned were delivered; subscribe again after that sequence.
var ErrSlowSubscriber = errors.New("vault: event subscriber too slow")

// ErrSubscriptionClosed is returned by Subscription.Next after Close.
var ErrSubscriptionClosed = errors.New("vault: event subscription closed")

// An Event is one change of a connection's state. It holds no token
// material.
type Event struct {
	// ID is stable: redeliveries of the event carry the same one.
	ID   string `json:"id"`
	Type string `json:"type"`
	// Sequence is the event's position in the outbox: one more than the
	// previous event's.
	Sequence uint64 `json:"seq"`
	// ConnectionSequence is the event's position among its connection's
	// events: one more than that connection's previous event's.
	ConnectionSequence uint64    `json:"conn_seq"`
	Time               time.Time `json:"time"`
	// Reason says why, e.g. "invalid_grant" for EventNeedsReauth.
	Reason string `json:"reason,omitempty"`
	// Connection is the record after the change, redacted (see
	// Connection.Redacted), without its transition history.
	Connection *Connection `json:"connection"`
	// Imported is set on the EventCreated of a connection brought in by
	// Import.
	Imported bool `json:"imported,omitempty"`
}

// changeEvents returns the events of a change of a connection record from
// old (nil: a new record) to next, in the order they are to be stored, and
// counts them in next.EventSeq. Time and Connection are set; ID and Sequence
// are assigned when they are written.
//
// A change emits:
//   - created for a new record;
//   - reconnected when a connect flow granted an existing record again
//     (Connects increased);
//   - needs_reauth, revoked or recovered for a status change (recovered:
//     needs_reauth -> active without a connect flow);
//   - scopes_changed, after any of the above, when an active record's
//     granted scopes differ from before.
//
// Writes that change none of these (a refresh with the same scopes, the
// in-flight marker, last-used bookkeeping) emit nothing.
func changeEvents(old, next *Connection, now time.Time) []Event {
	type ev struct{ typ, reason string }
	var evs []ev
	switch {
	case old == nil:
		evs = append(evs, ev{EventCreated, ""})
	case next.Connects > old.Connects:
		evs = append(evs, ev{EventReconnected, ""})
	case next.Status != old.Status:
		switch next.Status {
		case StatusNeedsReauth:
			evs = append(evs, ev{EventNeedsReauth, next.StatusReason})
		case StatusRevoked:
			evs = append(evs, ev{EventRevoked, next.StatusReason})
		case StatusActive:
			if old.Status == StatusNeedsReauth {
				evs = append(evs, ev{EventRecovered, ""})
			}
		}
	case next.Status == StatusNeedsReauth && next.StatusReason != old.StatusReason:
		// Still needing re-authorization, for another reason: say so.
		evs = append(evs, ev{EventNeedsReauth, next.StatusReason})
	}
	if old != nil && next.Status == StatusActive && !slices.Equal(old.Grant.Scopes, next.Grant.Scopes) {
		evs = append(evs, ev{EventScopesChanged, ""})
	}
	if len(evs) == 0 {
		return nil
	}
	out := make([]Event, len(evs))
	for i, e := range evs {
		next.EventSeq++
		out[i] = Event{Type: e.typ, Reason: e.reason, ConnectionSequence: next.EventSeq, Time: now}
	}
	snap := next.eventSnapshot()
	for i := range out {
		out[i].Connection = snap
	}
	return out
}

// eventSnapshot is c as an event shows it: redacted, without history or
// refresh bookkeeping.
func (c *Connection) eventSnapshot() *Connection {
	s := c.Redacted()
	s.Transitions, s.InFlight = nil, nil
	for i := range s.Grant.Tokens {
		s.Grant.Tokens[i].RefreshExpiry = time.Time{}
	}
	return s
}

// eventKey is the Store key of the event with sequence seq. Twenty digits
// hold any uint64, so keys sort in sequence order.
func eventKey(seq uint64) string {
	return fmt.Sprintf("%s%020d", eventPrefix, seq)
}

func eventSeqOf(key string) (uint64, error) {
	return strconv.ParseUint(strings.TrimPrefix(key, eventPrefix), 10, 64)
}

// outbox is the Vault's in-process view of the event log: the last
// sequence written, and who waits for the next events.
type outbox struct {
	mu   sync.Mutex
	last uint64        // sequence of the last event written
	wake chan struct{} // closed, and replaced, when events are written
	subs map[*Subscription]struct{}
}

// openOutbox sets the sequence counter from the last stored event. Called by
// Open before the Vault is shared.
func (v *Vault) openOutbox(ctx context.Context) error {
	var last string
	err := v.store.Scan(ctx, eventPrefix, "", func(key string, _ []byte, _ uint64) (bool, error) {
		last = key
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("vault: scan events: %w", err)
	}
	v.events.wake = make(chan struct{})
	v.events.subs = map[*Subscription]struct{}{}
	if last == "" {
		return nil
	}
	seq, err := eventSeqOf(last)
	if err != nil {
		return fmt.Errorf("vault: event key %q: %w", last, err)
	}
	v.events.last = seq
	return nil
}

// applyWithEvents applies ops and evs, sealed and numbered, in one
// Store.Apply; then wakes those waiting for events. With no events it is a
// plain Apply. On failure nothing is written and no sequence is used up.
func (v *Vault) applyWithEvents(ctx context.Context, evs []Event, ops []Op) ([]uint64, error) {
	if len(evs) == 0 {
		return v.store.Apply(ctx, ops...)
	}
	o := &v.events
	o.mu.Lock()
	defer o.mu.Unlock()
	base := slices.Clip(ops)
	var (
		seq  uint64
		revs []uint64
		err  error
	)
	for attempt := 0; ; attempt++ {
		seq = o.last
		ops := base
		for i := range evs {
			seq++
			evs[i].Sequence = seq
			evs[i].ID = "evt_" + strings.ToLower(rand.Text())
			key := eventKey(seq)
			plain, err := json.Marshal(&evs[i])
			if err != nil {
				return nil, fmt.Errorf("vault: encode event: %w", err)
			}
			sealed, err := v.kr.Seal(key, plain)
			if err != nil {
				return nil, fmt.Errorf("vault: seal event: %w", err)
			}
			ops = append(ops, Op{Key: key, Value: sealed, IfRev: 0})
		}
		revs, err = v.store.Apply(ctx, ops...)
		// Sharing the Store, another replica may have taken the next
		// sequences: catch up with them and number these after them, so
		// that every replica's events are in one order.
		if errors.Is(err, ErrConflict) && v.shared && attempt < 5 {
			if moved, cerr := v.catchUpEventsLocked(ctx); cerr == nil && moved {
				continue
			}
		}
		break
	}
	if err != nil {
		return nil, err
	}
	o.last = seq
	close(o.wake)
	o.wake = make(chan struct{})
	for s := range o.subs {
		s.offer(evs)
	}
	return revs, nil
}

// LastEventSequence returns the sequence of the last event written (0: none
// yet), and a channel closed when the next events are written. Delivery
// loops read up to the sequence and then wait on the channel.
func (v *Vault) LastEventSequence() (uint64, <-chan struct{}) {
	v.events.mu.Lock()
	defer v.events.mu.Unlock()
	return v.events.last, v.events.wake
}

// maxEventsPage bounds one Events call.
const maxEventsPage = 1000

// Events returns up to limit retained events with sequences after `after`,
// in sequence order (limit <= 0 or above 1000: 1000). Events past their
// retention are gone: the first one returned may be well after after+1.
// The returned events are the caller's.
func (v *Vault) Events(ctx context.Context, after uint64, limit int) ([]Event, error) {
	if limit <= 0 || limit > maxEventsPage {
		limit = maxEventsPage
	}
	type raw struct {
		key string
		val []byte
	}
	var all []raw
	start := ""
	if after > 0 {
		start = eventKey(after)
	}
	err := v.store.Scan(ctx, eventPrefix, start, func(key string, value []byte, _ uint64) (bool, error) {
		all = append(all, raw{key, slices.Clone(value)})
		return len(all) < limit, nil
	})
	if err != nil {
		return nil, fmt.Errorf("vault: read events: %w", err)
	}
	out := make([]Event, 0, len(all))
	for _, r := range all {
		ev, err := v.decodeEvent(r.key, r.val)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}

func (v *Vault) decodeEvent(key string, sealed []byte) (Event, error) {
	plain, err := v.openShared(key, sealed)
	if err != nil {
		return Event{}, fmt.Errorf("vault: open %s: %w", key, err)
	}
	var ev Event
	if err := json.Unmarshal(plain, &ev); err != nil {
		return Event{}, fmt.Errorf("vault: decode %s: %w", key, err)
	}
	return ev, nil
}

// eventSweepBatch is how many events one write of SweepEvents deletes.
const eventSweepBatch = 1000

// SweepEvents deletes events written before `before` whose sequence is at
// most upTo (the oldest cursor of the enabled webhooks: nothing they still
// have to deliver is lost), and returns how many it deleted. The newest
// event is always kept: it carries the sequence across restarts. It deletes
// at most eventSweepBatch events per write and stops after a bounded number of
// writes; the next sweep goes on.
func (v *Vault) SweepEvents(ctx context.Context, before time.Time, upTo uint64) (int, error) {
	last, _ := v.LastEventSequence()
	upTo = min(upTo, last-min(last, 1))
	n := 0
	for range 1000 {
		var (
			keys []string
			done bool
			bad  error
		)
		err := v.store.Scan(ctx, eventPrefix, "", func(key string, value []byte, _ uint64) (bool, error) {
			seq, err := eventSeqOf(key)
			if err != nil || seq > upTo {
				done = true
				return false, nil
			}
			ev, err := v.decodeEvent(key, value)
			if err != nil {
				bad = err
				done = true
				return false, nil
			}
			if !ev.Time.Before(before) {
				done = true
				return false, nil
			}
			keys = append(keys, key)
			return len(keys) < eventSweepBatch, nil
		})
		if err != nil {
			return n, fmt.Errorf("vault: sweep events: %w", err)
		}
		if len(keys) > 0 {
			ops := make([]Op, len(keys))
			for i, k := range keys {
				ops[i] = Op{Key: k, Delete: true, IfRev: AnyRev}
			}
			if _, err := v.store.Apply(ctx, ops...); err != nil {
				return n, fmt.Errorf("vault: sweep events: %w", err)
			}
			n += len(keys)
		}
		if bad != nil {
			return n, fmt.Errorf("vault: sweep events: %w", bad)
		}
		if done || len(keys) < eventSweepBatch {
			return n, nil
		}
	}
	return n, nil
}

// A Subscription reads the event log from a sequence on: the retained
// events first, then new ones as they are written. New events wait in a
// bounded buffer; a subscriber that lets it overflow is cut off with
// ErrSlowSubscriber and can subscribe again from the last sequence it got.
// A Subscription is used by one goroutine; Close may be called from any.
type Subscription struct {
	v      *Vault
	cursor uint64 // sequence of the last event returned (or the start)
	from   uint64 // the last sequence written when subscribing: replayed from the Store
	page   []Event
	live   chan Event // events written after subscribing; closed on overflow or Close
	slow   bool       // live was closed because it overflowed; guarded by v.events.mu
	closed bool       // guarded by v.events.mu
}

// replayPage is how many events Next reads from the Store at once.
const replayPage = 256

// Subscribe returns a Subscription to the events after sequence `after`.
// buffer bounds how many new events may wait for the subscriber (default
// 1024). The caller must Close it.
func (v *Vault) Subscribe(after uint64, buffer int) *Subscription {
	if buffer <= 0 {
		buffer = 1024
	}
	s := &Subscription{v: v, cursor: after, live: make(chan Event, buffer)}
	v.events.mu.Lock()
	s.from = v.events.last
	v.events.subs[s] = struct{}{}
	v.events.mu.Unlock()
	return s
}

// offer queues evs for s without blocking. The caller holds v.events.mu.
func (s *Subscription) offer(evs []Event) {
	for _, ev := range evs {
		select {
		case s.live <- ev:
		default:
			s.slow = true
			s.detach()
			return
		}
	}
}

// detach stops offering events to s. The caller holds v.events.mu.
func (s *Subscription) detach() {
	if s.closed {
		return
	}
	s.closed = true
	delete(s.v.events.subs, s)
	close(s.live)
}

// Close ends the subscription. It is safe to call more than once.
func (s *Subscription) Close() {
	s.v.events.mu.Lock()
	defer s.v.events.mu.Unlock()
	s.detach()
}

// Cursor returns the sequence of the last event Next returned (the start
// sequence before the first).
func (s *Subscription) Cursor() uint64 { return s.cursor }

// Next returns the next event, waiting until one is written or ctx ends.
// It returns ErrSlowSubscriber once the buffer overflowed (after every
// event that was buffered before), ErrSubscriptionClosed after Close, ctx's
// error when ctx ends, and a Store error if the replay fails.
func (s *Subscription) Next(ctx context.Context) (Event, error) {
	for {
		if len(s.page) > 0 {
			ev := s.page[0]
			s.page = s.page[1:]
			s.cursor = ev.Sequence
			return ev, nil
		}
		if s.cursor < s.from {
			evs, err := s.v.Events(ctx, s.cursor, replayPage)
			if err != nil {
				return Event{}, err
			}
			i := slices.IndexFunc(evs, func(ev Event) bool { return ev.Sequence > s.from })
			if i >= 0 {
				evs = evs[:i]
			}
			if len(evs) == 0 {
				s.cursor = s.from // the rest is beyond retention; go live
				continue
			}
			s.page = evs
			continue
		}
		select {
		case ev, ok := <-s.live:
			if !ok {
				s.v.events.mu.Lock()
				slow := s.slow
				s.v.events.mu.Unlock()
				if slow {
					return Event{}, ErrSlowSubscriber
				}
				return Event{}, ErrSubscriptionClosed
			}
			if ev.Sequence <= s.cursor {
				continue
			}
			s.cursor = ev.Sequence
			return ev, nil
		case <-ctx.Done():
			return Event{}, ctx.Err()
		}
	}
}
