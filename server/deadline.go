package server

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
)

// deadlineUnary gives calls that arrive without a deadline a default one.
//
// It does so without a timer per call: most calls (a token served from
// memory) never wait on their context, and context.WithTimeout's timer
// cost more than the rest of the interceptor. The context it passes on
// reports the deadline at once and starts the timer only when someone
// waits for it (Done, Err, or a context derived from it).
func deadlineUnary(d time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if _, ok := ctx.Deadline(); ok {
			return handler(ctx, req)
		}
		dc := &deadlineCtx{Context: ctx, deadline: time.Now().Add(d)}
		defer dc.release()
		return handler(dc, req)
	}
}

// deadlineCtx is its parent with a deadline whose timer is made on first
// use. Before that, Deadline answers and Value asks the parent; after it,
// everything is context.WithDeadline's, so that contexts derived from it
// are linked to it as to any context of the standard library.
type deadlineCtx struct {
	context.Context
	deadline time.Time

	once   sync.Once
	timed  atomic.Pointer[timedCtx] // set by once
	closed atomic.Bool              // release ran
}

type timedCtx struct {
	ctx    context.Context
	cancel context.CancelFunc
}

// timer returns the context that ends at the deadline, making it if need
// be. After release it is made already canceled.
func (c *deadlineCtx) timer() context.Context {
	c.once.Do(func() {
		ctx, cancel := context.WithDeadline(c.Context, c.deadline)
		c.timed.Store(&timedCtx{ctx, cancel})
		// Stored before closed is read, as release writes closed before
		// it reads timed: one of the two sees the other and cancels.
		if c.closed.Load() {
			cancel()
		}
	})
	return c.timed.Load().ctx
}

// release ends the context when its call returns, as the cancel of
// context.WithTimeout would.
func (c *deadlineCtx) release() {
	c.closed.Store(true)
	if t := c.timed.Load(); t != nil {
		t.cancel()
	}
}

func (c *deadlineCtx) Deadline() (time.Time, bool) { return c.deadline, true }
func (c *deadlineCtx) Done() <-chan struct{}       { return c.timer().Done() }
func (c *deadlineCtx) Err() error                  { return c.timer().Err() }

func (c *deadlineCtx) Value(key any) any {
	if t := c.timed.Load(); t != nil {
		return t.ctx.Value(key)
	}
	return c.Context.Value(key)
}

func (c *deadlineCtx) String() string { return "server.deadlineCtx" }
