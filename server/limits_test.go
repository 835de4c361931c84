package server_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/server"
)

// rawStream opens an HTTP/2 stream on conn as an attacker would, ignoring
// the server's advertised header-list limit (grpc-go's client honours it
// and would refuse to send), with pad bytes of extra metadata and no API
// key. It returns what the server answered on the stream: "reset",
// "closed" (the connection), or "grpc-status N" (the call reached the
// access check).
func rawStream(t *testing.T, conn net.Conn, streamID uint32, pad int) string {
	t.Helper()
	fr := http2.NewFramer(conn, conn)
	if streamID == 1 {
		if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
			t.Fatal(err)
		}
		if err := fr.WriteSettings(); err != nil {
			t.Fatal(err)
		}
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":authority", "bufnet"},
		{":path", tvv1.TokenVaultService_GetAccessToken_FullMethodName},
		{"content-type", "application/grpc"}, {"te", "trailers"},
		{"x-pad", strings.Repeat("p", pad)},
	} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	b := block.Bytes()
	const frag = 16 << 10 // the default SETTINGS_MAX_FRAME_SIZE
	first := b[:min(frag, len(b))]
	b = b[len(first):]
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: streamID, BlockFragment: first, EndHeaders: len(b) == 0}); err != nil {
		return "closed"
	}
	for len(b) > 0 {
		n := min(frag, len(b))
		if err := fr.WriteContinuation(streamID, n == len(b), b[:n]); err != nil {
			return "closed"
		}
		b = b[n:]
	}
	// An empty request: the unary access check runs once it is in.
	if err := fr.WriteData(streamID, true, make([]byte, 5)); err != nil {
		return "closed"
	}
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	for {
		f, err := fr.ReadFrame()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) {
			return "closed"
		}
		if err != nil {
			return "read: " + err.Error()
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == streamID {
				return "reset"
			}
		case *http2.GoAwayFrame:
			return "goaway"
		case *http2.MetaHeadersFrame:
			if f.StreamID == streamID {
				for _, hf := range f.RegularFields() {
					if hf.Name == "grpc-status" {
						return "grpc-status " + hf.Value
					}
				}
			}
		}
	}
}

// TestServer_OversizedMetadata_Refused: a caller with no key sending more
// metadata than MaxHeaderListSize is refused before the access check runs
// (its stream reset, or for a flood its connection closed: nothing of it is
// kept); metadata under the limit reaches the access check as usual
// (UNAUTHENTICATED); and another caller is served meanwhile.
func TestServer_OversizedMetadata_Refused(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	id := e.connect("alice")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, tc := range []struct {
		pad  int
		want []string
	}{
		{server.MaxHeaderListSize / 2, []string{"grpc-status 16"}},
		{server.MaxHeaderListSize + 1, []string{"reset", "closed"}},
		{1 << 20, []string{"reset", "closed"}},
	} {
		conn, err := e.lis.DialContext(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := rawStream(t, conn, 1, tc.pad); !slices.Contains(tc.want, got) {
			t.Errorf("%d bytes of metadata without a key: server answered %q; want one of %q", tc.pad, got, tc.want)
		}
		conn.Close()
		// Other callers are served.
		if _, err := e.api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id}); err != nil {
			t.Errorf("another caller's GetAccessToken = %v", err)
		}
	}
	if _, err := healthpb.NewHealthClient(e.conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health check = %v", err)
	}
}
