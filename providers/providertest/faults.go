package providertest

import (
	"bytes"
	"io"
	"net/http"
	"time"
)

type faultKind int

const (
	faultNone faultKind = iota
	faultStatus
	faultSlow
	faultGarbage
	faultOversized
	faultRedirect
	faultDrop
)

// A Fault is a misbehaviour of an endpoint, injected with FailNext. Build
// one with ServerError, RateLimited, Slow, Garbage, Oversized, Redirect or
// DropAfterRotate.
type Fault struct {
	kind       faultKind
	status     int
	retryAfter string
	delay      time.Duration
	size       int64
	location   string
}

// ServerError answers with status (a 5xx; anything else means 503) and an
// HTML body, without processing the request.
func ServerError(status int) Fault {
	if status < 500 || status > 599 {
		status = http.StatusServiceUnavailable
	}
	return Fault{kind: faultStatus, status: status}
}

// RateLimited answers 429 with a Retry-After header of retryAfter (seconds
// or an HTTP-date; none if empty), without processing the request.
func RateLimited(retryAfter string) Fault {
	return Fault{kind: faultStatus, status: http.StatusTooManyRequests, retryAfter: retryAfter}
}

// WithRetryAfter returns f answering with a Retry-After header (for
// ServerError and RateLimited).
func (f Fault) WithRetryAfter(v string) Fault {
	f.retryAfter = v
	return f
}

// Slow waits d, or until the client gives up, and then processes the request
// as usual: like a real server, it spends a code or rotates a refresh token
// even if nobody reads the answer.
func Slow(d time.Duration) Fault { return Fault{kind: faultSlow, delay: d} }

// Garbage answers 200 with an HTML body labelled application/json, without
// processing the request.
func Garbage() Fault { return Fault{kind: faultGarbage} }

// Oversized answers 200 with a JSON token response whose access token is n
// bytes long, streamed without a Content-Length, without processing the
// request. A client that read it all would find it valid.
func Oversized(n int64) Fault { return Fault{kind: faultOversized, size: n} }

// Redirect answers 307 to location (default: the endpoint itself), without
// processing the request.
func Redirect(location string) Fault { return Fault{kind: faultRedirect, location: location} }

// DropAfterRotate processes the request (spending the code, rotating the
// refresh token, revoking) and then closes the connection without
// answering, so the client never learns the outcome.
func DropAfterRotate() Fault { return Fault{kind: faultDrop} }

type queuedFault struct {
	f Fault
	n int
}

// FailNext makes the next n requests to ep (after any faults queued
// before) suffer f. Requests are counted in Stats either way.
func (s *Server) FailNext(ep Endpoint, n int, f Fault) {
	if n <= 0 || f.kind == faultNone {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[ep] = append(s.faults[ep], queuedFault{f, n})
}

// ClearFaults drops every queued fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.faults)
}

func (s *Server) takeFaultLocked(ep Endpoint) Fault {
	q := s.faults[ep]
	if len(q) == 0 {
		return Fault{}
	}
	f := q[0].f
	if q[0].n--; q[0].n == 0 {
		s.faults[ep] = q[1:]
	}
	return f
}

// before applies the part of f that comes before processing. It reports
// whether the request has been answered.
func (f Fault) before(w http.ResponseWriter, r *http.Request) bool {
	switch f.kind {
	case faultStatus:
		if f.retryAfter != "" {
			w.Header().Set("Retry-After", f.retryAfter)
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(f.status)
		io.WriteString(w, "<html><body><h1>"+http.StatusText(f.status)+"</h1></body></html>\n")
		return true
	case faultSlow:
		t := time.NewTimer(f.delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
		}
		return false
	case faultGarbage:
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, "<html><body>502 Bad Gateway\x00\xff</body></html>")
		return true
	case faultOversized:
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"token_type":"Bearer","access_token":"sbx_at_`)
		chunk := bytes.Repeat([]byte("A"), 32<<10)
		for left := f.size; left > 0; {
			n := min(left, int64(len(chunk)))
			if _, err := w.Write(chunk[:n]); err != nil {
				return true
			}
			left -= n
		}
		io.WriteString(w, `"}`)
		return true
	case faultRedirect:
		loc := f.location
		if loc == "" {
			loc = r.URL.Path
		}
		w.Header().Set("Location", loc)
		w.WriteHeader(http.StatusTemporaryRedirect)
		return true
	}
	return false
}

// drop closes the connection without an answer.
func drop(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// HTTP/2 cannot hijack; aborting resets the stream instead.
		panic(http.ErrAbortHandler)
	}
	conn.Close()
}
