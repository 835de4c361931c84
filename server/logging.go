package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// callLogger writes one "finished call" record per call, with the fields
// and levels of go-grpc-middleware's logging interceptor as this server
// configured it (FinishCall only): the method, its type, the peer, the start
// time, the client's deadline, the code, the error and the duration; never
// a payload. Unlike that interceptor, it decides whether to log once the
// code is known and builds the record only then: a call the logger would
// not write (every OK call at the default level) costs a clock read and a
// level check, not the fields of a record nobody reads.
type callLogger struct{ log *slog.Logger }

// callLevel is the level of a call's record by its code.
func callLevel(c codes.Code) slog.Level {
	switch c {
	case codes.OK, codes.NotFound, codes.InvalidArgument, codes.FailedPrecondition, codes.Canceled:
		return slog.LevelDebug
	case codes.Internal, codes.Unknown, codes.DataLoss:
		return slog.LevelError
	}
	return slog.LevelWarn
}

func (l callLogger) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	l.finished(ctx, info.FullMethod, "unary", start, err)
	return resp, err
}

func (l callLogger) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	typ := "bidi_stream"
	switch {
	case info.IsClientStream && !info.IsServerStream:
		typ = "client_stream"
	case !info.IsClientStream && info.IsServerStream:
		typ = "server_stream"
	}
	l.finished(ss.Context(), info.FullMethod, typ, start, err)
	return err
}

// finished logs the end of a call of method that began at start, if the
// logger writes records of its level. ctx is the call's context as the
// interceptor received it: its deadline is the client's.
func (l callLogger) finished(ctx context.Context, method, typ string, start time.Time, err error) {
	if errors.Is(err, io.EOF) {
		err = nil
	}
	code := status.Code(err)
	level := callLevel(code)
	if !l.log.Enabled(ctx, level) {
		return
	}
	d := time.Since(start)
	service, name := "unknown", "unknown"
	if m := strings.TrimPrefix(method, "/"); strings.Contains(m, "/") {
		service, name, _ = strings.Cut(m, "/")
	}
	attrs := make([]slog.Attr, 0, 12)
	attrs = append(attrs,
		slog.String("protocol", "grpc"),
		slog.String("grpc.component", "server"),
		slog.String("grpc.service", service),
		slog.String("grpc.method", name),
		slog.String("grpc.method_type", typ),
	)
	if p, ok := peer.FromContext(ctx); ok {
		attrs = append(attrs, slog.String("peer.address", p.Addr.String()))
	}
	attrs = append(attrs, slog.String("grpc.start_time", start.Format(time.RFC3339)))
	if dl, ok := ctx.Deadline(); ok {
		attrs = append(attrs, slog.String("grpc.request.deadline", dl.Format(time.RFC3339)))
	}
	attrs = append(attrs, slog.String("grpc.code", code.String()))
	if err != nil {
		// Statuses of this server say nothing secret (errors.go); a
		// provider's body or a panic value never reaches one.
		attrs = append(attrs, slog.String("grpc.error", fmt.Sprintf("%v", err)))
	}
	attrs = append(attrs, slog.String("grpc.time_ms", fmt.Sprintf("%v", float32(d.Nanoseconds()/1000)/1000)))
	l.log.LogAttrs(ctx, level, "finished call", attrs...)
}
