package server

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"time"
)

// http2Preface is what every HTTP/2 client with prior knowledge, every gRPC
// client among them, sends first on a plaintext connection (RFC 9113 §3.4).
// An HTTP/1.x request starts with a method ("GET ", "POST ", ...), and
// differs from it by its second byte at the latest.
var http2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// splitListener serves one listener to two servers: connections that open
// with the HTTP/2 preface go to the first listener it returns (gRPC), all
// others to the second (the JSON gateway, over HTTP/1.1). A connection is
// routed by its first bytes, read within sniffTimeout; one that sends
// nothing in that time is closed. After the split the connection is the
// server's as it came: the sniffed bytes are replayed, and NetConn returns
// the accepted connection (its kernel peer credentials on a unix socket).
//
// Accept on either listener fails once l fails; closing either closes only
// it (connections routed to it afterwards are closed). Close l itself after
// both servers stopped.
func splitListener(l net.Listener, sniffTimeout time.Duration) (h2, h1 net.Listener) {
	s := &splitter{root: l, timeout: sniffTimeout,
		h2: newRouted(l.Addr()), h1: newRouted(l.Addr())}
	go s.accept()
	return s.h2, s.h1
}

type splitter struct {
	root    net.Listener
	timeout time.Duration
	h2, h1  *routedListener
}

func (s *splitter) accept() {
	var delay time.Duration
	for {
		c, err := s.root.Accept()
		if err != nil {
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				// Out of file descriptors, say: wait as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			s.h2.fail(err)
			s.h1.fail(err)
			return
		}
		delay = 0
		go s.route(c)
	}
}

// route reads until the first bytes tell the preface from anything else.
func (s *splitter) route(c net.Conn) {
	if err := c.SetReadDeadline(time.Now().Add(s.timeout)); err != nil {
		c.Close()
		return
	}
	buf := make([]byte, 0, len(http2Preface))
	isH2 := false
	for {
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if !bytes.HasPrefix(http2Preface, buf) {
			break // HTTP/1.x (or garbage, which the HTTP server answers)
		}
		if len(buf) == len(http2Preface) {
			isH2 = true
			break
		}
		if err != nil {
			c.Close() // closed or silent before saying what it speaks
			return
		}
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		c.Close()
		return
	}
	sc := &sniffedConn{Conn: c, head: buf}
	if isH2 {
		s.h2.deliver(sc)
	} else {
		s.h1.deliver(sc)
	}
}

// sniffedConn replays the bytes read to route it, then reads on.
// Both servers read a connection from one goroutine at a time.
type sniffedConn struct {
	net.Conn
	head []byte
}

func (c *sniffedConn) Read(p []byte) (int, error) {
	if len(c.head) > 0 {
		n := copy(p, c.head)
		c.head = c.head[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// NetConn returns the accepted connection, as tls.Conn.NetConn does.
func (c *sniffedConn) NetConn() net.Conn { return c.Conn }

// netConn unwraps c down to the connection the listener accepted.
func netConn(c net.Conn) net.Conn {
	for {
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return c
		}
		c = u.NetConn()
	}
}

// routedListener hands out the connections the splitter routed to it.
type routedListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once

	mu  sync.Mutex
	err error // why the root listener failed
}

func newRouted(addr net.Addr) *routedListener {
	return &routedListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *routedListener) deliver(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *routedListener) fail(err error) {
	l.mu.Lock()
	l.err = err
	l.mu.Unlock()
	l.Close()
}

func (l *routedListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.err != nil {
			return nil, l.err
		}
		return nil, net.ErrClosed
	}
}

func (l *routedListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *routedListener) Addr() net.Addr { return l.addr }
