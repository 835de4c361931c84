package audit

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenvault/tokenvault/vault"
)

// auditPrefix is where audit records live in the Store, in chunks: each
// write stores the waiting records as one or more values of up to
// auditChunk records, newest first, under auditPrefix + a chunk id that
// sorts newest first (see chunkID). A chunk costs the Store one key however
// many records it holds, which is what keeps auditing every token read
// cheap. Listing the newest records is a forward scan from the start of the
// prefix, and the chunks past their retention are one contiguous range at
// its end.
const auditPrefix = "audit/"

// auditChunk bounds the records of one stored value (about 150 bytes each).
const auditChunk = 512

// An Record is one audited call: who, what, on which connection, and
// how it ended. It never holds token material; every field is a name, an id
// or a code.
type Record struct {
	// ID is assigned when the record is written: its chunk's id and its
	// place in the chunk. IDs sort newest first.
	ID   string
	Time time.Time
	// Caller is the credential's name; Role its role.
	Caller string
	Role   string
	// Method is the full gRPC method, or "http:callback".
	Method       string
	ConnectionID string
	Provider     string
	// Outcome is the gRPC code name ("OK", "NOT_FOUND", ...); Reason the
	// ErrorInfo reason the caller got, if any.
	Outcome string
	Reason  string
}

// Filter selects audit records; empty fields match everything.
type Filter struct {
	ConnectionID, Caller, Method string
}

func (f Filter) match(r *Record) bool {
	return (f.ConnectionID == "" || f.ConnectionID == r.ConnectionID) &&
		(f.Caller == "" || f.Caller == r.Caller) &&
		(f.Method == "" || f.Method == r.Method)
}

// Config configures a Log. Only Store is required.
type Config struct {
	Store vault.Store
	// Retention is how long records are kept; default 720h (30 days).
	Retention time.Duration
	// Buffer is how many records may wait for the flusher; default 8192.
	Buffer int
	// FlushEvery and FlushRecords: waiting records are written together
	// (one Store.Apply, one fsync) every FlushEvery (default 500 ms) or as
	// soon as FlushRecords (default 1024) wait, whichever comes first.
	// FlushRecords is at most Buffer.
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

// A Log records audited calls in the Store without costing the caller
// a write: Record hands the record to a flusher goroutine, which writes
// waiting records in batches. It is safe for concurrent use.
//
// A record is lost only when the buffer stays full for BlockFor (the
// flusher cannot keep up, or the Store fails); each loss is counted in
// Dropped and logged, never silent.
type Log struct {
	cfg      Config
	st       vault.Store
	log      *slog.Logger
	now      func() time.Time
	ch       chan Record
	kick     chan struct{} // a full batch waits: write it now
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

// New returns a Log on cfg.Store and starts its flusher;
// Close stops it.
func New(cfg Config) *Log {
	cfg.Retention = cmp.Or(cfg.Retention, 720*time.Hour)
	cfg.Buffer = cmp.Or(cfg.Buffer, 8192)
	cfg.FlushEvery = cmp.Or(cfg.FlushEvery, 500*time.Millisecond)
	cfg.FlushRecords = cmp.Or(cfg.FlushRecords, 1024)
	cfg.FlushRecords = min(cfg.FlushRecords, cfg.Buffer)
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
	a := &Log{
		cfg: cfg, st: cfg.Store, log: cfg.Logger, now: cfg.Now,
		ch:       make(chan Record, cfg.Buffer),
		kick:     make(chan struct{}, 1),
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
func (a *Log) Record(r Record) {
	if r.Time.IsZero() {
		r.Time = a.now()
	}
	a.recording.Add(1)
	defer a.recording.Add(-1)
	if a.closed.Load() {
		a.drop(1)
		return
	}
	// The flusher does not wait on the channel: it drains it on its tick,
	// or when kicked because a batch is full. A send then never wakes a
	// goroutine, which would cost more than the rest of a token read.
	select {
	case a.ch <- r:
		if len(a.ch) >= a.cfg.FlushRecords {
			a.kickFlusher()
		}
		return
	default:
	}
	a.kickFlusher()
	t := time.NewTimer(a.cfg.BlockFor)
	defer t.Stop()
	select {
	case a.ch <- r:
	case <-t.C:
		a.drop(1)
	}
}

func (a *Log) kickFlusher() {
	select {
	case a.kick <- struct{}{}:
	default: // already kicked
	}
}

func (a *Log) drop(n int) {
	if total := a.dropped.Add(uint64(n)); total == uint64(n) || n > 1 || total%1024 == 0 {
		// The first loss, every failed batch and every 1024th loss are
		// logged; Dropped (and its metric) counts all of them.
		a.log.LogAttrs(context.Background(), slog.LevelError, "audit records dropped",
			slog.Int("count", n), slog.Uint64("dropped_total", a.dropped.Load()))
	}
}

// Backlog returns how many records wait to be written.
func (a *Log) Backlog() int { return len(a.ch) + int(a.inBatch.Load()) }

// Dropped returns how many records were lost since the log was created.
func (a *Log) Dropped() uint64 { return a.dropped.Load() }

// Written returns how many records were written since the log was created.
func (a *Log) Written() uint64 { return a.written.Load() }

// Flush writes every record queued before the call and returns once they
// are durable.
func (a *Log) Flush(ctx context.Context) error {
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
func (a *Log) Close() {
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
func (a *Log) run() {
	defer close(a.done)
	batch := make([]Record, 0, a.cfg.FlushRecords)
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
		for n := len(a.ch); n > 0; {
			k := min(n, a.cfg.FlushRecords-len(batch))
			a.inBatch.Add(int64(k)) // before taking them: Backlog never dips
			for range k {
				batch = append(batch, <-a.ch)
			}
			n -= k
			if len(batch) >= a.cfg.FlushRecords {
				err = cmp.Or(write(), err)
			}
		}
		return err
	}
	for {
		select {
		case <-tick.C:
			_ = drain()
			_ = write()
		case <-a.kick:
			_ = drain()
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

// write stores batch, newest first, in chunks of up to auditChunk records:
// one Apply (one fsync) for all of them. A failed write is retried once;
// then its records are dropped, counted and logged.
func (a *Log) write(batch []Record, seq *uint32) error {
	slices.Reverse(batch) // newest first
	ops := make([]vault.Op, 0, len(batch)/auditChunk+1)
	for chunk := range slices.Chunk(batch, auditChunk) {
		*seq++
		id := chunkID(chunk[0].Time, a.instance, *seq)
		ops = append(ops, vault.Op{Key: auditPrefix + id, Value: encodeChunk(chunk), IfRev: vault.AnyRev})
	}
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = a.st.Apply(ctx, ops...)
		cancel()
		if err == nil {
			a.written.Add(uint64(len(batch)))
			return nil
		}
	}
	a.log.LogAttrs(context.Background(), slog.LevelError, "audit write failed", slog.String("err", err.Error()))
	a.drop(len(batch))
	return fmt.Errorf("vault: write audit records: %w", err)
}

// chunkIDLen is the length of a chunk id: 16 + 8 + 8 hex digits.
const chunkIDLen = 32

// chunkID returns an id that sorts before the ids of chunks written before
// it: the inverted nanosecond time of its newest record, then the writing
// process's instance and its inverted chunk sequence number, which keep
// chunks of equal times apart, newest first within one process.
func chunkID(newest time.Time, instance string, seq uint32) string {
	var b [12]byte
	binary.BigEndian.PutUint64(b[:8], ^uint64(newest.UnixNano()))
	binary.BigEndian.PutUint32(b[8:], ^seq)
	h := hex.EncodeToString(b[:])
	return h[:16] + instance + h[16:]
}

// auditTimeKey returns the key prefix of chunks whose newest record is at
// time t: every chunk whose newest record is older sorts after it.
func auditTimeKey(t time.Time) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], ^uint64(t.UnixNano()))
	return auditPrefix + hex.EncodeToString(b[:])
}

// recordID is the id of the i-th record (newest first) of a chunk.
func recordID(chunk string, i int) string { return fmt.Sprintf("%s%04x", chunk, i) }

// chunkVersion is the first byte of a stored chunk.
const chunkVersion = 1

// encodeChunk encodes records as: version, count, then per record its time
// (varint Unix nanoseconds) and its seven strings (uvarint length, bytes).
func encodeChunk(recs []Record) []byte {
	b := make([]byte, 0, 16+len(recs)*128)
	b = append(b, chunkVersion)
	b = binary.AppendUvarint(b, uint64(len(recs)))
	for i := range recs {
		r := &recs[i]
		b = binary.AppendVarint(b, r.Time.UnixNano())
		for _, s := range [...]string{r.Caller, r.Role, r.Method, r.ConnectionID, r.Provider, r.Outcome, r.Reason} {
			b = binary.AppendUvarint(b, uint64(len(s)))
			b = append(b, s...)
		}
	}
	return b
}

var errBadChunk = errors.New("vault: malformed audit chunk")

// chunkLen returns how many records an encoded chunk holds.
func chunkLen(b []byte) (int, error) {
	if len(b) < 2 || b[0] != chunkVersion {
		return 0, errBadChunk
	}
	n, k := binary.Uvarint(b[1:])
	if k <= 0 || n > uint64(len(b)) {
		return 0, errBadChunk
	}
	return int(n), nil
}

// decodeChunk decodes a chunk written by encodeChunk; records get their ids
// from the chunk id.
func decodeChunk(id string, b []byte) ([]Record, error) {
	n, err := chunkLen(b)
	if err != nil {
		return nil, err
	}
	_, k := binary.Uvarint(b[1:])
	b = b[1+k:]
	out := make([]Record, n)
	str := func() (string, bool) {
		l, k := binary.Uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return "", false
		}
		s := string(b[k : k+int(l)])
		b = b[k+int(l):]
		return s, true
	}
	for i := range out {
		t, k := binary.Varint(b)
		if k <= 0 {
			return nil, errBadChunk
		}
		b = b[k:]
		r := &out[i]
		r.ID, r.Time = recordID(id, i), time.Unix(0, t)
		for _, f := range [...]*string{&r.Caller, &r.Role, &r.Method, &r.ConnectionID, &r.Provider, &r.Outcome, &r.Reason} {
			var ok bool
			if *f, ok = str(); !ok {
				return nil, errBadChunk
			}
		}
	}
	return out, nil
}

// maxAuditScan bounds how many records one List call reads: a filter that
// matches little must not scan a month of records in one call. A page may
// then hold fewer than limit records and still have a next page.
const maxAuditScan = 100_000

// List returns up to limit records matching f, newest first, starting after
// the record with id after ("" for the newest), and the id to pass as after
// for the next page ("" at the end). It reads only written records: call
// Flush first to include queued ones. A page may hold fewer than limit
// records and still have a next page.
func (a *Log) List(ctx context.Context, f Filter, after string, limit int) ([]Record, string, error) {
	if limit <= 0 {
		limit = 100
	}
	var (
		out     []Record
		next    string
		scanned int
	)
	// take adds the records of one chunk from index from on; it reports
	// whether the page wants more.
	take := func(recs []Record, from int) bool {
		for i := from; i < len(recs); i++ {
			if scanned++; scanned > maxAuditScan {
				if i > 0 {
					next = recs[i-1].ID
				} else if len(out) > 0 {
					next = out[len(out)-1].ID
				}
				return false
			}
			if !f.match(&recs[i]) {
				continue
			}
			if len(out) == limit {
				next = out[len(out)-1].ID
				return false
			}
			out = append(out, recs[i])
		}
		return true
	}
	start := ""
	if after != "" {
		if len(after) != chunkIDLen+4 {
			return nil, "", fmt.Errorf("%w: bad audit page token", vault.ErrInvalidArgument)
		}
		from, err := strconv.ParseUint(after[chunkIDLen:], 16, 16)
		if err != nil {
			return nil, "", fmt.Errorf("%w: bad audit page token", vault.ErrInvalidArgument)
		}
		start = auditPrefix + after[:chunkIDLen]
		val, _, err := a.st.Get(ctx, start)
		switch {
		case errors.Is(err, vault.ErrNotFound): // swept meanwhile: go on after it
		case err != nil:
			return nil, "", fmt.Errorf("vault: list audit records: %w", err)
		default:
			recs, err := decodeChunk(after[:chunkIDLen], val)
			if err != nil {
				return nil, "", fmt.Errorf("vault: audit chunk %s: %w", after[:chunkIDLen], err)
			}
			if !take(recs, int(from)+1) {
				return out, next, nil
			}
		}
	}
	var bad error
	err := a.st.Scan(ctx, auditPrefix, start, func(key string, value []byte, _ uint64) (bool, error) {
		id := key[len(auditPrefix):]
		recs, err := decodeChunk(id, value)
		if err != nil {
			bad = fmt.Errorf("vault: audit chunk %s: %w", id, err)
			return true, nil // skip it; report once after the scan
		}
		return take(recs, 0), nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("vault: list audit records: %w", err)
	}
	if bad != nil {
		a.log.LogAttrs(ctx, slog.LevelWarn, "skipped undecodable audit chunk", slog.String("err", bad.Error()))
	}
	return out, next, nil
}

// sweepBatch is how many chunks one Apply of a sweep deletes.
const sweepBatch = 256

// Sweep deletes the chunks whose newest record is older than the retention
// (so a record outlives it by at most its chunk's span, a flush interval),
// sweepBatch chunks per write, and returns how many records it deleted. It
// stops after a bounded number of writes; the next sweep goes on.
func (a *Log) Sweep(ctx context.Context) (int, error) {
	from := auditTimeKey(a.now().Add(-a.cfg.Retention))
	n := 0
	for range 1000 {
		var keys []string
		records := 0
		err := a.st.Scan(ctx, auditPrefix, from, func(key string, value []byte, _ uint64) (bool, error) {
			keys = append(keys, key)
			if c, err := chunkLen(value); err == nil {
				records += c
			}
			return len(keys) < sweepBatch, nil
		})
		if err != nil {
			return n, fmt.Errorf("vault: sweep audit records: %w", err)
		}
		if len(keys) == 0 {
			return n, nil
		}
		ops := make([]vault.Op, len(keys))
		for i, k := range keys {
			ops[i] = vault.Op{Key: k, Delete: true, IfRev: vault.AnyRev}
		}
		if _, err := a.st.Apply(ctx, ops...); err != nil {
			return n, fmt.Errorf("vault: sweep audit records: %w", err)
		}
		n += records
		if len(keys) < sweepBatch {
			return n, nil
		}
	}
	return n, nil
}
