package vault

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// auditPrefix is where audit records live in the Store. A record's key is
// auditPrefix + its id, and ids sort newest first (see auditID), so listing
// the newest records is a forward scan from the start of the prefix and the
// records past their retention are one contiguous range at its end.
const auditPrefix = "audit/"

// An AuditRecord is one audited call: who, what, on which connection, and
// how it ended. It never holds token material; every field is a name, an id
// or a code.
type AuditRecord struct {
	// ID is assigned when the record is written; it orders records newest
	// first.
	ID   string    `json:"-"`
	Time time.Time `json:"t"`
	// Caller is the credential's name; Role its role.
	Caller string `json:"c,omitempty"`
	Role   string `json:"r,omitempty"`
	// Method is the full gRPC method, or "http:callback".
	Method       string `json:"m"`
	ConnectionID string `json:"conn,omitempty"`
	Provider     string `json:"p,omitempty"`
	// Outcome is the gRPC code name ("OK", "NOT_FOUND", ...); Reason the
	// ErrorInfo reason the caller got, if any.
	Outcome string `json:"o"`
	Reason  string `json:"rsn,omitempty"`
}

// AuditFilter selects audit records; empty fields match everything.
type AuditFilter struct {
	ConnectionID, Caller, Method string
}

func (f AuditFilter) match(r *AuditRecord) bool {
	return (f.ConnectionID == "" || f.ConnectionID == r.ConnectionID) &&
		(f.Caller == "" || f.Caller == r.Caller) &&
		(f.Method == "" || f.Method == r.Method)
}

// AuditConfig configures an AuditLog. Only Store is required.
type AuditConfig struct {
	Store Store
	// Retention is how long records are kept; default 720h (30 days).
	Retention time.Duration
	// Buffer is how many records may wait for the flusher; default 8192.
	Buffer int
	// FlushEvery and FlushRecords: waiting records are written together
	// (one Store.Apply, one fsync) every FlushEvery (default 500 ms) or as
	// soon as FlushRecords (default 1024) wait, whichever comes first.
	FlushEvery   time.Duration
	FlushRecords int
	// BlockFor is how long Record waits for room in a full buffer before
	// it drops the record, counting it in Dropped; default 100 ms.
	BlockFor time.Duration
	// SweepEvery is how often records past their retention are deleted;
	// default 10 minutes.
	SweepEvery time.Duration
	Logger     *slog.Logger
	// Now is the clock records are stamped with and retention is measured
	// by; default time.Now. The flush and sweep timers use real time.
	Now func() time.Time
}

// An AuditLog records audited calls in the Store without costing the caller
// a write: Record hands the record to a flusher goroutine, which writes
// waiting records in batches. It is safe for concurrent use.
//
// A record is lost only when the buffer stays full for BlockFor (the
// flusher cannot keep up, or the Store fails); each loss is counted in
// Dropped and logged, never silent.
type AuditLog struct {
	cfg      AuditConfig
	st       Store
	log      *slog.Logger
	now      func() time.Time
	ch       chan AuditRecord
	flushReq chan chan error
	quit     chan struct{}
	done     chan struct{}
	instance string // random per process, so ids of replicas sharing a Store differ

	closed    atomic.Bool
	recording atomic.Int64 // Record calls between their closed check and their send
	inBatch   atomic.Int64 // records taken off ch, not yet written
	dropped   atomic.Uint64
	written   atomic.Uint64
	closeOnce sync.Once
}

// NewAuditLog returns an AuditLog on cfg.Store and starts its flusher;
// Close stops it.
func NewAuditLog(cfg AuditConfig) *AuditLog {
	cfg.Retention = cmp.Or(cfg.Retention, 720*time.Hour)
	cfg.Buffer = cmp.Or(cfg.Buffer, 8192)
	cfg.FlushEvery = cmp.Or(cfg.FlushEvery, 500*time.Millisecond)
	cfg.FlushRecords = cmp.Or(cfg.FlushRecords, 1024)
	cfg.BlockFor = cmp.Or(cfg.BlockFor, 100*time.Millisecond)
	cfg.SweepEvery = cmp.Or(cfg.SweepEvery, 10*time.Minute)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	var inst [4]byte
	_, _ = rand.Read(inst[:])
	a := &AuditLog{
		cfg: cfg, st: cfg.Store, log: cfg.Logger, now: cfg.Now,
		ch:       make(chan AuditRecord, cfg.Buffer),
		flushReq: make(chan chan error),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
		instance: hex.EncodeToString(inst[:]),
	}
	go a.run()
	return a
}

// Record queues r to be written; r.Time defaults to now. It does not wait
// for the write. If the buffer is full it waits up to BlockFor for room and
// then drops r, counting it. After Close every record is dropped and
// counted.
func (a *AuditLog) Record(r AuditRecord) {
	if r.Time.IsZero() {
		r.Time = a.now()
	}
	a.recording.Add(1)
	defer a.recording.Add(-1)
	if a.closed.Load() {
		a.drop(1)
		return
	}
	select {
	case a.ch <- r:
		return
	default:
	}
	t := time.NewTimer(a.cfg.BlockFor)
	defer t.Stop()
	select {
	case a.ch <- r:
	case <-t.C:
		a.drop(1)
	}
}

func (a *AuditLog) drop(n int) {
	if total := a.dropped.Add(uint64(n)); total == uint64(n) || n > 1 || total%1024 == 0 {
		// The first loss, every failed batch and every 1024th loss are
		// logged; Dropped (and its metric) counts all of them.
		a.log.LogAttrs(context.Background(), slog.LevelError, "audit records dropped",
			slog.Int("count", n), slog.Uint64("dropped_total", a.dropped.Load()))
	}
}

// Backlog returns how many records wait to be written.
func (a *AuditLog) Backlog() int { return len(a.ch) + int(a.inBatch.Load()) }

// Dropped returns how many records were lost since the log was created.
func (a *AuditLog) Dropped() uint64 { return a.dropped.Load() }

// Written returns how many records were written since the log was created.
func (a *AuditLog) Written() uint64 { return a.written.Load() }

// Flush writes every record queued before the call and returns once they
// are durable.
func (a *AuditLog) Flush(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case a.flushReq <- reply:
	case <-a.done:
		return nil // closed: everything was flushed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops accepting records, writes the waiting ones, and stops the
// flusher. It waits for Record calls already under way, at most a few
// seconds. It is safe to call more than once.
func (a *AuditLog) Close() {
	a.closeOnce.Do(func() {
		a.closed.Store(true)
		for i := 0; i < 500 && a.recording.Load() > 0; i++ {
			time.Sleep(10 * time.Millisecond)
		}
		close(a.quit)
	})
	<-a.done
}

// run is the flusher: it batches records and writes them, answers Flush,
// and sweeps old records.
func (a *AuditLog) run() {
	defer close(a.done)
	batch := make([]AuditRecord, 0, a.cfg.FlushRecords)
	tick := time.NewTicker(a.cfg.FlushEvery)
	defer tick.Stop()
	sweep := time.NewTicker(a.cfg.SweepEvery)
	defer sweep.Stop()
	var seq uint32
	write := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := a.write(batch, &seq)
		a.inBatch.Add(-int64(len(batch)))
		batch = batch[:0]
		return err
	}
	// drain moves what is queued now into batch, writing full batches.
	drain := func() error {
		var err error
		for n := len(a.ch); n > 0; n-- {
			batch = append(batch, <-a.ch)
			a.inBatch.Add(1)
			if len(batch) >= a.cfg.FlushRecords {
				err = cmp.Or(write(), err)
			}
		}
		return err
	}
	for {
		select {
		case r := <-a.ch:
			batch = append(batch, r)
			a.inBatch.Add(1)
			if len(batch) >= a.cfg.FlushRecords {
				_ = write()
			}
		case <-tick.C:
			_ = write()
		case reply := <-a.flushReq:
			err := drain()
			reply <- cmp.Or(write(), err)
		case <-sweep.C:
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if n, err := a.Sweep(ctx); err != nil {
				a.log.LogAttrs(ctx, slog.LevelWarn, "audit retention sweep", slog.String("err", err.Error()))
			} else if n > 0 {
				a.log.LogAttrs(ctx, slog.LevelDebug, "audit retention sweep", slog.Int("deleted", n))
			}
			cancel()
		case <-a.quit:
			_ = drain()
			_ = write()
			return
		}
	}
}

// write stores batch in one Apply. A failed write is retried once; then its
// records are dropped, counted and logged.
func (a *AuditLog) write(batch []AuditRecord, seq *uint32) error {
	ops := make([]Op, 0, len(batch))
	for i := range batch {
		r := &batch[i]
		*seq++
		r.ID = auditID(r.Time, a.instance, *seq)
		val, err := json.Marshal(r)
		if err != nil {
			continue // cannot happen: strings and a time
		}
		ops = append(ops, Op{Key: auditPrefix + r.ID, Value: val, IfRev: AnyRev})
	}
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = a.st.Apply(ctx, ops...)
		cancel()
		if err == nil {
			a.written.Add(uint64(len(ops)))
			return nil
		}
	}
	a.log.LogAttrs(context.Background(), slog.LevelError, "audit write failed", slog.String("err", err.Error()))
	a.drop(len(ops))
	return fmt.Errorf("vault: write audit records: %w", err)
}

// auditID returns an id that sorts before the ids of older records: the
// inverted nanosecond time in 16 hex digits, then the writing process's
// instance and its inverted sequence number, which keep records of equal
// times apart, newest first within one process.
func auditID(t time.Time, instance string, seq uint32) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], ^uint64(t.UnixNano()))
	return hex.EncodeToString(b[:]) + instance + fmt.Sprintf("%08x", ^seq)
}

// auditTimeKey returns the key prefix of records at time t: every record
// older than t sorts after it.
func auditTimeKey(t time.Time) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], ^uint64(t.UnixNano()))
	return auditPrefix + hex.EncodeToString(b[:])
}

// maxAuditScan bounds how many records one List call reads: a filter that
// matches little must not scan a month of records in one call. A page may
// then hold fewer than limit records and still have a next page.
const maxAuditScan = 50_000

// List returns up to limit records matching f, newest first, starting after
// the record with id after ("" for the newest), and the id to pass as after
// for the next page ("" at the end). It reads only written records: call
// Flush first to include queued ones.
func (a *AuditLog) List(ctx context.Context, f AuditFilter, after string, limit int) ([]AuditRecord, string, error) {
	if limit <= 0 {
		limit = 100
	}
	start := ""
	if after != "" {
		start = auditPrefix + after
	}
	var (
		out     []AuditRecord
		next    string
		scanned int
		bad     error
	)
	err := a.st.Scan(ctx, auditPrefix, start, func(key string, value []byte, _ uint64) (bool, error) {
		id := key[len(auditPrefix):]
		if scanned++; scanned > maxAuditScan {
			next = id
			return false, nil
		}
		var r AuditRecord
		if err := json.Unmarshal(value, &r); err != nil {
			bad = fmt.Errorf("vault: decode audit record %s: %w", id, err)
			return true, nil // skip it; report once after the scan
		}
		if !f.match(&r) {
			return true, nil
		}
		if len(out) == limit {
			next = out[len(out)-1].ID
			return false, nil
		}
		r.ID = id
		out = append(out, r)
		return true, nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("vault: list audit records: %w", err)
	}
	if bad != nil {
		a.log.LogAttrs(ctx, slog.LevelWarn, "skipped undecodable audit record", slog.String("err", bad.Error()))
	}
	return out, next, nil
}

// sweepBatch is how many records one Apply of a sweep deletes.
const sweepBatch = 1000

// Sweep deletes records older than the retention, sweepBatch per write, and
// returns how many it deleted. It stops after a bounded number of batches;
// the next sweep goes on.
func (a *AuditLog) Sweep(ctx context.Context) (int, error) {
	from := auditTimeKey(a.now().Add(-a.cfg.Retention))
	n := 0
	for range 1000 {
		var keys []string
		err := a.st.Scan(ctx, auditPrefix, from, func(key string, _ []byte, _ uint64) (bool, error) {
			keys = append(keys, key)
			return len(keys) < sweepBatch, nil
		})
		if err != nil {
			return n, fmt.Errorf("vault: sweep audit records: %w", err)
		}
		if len(keys) == 0 {
			return n, nil
		}
		ops := make([]Op, len(keys))
		for i, k := range keys {
			ops[i] = Op{Key: k, Delete: true, IfRev: AnyRev}
		}
		if _, err := a.st.Apply(ctx, ops...); err != nil {
			return n, fmt.Errorf("vault: sweep audit records: %w", err)
		}
		n += len(keys)
		if len(keys) < sweepBatch {
			return n, nil
		}
	}
	return n, nil
}
