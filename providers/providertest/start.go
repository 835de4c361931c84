package providertest

import (
	"net/http"
	"net/http/httptest"
)

type startedServer struct {
	*httptest.Server
	tls bool
}

// Start starts a server with opts on 127.0.0.1 over HTTP, with BaseURL set
// to its address. Close it when done.
func Start(opts Options) *Server { return start(opts, false) }

// StartTLS is like Start over HTTPS with a self-signed certificate; Client
// and Config's HTTPClient trust it.
func StartTLS(opts Options) *Server { return start(opts, true) }

func start(opts Options, tls bool) *Server {
	s := New(opts)
	hs := httptest.NewUnstartedServer(s)
	s.hs = &startedServer{hs, tls} // before any request can read it
	if tls {
		hs.StartTLS()
	} else {
		hs.Start()
	}
	s.mu.Lock()
	s.baseURL = hs.URL
	s.mu.Unlock()
	return s
}

// Close shuts down a server from Start or StartTLS, waiting for requests
// in flight. It does nothing for a server from New.
func (s *Server) Close() {
	if s.hs != nil {
		s.hs.Close()
	}
}

// Client returns an HTTP client for a server from Start or StartTLS (one
// that trusts the certificate of the latter), and http.DefaultClient for a
// server from New.
func (s *Server) Client() *http.Client {
	if s.hs != nil {
		return s.hs.Client()
	}
	return http.DefaultClient
}
