package inject

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfSigned returns a PEM certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T, serial int64) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "tokenvault-injector"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

type webhook struct {
	url, certFile, keyFile string
}

// startWebhook runs Serve on loopback with a generated certificate, read
// again at every handshake.
func startWebhook(t *testing.T, cfg Config) *webhook {
	t.Helper()
	dir := t.TempDir()
	w := &webhook{certFile: filepath.Join(dir, "tls.crt"), keyFile: filepath.Join(dir, "tls.key")}
	c, k := selfSigned(t, 1)
	writePair(t, w, c, k)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, cfg, Options{Addr: "127.0.0.1:0", CertFile: w.certFile, KeyFile: w.keyFile,
			Ready: func(a string) { ready <- a }}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	select {
	case a := <-ready:
		w.url = "https://" + a
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not start")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return w
}

func writePair(t *testing.T, w *webhook, certPEM, keyPEM []byte) {
	t.Helper()
	if err := os.WriteFile(w.certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(w.keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
}

// client trusts any certificate but records the one served.
func client(served *[]*x509.Certificate) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, VerifyConnection: func(cs tls.ConnectionState) error {
			if served != nil {
				*served = append(*served, cs.PeerCertificates[0])
			}
			return nil
		}},
	}}
}

func post(t *testing.T, w *webhook, contentType string, body io.Reader) (int, string) {
	t.Helper()
	resp, err := client(nil).Post(w.url+"/mutate", contentType, body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var testCfg = Config{Image: "tokenvault/tokenvault:v0.1.0"}

// What is not an AdmissionReview v1 is answered with a 4xx naming the
// problem, not decoded further.
func TestMutate_BadInput(t *testing.T) {
	w := startWebhook(t, testCfg)
	for _, tc := range []struct {
		name, contentType string
		body              io.Reader
		code              int
		want              string
	}{
		{"garbage", "application/json", strings.NewReader("\x00not json"), 400, "not an AdmissionReview"},
		{"trailing", "application/json", strings.NewReader(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u"}} {}`), 400, "after the AdmissionReview"},
		{"v1beta1", "application/json", strings.NewReader(`{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}`), 400, "want an AdmissionReview of admission.k8s.io/v1"},
		{"no request", "application/json", strings.NewReader(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), 400, "no request"},
		{"yaml", "application/yaml", strings.NewReader("apiVersion: admission.k8s.io/v1"), 415, "want application/json"},
		{"oversized", "application/json", io.MultiReader(strings.NewReader(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":{"x":"`),
			bytes.NewReader(bytes.Repeat([]byte("a"), MaxBody)), strings.NewReader(`"}}}`)), 413, "request body over"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := post(t, w, tc.contentType, tc.body)
			if code != tc.code || !strings.Contains(body, tc.want) {
				t.Errorf("answer %d %q; want %d and %q", code, body, tc.code, tc.want)
			}
		})
	}
	resp, err := client(nil).Get(w.url + "/mutate")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /mutate: %d; want 405", resp.StatusCode)
	}
	resp, err = client(nil).Get(w.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz: %d; want 200", resp.StatusCode)
	}
}

// A renewed certificate is served from the next handshake on; a pair that
// does not load leaves the previous one in service.
func TestServe_ReloadsCertificate(t *testing.T) {
	w := startWebhook(t, testCfg)
	var served []*x509.Certificate
	get := func() int64 {
		t.Helper()
		served = served[:0]
		resp, err := client(&served).Get(w.url + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return served[0].SerialNumber.Int64()
	}
	if s := get(); s != 1 {
		t.Fatalf("serial %d; want 1", s)
	}
	c2, k2 := selfSigned(t, 2)
	writePair(t, w, c2, k2)
	if s := get(); s != 2 {
		t.Errorf("after renewal: serial %d; want 2", s)
	}
	// Half written: the new certificate with the old key.
	c3, _ := selfSigned(t, 3)
	if err := os.WriteFile(w.certFile, c3, 0o600); err != nil {
		t.Fatal(err)
	}
	if s := get(); s != 2 {
		t.Errorf("with a mismatched pair: serial %d; want the previous one, 2", s)
	}
}

func review(t *testing.T, w *webhook, podJSON string) *admissionResponse {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"apiVersion": admissionAPIVersion, "kind": "AdmissionReview",
		"request": map[string]any{"uid": "uid-1", "kind": map[string]string{"group": "", "version": "v1", "kind": "Pod"},
			"resource":  map[string]string{"group": "", "version": "v1", "resource": "pods"},
			"namespace": "ns", "operation": "CREATE", "object": json.RawMessage(podJSON)}})
	code, out := post(t, w, "application/json", bytes.NewReader(body))
	if code != 200 {
		t.Fatalf("answer %d %s", code, out)
	}
	var r admissionReview
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.Response == nil || r.Response.UID != "uid-1" ||
		r.APIVersion != admissionAPIVersion || r.Kind != "AdmissionReview" {
		t.Fatalf("answer %s: %v", out, err)
	}
	return r.Response
}

// Refusals name what to fix; pods not asking for the sidecar, or already
// injected, pass untouched. (The deploy module's tests apply the patches
// and decode the result into the Kubernetes API types.)
func TestMutate_Decisions(t *testing.T) {
	w := startWebhook(t, testCfg)
	podWith := func(ann string) string {
		return `{"metadata":{"generateName":"app-","annotations":{` + ann + `}},"spec":{"containers":[{"name":"app","image":"app"}]}}`
	}
	const keys = `"tokenvault.dev/inject":"true","tokenvault.dev/config-map":"tv","tokenvault.dev/master-key-secret":"mk"`
	for _, tc := range []struct {
		name, pod string
		allowed   bool
		patched   bool
		msg       string
	}{
		{"not annotated", podWith(``), true, false, ""},
		{"inject false", podWith(`"tokenvault.dev/inject":"false"`), true, false, ""},
		{"injected", podWith(keys + `,"tokenvault.dev/status":"injected"`), true, false, ""},
		{"has a tokenvault container", `{"metadata":{"annotations":{` + keys + `}},"spec":{"containers":[{"name":"tokenvault"}]}}`, true, false, ""},
		{"inject yes", podWith(`"tokenvault.dev/inject":"yes"`), false, false, `want "true" or "false"`},
		{"no master key", podWith(`"tokenvault.dev/inject":"true","tokenvault.dev/config-map":"tv"`), false, false, "does not set tokenvault.dev/master-key-secret"},
		{"no settings", podWith(`"tokenvault.dev/inject":"true"`), false, false, "does not set tokenvault.dev/config-map (the ConfigMap holding the sidecar's tokenvault.yaml) and tokenvault.dev/master-key-secret"},
		{"typo", podWith(keys + `,"tokenvault.dev/memory-limt":"1Gi"`), false, false, `unknown annotation "tokenvault.dev/memory-limt"`},
		{"bad secret name", podWith(`"tokenvault.dev/inject":"true","tokenvault.dev/config-map":"tv","tokenvault.dev/master-key-secret":"Master_Key"`), false, false, "not the name of a Kubernetes object"},
		{"bad memory", podWith(keys + `,"tokenvault.dev/memory-limit":"lots"`), false, false, "want a memory quantity"},
		{"small memory", podWith(keys + `,"tokenvault.dev/memory-limit":"16Mi"`), false, false, "at least 32Mi"},
		{"request over limit", podWith(keys + `,"tokenvault.dev/cpu-request":"2","tokenvault.dev/cpu-limit":"500m"`), false, false, "cpu-request (2) is over"},
		{"socket in /", podWith(keys + `,"tokenvault.dev/socket-path":"/grpc.sock"`), false, false, "directory of its own"},
		{"socket over secrets", podWith(keys + `,"tokenvault.dev/socket-path":"/etc/tokenvault/secrets/s.sock"`), false, false, "may not cover"},
		{"socket relative", podWith(keys + `,"tokenvault.dev/socket-path":"run/x.sock"`), false, false, "absolute, clean path"},
		{"port clash", `{"metadata":{"annotations":{` + keys + `}},"spec":{"containers":[{"name":"app","ports":[{"containerPort":7071}]}]}}`, false, false, "uses port 7071"},
		{"volume clash", `{"metadata":{"annotations":{` + keys + `}},"spec":{"containers":[{"name":"app"}],"volumes":[{"name":"tokenvault-socket"}]}}`, false, false, `volume named "tokenvault-socket"`},
		{"mount clash", `{"metadata":{"annotations":{` + keys + `}},"spec":{"containers":[{"name":"app","volumeMounts":[{"name":"x","mountPath":"/run/tokenvault/"}]}]}}`, false, false, "already mounts a volume at /run/tokenvault"},
		{"injects", podWith(keys), true, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := review(t, w, tc.pod)
			if r.Allowed != tc.allowed || (len(r.Patch) > 0) != tc.patched {
				t.Fatalf("allowed %v, patch %s; want allowed %v, patched %v (%+v)", r.Allowed, r.Patch, tc.allowed, tc.patched, r.Result)
			}
			if tc.patched && r.PatchType != "JSONPatch" {
				t.Errorf("patchType %q", r.PatchType)
			}
			if !tc.allowed && (r.Result == nil || r.Result.Code != 400 || !strings.Contains(r.Result.Message, tc.msg)) {
				t.Errorf("refusal %+v; want a message with %q", r.Result, tc.msg)
			}
		})
	}
	// Anything but a pod's creation passes untouched.
	body, _ := json.Marshal(map[string]any{"apiVersion": admissionAPIVersion, "kind": "AdmissionReview",
		"request": map[string]any{"uid": "u2", "kind": map[string]string{"version": "v1", "kind": "Pod"}, "operation": "UPDATE",
			"object": json.RawMessage(podWith(`"tokenvault.dev/inject":"true"`))}})
	if code, out := post(t, w, "application/json", bytes.NewReader(body)); code != 200 || !strings.Contains(out, `"allowed":true`) || strings.Contains(out, "patch") {
		t.Errorf("UPDATE: %d %s; want allowed, no patch", code, out)
	}
}

// The injector's defaults stand in for missing annotations.
func TestMutate_Defaults(t *testing.T) {
	cfg := testCfg
	cfg.ConfigMap, cfg.MasterKeySecret = "tv", "mk"
	ops, err := mutate(cfg, []byte(`{"metadata":{"annotations":{"tokenvault.dev/inject":"true"}},"spec":{"containers":[{"name":"app"}]}}`))
	if err != nil || len(ops) == 0 {
		t.Fatalf("mutate = %v, %v", ops, err)
	}
	b, _ := json.Marshal(ops)
	if !strings.Contains(string(b), `"configMap":{"name":"tv"}`) || !strings.Contains(string(b), `"name":"mk","items":[{"key":"master-key","path":"master-key"}]`) {
		t.Errorf("patch does not use the defaults: %s", b)
	}
}
