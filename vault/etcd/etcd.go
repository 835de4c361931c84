// Package etcd implements vault.Store on an etcd cluster, for a tokenvault
// that runs as several replicas sharing one set of connections.
//
// Every key lives under a prefix (Options.Prefix), so several applications
// can share one cluster. A key's revision is its etcd mod_revision: the
// cluster's revision counter at its last write, which only grows and is
// never reused, so a key deleted and created again never gets an old
// revision back. Values are stored as the vault hands them over: already
// sealed where they hold secrets, so etcd only ever sees ciphertext bound to
// its key. No etcd type or error crosses the package boundary.
package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenvault/tokenvault/vault"
)

// ErrTooLarge is returned by Apply when the write would exceed etcd's
// request size limit (Options.MaxRequestBytes). Nothing is written.
var ErrTooLarge = errors.New("etcd: write exceeds the cluster's request size limit")

// ErrUnreachable is returned by Open when no endpoint answered within the
// dial timeout.
var ErrUnreachable = errors.New("etcd: cluster unreachable")

// Defaults of Options' zero fields.
const (
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 5 * time.Second
	// DefaultMaxRequestBytes is etcd's own default --max-request-bytes.
	DefaultMaxRequestBytes = 1536 * 1024
)

// scanPage is how many keys Scan reads per request.
const scanPage = 512

// opOverhead bounds what one operation adds to a transaction request
// beyond its key and value bytes (protobuf tags, lengths, the compare).
const opOverhead = 64

// Options configures Open.
type Options struct {
	// Endpoints are the cluster's client URLs, e.g. https://etcd-0:2379.
	Endpoints []string
	// Prefix is put before every key, e.g. "tokenvault/myapp/". Two
	// applications sharing a cluster must use prefixes neither of which
	// begins the other.
	Prefix string
	// TLS, if set, is used to reach the endpoints (CA, client certificate).
	TLS *tls.Config
	// Username and Password authenticate to etcd when Username is set.
	Username, Password string
	// DialTimeout bounds Open's first contact with the cluster; zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// RequestTimeout bounds each request (a page of a Scan counts as one);
	// zero means DefaultRequestTimeout. A shorter deadline on the caller's
	// context wins.
	RequestTimeout time.Duration
	// MaxRequestBytes is the cluster's --max-request-bytes; Apply refuses
	// larger writes with ErrTooLarge before sending them. Zero means
	// DefaultMaxRequestBytes.
	MaxRequestBytes int
	// LockTTL is the lease TTL of locks (Lock): how long a lock outlives a
	// holder that died or was cut off from the cluster. Whole seconds;
	// zero means DefaultLockTTL.
	LockTTL time.Duration
}

// Store is a vault.Store on etcd. It is safe for concurrent use.
type Store struct {
	cli    *clientv3.Client
	prefix string
	opts   Options

	// noStream: the server answered RangeStream with Unimplemented; Scan
	// reads in pages.
	noStream atomic.Bool

	closeOnce sync.Once
	closeErr  error
}

var _ vault.Store = (*Store)(nil)

// Open connects to the cluster and checks that it answers (and, with a
// Username, that the credentials are accepted) before returning, so a
// sidecar that cannot reach its store fails at start with an error naming
// the endpoints (wrapping ErrUnreachable) instead of half starting.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if len(opts.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DefaultDialTimeout
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	if opts.MaxRequestBytes <= 0 {
		opts.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if opts.LockTTL <= 0 {
		opts.LockTTL = DefaultLockTTL
	}
	eps := strings.Join(opts.Endpoints, ", ")
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   opts.Endpoints,
		DialTimeout: opts.DialTimeout,
		TLS:         opts.TLS,
		Username:    opts.Username,
		Password:    opts.Password,
		// Requests larger than the server takes fail there with a clear
		// error; the client must not refuse them first with a vaguer one.
		MaxCallSendMsgSize: opts.MaxRequestBytes + 64*1024,
		// Keepalive pings find a dead connection while a watch is idle.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		// The client's own logger would print its retries as JSON on
		// stderr beside ours; the errors it returns say what failed.
		Logger:  zap.NewNop(),
		Context: context.WithoutCancel(ctx),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnreachable, eps, err)
	}
	s := &Store{cli: cli, prefix: opts.Prefix, opts: opts}
	// clientv3.New connects lazily unless it must authenticate: one read
	// proves a member answers and serves reads.
	pctx, cancel := context.WithTimeout(ctx, opts.DialTimeout)
	defer cancel()
	if _, err := cli.Get(pctx, opts.Prefix+"\x00probe", clientv3.WithCountOnly()); err != nil {
		cli.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("etcd: open: %w", ctx.Err())
		}
		return nil, fmt.Errorf("%w: no answer from %s within %v: %v", ErrUnreachable, eps, opts.DialTimeout, err)
	}
	return s, nil
}

// Prefix returns the prefix put before every key.
func (s *Store) Prefix() string { return s.prefix }

// reqCtx bounds one request by the request timeout.
func (s *Store) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.opts.RequestTimeout)
}

// wrap turns a client error into this package's: the caller's context
// error as is (wrapped), a request over the size limit as ErrTooLarge.
func (s *Store) wrap(ctx context.Context, what string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("etcd: %s: %w", what, cerr)
	}
	if errors.Is(err, rpctypes.ErrRequestTooLarge) || errors.Is(err, rpctypes.ErrGRPCRequestTooLarge) ||
		status.Code(err) == codes.ResourceExhausted {
		return fmt.Errorf("%w: %s: %v", ErrTooLarge, what, err)
	}
	return fmt.Errorf("etcd: %s: %w", what, err)
}

// Get returns the value under key and its revision, or vault.ErrNotFound.
func (s *Store) Get(ctx context.Context, key string) ([]byte, uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, fmt.Errorf("etcd: get: %w", err)
	}
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(rctx, s.prefix+key)
	if err != nil {
		return nil, 0, s.wrap(ctx, "get", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, vault.ErrNotFound
	}
	kv := resp.Kvs[0]
	// The value was decoded from the response into a slice of its own.
	return kv.Value, uint64(kv.ModRevision), nil
}

// Apply performs ops in one etcd transaction. Compares are checked against
// the state before the transaction; if one fails Apply returns
// vault.ErrConflict and writes nothing. All keys written by one call get
// the same new revision. A key may appear only once in ops. A transaction
// larger than Options.MaxRequestBytes is refused with ErrTooLarge before
// it is sent.
func (s *Store) Apply(ctx context.Context, ops ...vault.Op) ([]uint64, error) {
	return s.apply(ctx, nil, ops)
}

// apply is Apply with extra compares (the fenced commit's ownership).
func (s *Store) apply(ctx context.Context, extra []clientv3.Cmp, ops []vault.Op) ([]uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("etcd: apply: %w", err)
	}
	if err := s.checkOps(ops); err != nil {
		return nil, fmt.Errorf("etcd: apply: %w", err)
	}
	revs := make([]uint64, len(ops))
	if len(ops) == 0 {
		return revs, nil
	}
	cmps := extra
	thens := make([]clientv3.Op, 0, len(ops))
	for _, op := range ops {
		k := s.prefix + op.Key
		if op.IfRev >= 0 {
			// An absent key compares as mod_revision 0.
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", op.IfRev))
		}
		if op.Check {
			continue // a compare only
		}
		if op.Delete {
			thens = append(thens, clientv3.OpDelete(k))
		} else {
			// The request holds the value only until it is marshalled,
			// which happens inside Commit: the caller's slice is not kept.
			thens = append(thens, clientv3.OpPut(k, string(op.Value)))
		}
	}
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Txn(rctx).If(cmps...).Then(thens...).Commit()
	if err != nil {
		return nil, s.wrap(ctx, "apply", err)
	}
	if !resp.Succeeded {
		return nil, vault.ErrConflict
	}
	for i, op := range ops {
		if !op.Delete && !op.Check {
			revs[i] = uint64(resp.Header.Revision)
		}
	}
	return revs, nil
}

// checkOps rejects empty and repeated keys (etcd refuses a transaction
// that writes a key twice, with a less helpful error) and writes that
// would exceed the request size limit.
func (s *Store) checkOps(ops []vault.Op) error {
	size := 0
	seen := make(map[string]struct{}, len(ops))
	for _, op := range ops {
		if op.Key == "" {
			return errors.New("empty key")
		}
		if op.Check && op.IfRev < 0 {
			return fmt.Errorf("check of %q without a revision", op.Key)
		}
		if _, dup := seen[op.Key]; dup {
			return fmt.Errorf("key %q given twice", op.Key)
		}
		seen[op.Key] = struct{}{}
		size += opOverhead + 2*(len(s.prefix)+len(op.Key)) + len(op.Value)
	}
	if size > s.opts.MaxRequestBytes {
		return fmt.Errorf("%w: %d bytes in %d operations, limit %d", ErrTooLarge, size, len(ops), s.opts.MaxRequestBytes)
	}
	return nil
}

// Take deletes key and returns the value it had, in one request, or
// vault.ErrNotFound if the key is absent (or another Take got it first).
func (s *Store) Take(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("etcd: take: %w", err)
	}
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Delete(rctx, s.prefix+key, clientv3.WithPrevKV())
	if err != nil {
		return nil, s.wrap(ctx, "take", err)
	}
	if resp.Deleted == 0 || len(resp.PrevKvs) == 0 {
		return nil, vault.ErrNotFound
	}
	return resp.PrevKvs[0].Value, nil
}

// Scan calls fn for each key with the given prefix that sorts after
// `after`, in key order, until fn returns false or an error; fn's error is
// returned as is. All keys are read at one revision, so the scan sees one
// consistent state. fn may keep the value it is given.
//
// A server that has it (etcd 3.7 and later) streams the range in one
// request: a limited Range makes the server count every key left in the
// range for each page, which grows as the square of the store (1.3 s of
// the member's CPU to load 100,000 connections). Older servers are read in
// pages at the revision of the first page (if that revision is compacted
// away mid-scan, Scan fails).
func (s *Store) Scan(ctx context.Context, prefix, after string, fn func(key string, value []byte, rev uint64) (bool, error)) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("etcd: scan: %w", err)
	}
	from := s.prefix + prefix
	if after != "" && after >= prefix {
		from = s.prefix + after + "\x00"
	}
	end := clientv3.GetPrefixRangeEnd(s.prefix + prefix)
	if !s.noStream.Load() {
		streamed, err := s.scanStream(ctx, from, end, fn)
		if !errors.Is(err, errNoStream) {
			return err
		}
		if streamed {
			return s.wrap(ctx, "scan", err)
		}
		s.noStream.Store(true) // an older server: page from now on
	}
	return s.scanPages(ctx, from, end, fn)
}

// errNoStream: the server does not implement RangeStream.
var errNoStream = errors.New("etcd: the server cannot stream a range")

// scanStream is Scan over one RangeStream request. Each chunk must arrive
// within the request timeout of the one before (the whole range may take
// longer). It returns errNoStream if the server does not stream, with
// streamed saying whether fn had been called already.
func (s *Store) scanStream(ctx context.Context, from, end string, fn func(key string, value []byte, rev uint64) (bool, error)) (streamed bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watchdog := time.AfterFunc(s.opts.RequestTimeout, cancel)
	defer watchdog.Stop()
	stream, err := s.cli.GetStream(sctx, from, clientv3.WithRange(end))
	if err != nil {
		if status.Code(err) == codes.Unimplemented {
			return false, errNoStream
		}
		return false, s.wrap(ctx, "scan", err)
	}
	// ended says why a stream that stopped early stopped: the caller's
	// context, the watchdog, or the server's error.
	ended := func(err error) error {
		if cerr := ctx.Err(); cerr != nil {
			return fmt.Errorf("etcd: scan: %w", cerr)
		}
		if sctx.Err() != nil {
			return fmt.Errorf("etcd: scan: no answer within %v: %w", s.opts.RequestTimeout, ErrUnreachable)
		}
		return s.wrap(ctx, "scan", err)
	}
	for r := range stream {
		if err := r.Err(); err != nil {
			if status.Code(err) == codes.Unimplemented {
				return streamed, errNoStream
			}
			return streamed, ended(err)
		}
		watchdog.Reset(s.opts.RequestTimeout)
		for _, kv := range r.Kvs {
			streamed = true
			more, err := fn(string(kv.Key[len(s.prefix):]), kv.Value, uint64(kv.ModRevision))
			if err != nil || !more {
				return streamed, err
			}
		}
	}
	if sctx.Err() != nil {
		return streamed, ended(nil)
	}
	return streamed, nil
}

// scanPages is Scan in pages of scanPage keys, for servers that cannot
// stream a range.
func (s *Store) scanPages(ctx context.Context, from, end string, fn func(key string, value []byte, rev uint64) (bool, error)) error {
	var atRev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(scanPage)}
		if atRev > 0 {
			opts = append(opts, clientv3.WithRev(atRev))
		}
		rctx, cancel := s.reqCtx(ctx)
		resp, err := s.cli.Get(rctx, from, opts...)
		cancel()
		if err != nil {
			return s.wrap(ctx, "scan", err)
		}
		if atRev == 0 {
			atRev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			more, err := fn(string(kv.Key[len(s.prefix):]), kv.Value, uint64(kv.ModRevision))
			if err != nil {
				return err
			}
			if !more {
				return nil
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("etcd: scan: %w", err)
		}
	}
}

// Close closes the connection to the cluster. It is safe to call more than
// once; later calls return the first call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
			s.closeErr = fmt.Errorf("etcd: close: %w", err)
		}
	})
	return s.closeErr
}
