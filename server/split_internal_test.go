package server

import (
	"io"
	"net"
	"testing"
	"time"
)

// TestSplitListener routes by the first bytes: the HTTP/2 preface, even
// sent a byte at a time, to the first listener with every byte replayed;
// anything else to the second; a client that sends nothing is closed.
func TestSplitListener(t *testing.T) {
	// The sniff timeout only bounds how long a slow client may take: ample,
	// so a loaded machine sending the preface a byte at a time stays within
	// it. The silent client is tested against a short one below.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	h2, h1 := splitListener(l, 30*time.Second)
	defer h2.Close()
	defer h1.Close()

	send := func(l net.Listener, chunks ...string) net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		for _, s := range chunks {
			if _, err := c.Write([]byte(s)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		return c
	}
	accept := func(l net.Listener, want string) {
		t.Helper()
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		got := make([]byte, len(want))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != want {
			t.Errorf("read %q, %v; want %q", got, err, want)
		}
	}

	preface := string(http2Preface)
	var bytewise []string
	for i := range preface {
		bytewise = append(bytewise, preface[i:i+1])
	}
	send(l, append(bytewise, "frames")...)
	accept(h2, preface+"frames")

	send(l, "GET /v1/providers HTTP/1.1\r\n")
	accept(h1, "GET /v1/providers HTTP/1.1\r\n")

	send(l, "PRI * HTTP/1.1\r\n") // a prefix of the preface that turns out not to be it
	accept(h1, "PRI * HTTP/1.1\r\n")

	// A client that sends nothing is closed once a short sniff timeout
	// passes; the read deadline only bounds the wait for that.
	sl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()
	sh2, sh1 := splitListener(sl, 100*time.Millisecond)
	defer sh2.Close()
	defer sh1.Close()
	silent := send(sl)
	silent.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("a silent client read %v; want EOF after the sniff timeout", err)
	}

	// Closing one half leaves the other serving.
	h1.Close()
	if _, err := h1.Accept(); err == nil {
		t.Error("Accept on a closed half succeeded")
	}
	send(l, preface)
	accept(h2, preface)

	// Closing the root ends both.
	l.Close()
	if _, err := h2.Accept(); err == nil {
		t.Error("Accept after the root closed succeeded")
	}
}
