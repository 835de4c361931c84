package inject

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// MaxBody bounds an AdmissionReview's size. The API server keeps objects
// under about 1.5 MiB (its storage's request limit), and a CREATE review
// carries the object once: 3 MiB is ample for any pod it could send.
const MaxBody = 3 << 20

// Handler serves POST /mutate (AdmissionReview v1 in and out) and
// GET /healthz.
func Handler(cfg Config, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("POST /mutate", func(w http.ResponseWriter, r *http.Request) {
		review, code, err := readReview(w, r)
		if err != nil {
			log.Warn("inject: bad request", slog.Int("status", code), slog.String("error", err.Error()))
			http.Error(w, "tokenvault injector: "+err.Error(), code)
			return
		}
		resp := Review(cfg, review.Request)
		logDecision(log, review.Request, resp)
		out, _ := json.Marshal(admissionReview{APIVersion: admissionAPIVersion, Kind: "AdmissionReview", Response: resp})
		w.Header().Set("Content-Type", "application/json")
		w.Write(out)
	})
	return mux
}

// readReview reads a bounded JSON AdmissionReview v1 with a request, or
// says what is wrong with the input and the HTTP status to answer.
func readReview(w http.ResponseWriter, r *http.Request) (*admissionReview, int, error) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return nil, http.StatusUnsupportedMediaType, fmt.Errorf("Content-Type is %.64q; want application/json (an AdmissionReview v1)", r.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, http.StatusRequestEntityTooLarge, fmt.Errorf("request body over %d bytes: no AdmissionReview the API server sends is that large", MaxBody)
		}
		return nil, http.StatusBadRequest, fmt.Errorf("reading the request: %v", err)
	}
	var review admissionReview
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&review); err != nil {
		return nil, http.StatusBadRequest, fmt.Errorf("the body is not an AdmissionReview (JSON): %v", err)
	}
	if dec.More() {
		return nil, http.StatusBadRequest, errors.New("the body holds data after the AdmissionReview")
	}
	if review.APIVersion != admissionAPIVersion || review.Kind != "AdmissionReview" {
		return nil, http.StatusBadRequest, fmt.Errorf("the body is apiVersion %.64q kind %.64q; want an AdmissionReview of %s (admissionReviewVersions: [v1])",
			review.APIVersion, review.Kind, admissionAPIVersion)
	}
	if review.Request == nil || review.Request.UID == "" || len(review.Request.UID) > 128 {
		return nil, http.StatusBadRequest, errors.New("the AdmissionReview has no request (or no request uid)")
	}
	return &review, 0, nil
}

// Review answers one admission request: pods being created are mutated or
// refused; anything else is allowed untouched.
func Review(cfg Config, req *admissionRequest) *admissionResponse {
	resp := &admissionResponse{UID: req.UID, Allowed: true}
	if req.Kind.Group != "" || req.Kind.Version != "v1" || req.Kind.Kind != "Pod" || req.SubResource != "" || req.Operation != "CREATE" {
		return resp
	}
	ops, err := mutate(cfg, req.Object)
	if err != nil {
		resp.Allowed = false
		resp.Result = &status{Status: "Failure", Message: err.Error(), Reason: "BadRequest", Code: http.StatusBadRequest}
		return resp
	}
	if len(ops) > 0 {
		resp.Patch, _ = json.Marshal(ops)
		resp.PatchType = "JSONPatch"
	}
	return resp
}

func logDecision(log *slog.Logger, req *admissionRequest, resp *admissionResponse) {
	var p pod
	_ = json.Unmarshal(req.Object, &p)
	decision := "untouched"
	switch {
	case !resp.Allowed:
		decision = "refused"
	case resp.Patch != nil:
		decision = "injected"
	}
	attrs := []any{slog.String("decision", decision), slog.String("uid", bound(req.UID)),
		slog.String("namespace", bound(req.Namespace)), slog.String("name", bound(p.Metadata.Name+p.Metadata.GenerateName))}
	if resp.Result != nil {
		attrs = append(attrs, slog.String("reason", resp.Result.Message))
	}
	log.Info("inject", attrs...)
}

// bound cuts what the API server sent to the length of a Kubernetes name
// before it is logged.
func bound(s string) string {
	if len(s) > 253 {
		return s[:253]
	}
	return s
}

// Options are the webhook server's.
type Options struct {
	Addr              string
	CertFile, KeyFile string
	// ReloadInterval is how often the certificate files are read again
	// (cert-manager renews them in the mounted Secret; the kubelet updates
	// the files in place within a minute or so). Zero: at every handshake.
	ReloadInterval time.Duration
	// Ready is called with the listening address once it listens.
	Ready func(addr string)
}

// Serve runs the webhook over HTTPS until ctx ends.
func Serve(ctx context.Context, cfg Config, opts Options, log *slog.Logger) error {
	certs, err := newCertReloader(opts.CertFile, opts.KeyFile, opts.ReloadInterval, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           Handler(cfg, log),
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.get},
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	log.Info("tokenvault injector serving", slog.String("addr", ln.Addr().String()), slog.String("image", cfg.Image))
	if opts.Ready != nil {
		opts.Ready(ln.Addr().String())
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	log.Info("tokenvault injector stopped")
	return err
}

// certReloader serves the key pair in certFile and keyFile, read again
// when interval has passed since the last read: a renewed pair is served
// from the next handshake on, and a pair that does not load (half
// written, mismatched) leaves the previous one in service.
type certReloader struct {
	certFile, keyFile string
	interval          time.Duration
	log               *slog.Logger

	mu              sync.Mutex
	cert            *tls.Certificate
	certPEM, keyPEM []byte
	checked         time.Time
}

func newCertReloader(certFile, keyFile string, interval time.Duration, log *slog.Logger) (*certReloader, error) {
	c := &certReloader{certFile: certFile, keyFile: keyFile, interval: interval, log: log}
	if err := c.load(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *certReloader) load() error {
	c.checked = time.Now()
	certPEM, err := os.ReadFile(c.certFile)
	if err != nil {
		return fmt.Errorf("TLS certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(c.keyFile)
	if err != nil {
		return fmt.Errorf("TLS key: %w", err)
	}
	if bytes.Equal(certPEM, c.certPEM) && bytes.Equal(keyPEM, c.keyPEM) {
		return nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// crypto/tls's errors name the problem, never the key's content.
		return fmt.Errorf("TLS key pair %s, %s: %v", c.certFile, c.keyFile, err)
	}
	if c.cert != nil {
		c.log.Info("inject: TLS certificate reloaded", slog.String("cert_file", c.certFile))
	}
	c.cert, c.certPEM, c.keyPEM = &cert, certPEM, keyPEM
	return nil
}

func (c *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.checked) >= c.interval {
		if err := c.load(); err != nil {
			c.log.Warn("inject: keeping the previous TLS certificate", slog.String("error", err.Error()))
		}
	}
	return c.cert, nil
}
