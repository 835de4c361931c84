package deploy

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
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	admissionv1beta1 "k8s.io/api/admission/v1beta1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

// The injector is tested as the API server calls it: the real
// `tokenvault inject` command on loopback, over HTTPS with a generated
// certificate the client verifies, sent AdmissionReview v1 requests built
// from the k8s.io/api types; its patches are applied with a JSON Patch
// library and the result strictly decoded into a corev1.Pod.

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// tokenvaultBin is $TOKENVAULT_BIN (make deploy-test passes the binary it
// built), else one built from the main module for this test run.
func tokenvaultBin(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if p := os.Getenv("TOKENVAULT_BIN"); p != "" {
			binPath, binErr = filepath.Abs(p)
			return
		}
		dir, err := os.MkdirTemp("", "tokenvault-inject-test")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "tokenvault")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/tokenvault")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = err
			binPath = string(out)
		}
	})
	if binErr != nil {
		t.Fatalf("building tokenvault: %v\n%s", binErr, binPath)
	}
	return binPath
}

type injector struct {
	url    string
	client *http.Client
	stderr *bytes.Buffer
}

// startInjector runs `tokenvault inject` on a free loopback port with a
// certificate for 127.0.0.1, and a client that trusts only it.
func startInjector(t *testing.T, extra ...string) *injector {
	t.Helper()
	dir := t.TempDir()
	certPEM, keyPEM := serving(t)
	certFile, keyFile, ready := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ready.json")
	for f, b := range map[string][]byte{certFile: certPEM, keyFile: keyPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, tokenvaultBin(t), append([]string{"inject", "--addr", "127.0.0.1:0",
		"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--image", "tokenvault/tokenvault:v0.1.0", "--ready-file", ready}, extra...)...)
	in := &injector{stderr: &bytes.Buffer{}}
	cmd.Stderr = in.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			t.Logf("injector's log:\n%s", in.stderr)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	var addr struct{ Addr string }
	for {
		if b, err := os.ReadFile(ready); err == nil && json.Unmarshal(b, &addr) == nil && addr.Addr != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the injector did not start:\n%s", in.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	in.url = "https://" + addr.Addr
	in.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	return in
}

func serving(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tokenvault-injector"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func (in *injector) post(t *testing.T, body io.Reader) (int, []byte) {
	t.Helper()
	resp, err := in.client.Post(in.url+"/mutate", "application/json", body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// review sends pod's creation and returns the strictly decoded response.
func (in *injector) review(t *testing.T, pod *corev1.Pod) *admissionv1.AdmissionResponse {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	req := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       "6f0c1a2e-0000-4000-8000-000000000001",
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: "shop", Operation: admissionv1.Create,
			Object: runtime.RawExtension{Raw: raw},
		},
	}
	body, _ := json.Marshal(req)
	code, out := in.post(t, bytes.NewReader(body))
	if code != http.StatusOK {
		t.Fatalf("answer %d: %s", code, out)
	}
	var resp admissionv1.AdmissionReview
	if err := strictJSON(out, &resp); err != nil {
		t.Fatalf("the answer is not a strict AdmissionReview: %v\n%s", err, out)
	}
	if resp.APIVersion != "admission.k8s.io/v1" || resp.Kind != "AdmissionReview" || resp.Response == nil || resp.Response.UID != req.Request.UID {
		t.Fatalf("answer %s: want an AdmissionReview v1 answering uid %s", out, req.Request.UID)
	}
	return resp.Response
}

func strictJSON(b []byte, into any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		return err
	}
	if dec.More() {
		return io.ErrUnexpectedEOF
	}
	return nil
}

// admit applies the answer's patch to pod, as the API server does, and
// decodes the result strictly.
func admit(t *testing.T, pod *corev1.Pod, resp *admissionv1.AdmissionResponse) *corev1.Pod {
	t.Helper()
	if !resp.Allowed {
		t.Fatalf("refused: %+v", resp.Result)
	}
	if resp.Patch == nil {
		return pod
	}
	if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("patchType %v; want JSONPatch", resp.PatchType)
	}
	patch, err := jsonpatch.DecodePatch(resp.Patch)
	if err != nil {
		t.Fatalf("the patch is not a JSON Patch: %v\n%s", err, resp.Patch)
	}
	raw, _ := json.Marshal(pod)
	out, err := patch.Apply(raw)
	if err != nil {
		t.Fatalf("the patch does not apply: %v\n%s", err, resp.Patch)
	}
	var got corev1.Pod
	if err := strictJSON(out, &got); err != nil {
		t.Fatalf("the patched pod is not a strict corev1.Pod: %v\n%s", err, out)
	}
	return &got
}

// appPod is an application's pod as its owner writes it, asking for the
// sidecar.
func appPod(ann map[string]string) *corev1.Pod {
	t, f := true, false
	uid := int64(1000)
	sc := &corev1.SecurityContext{RunAsNonRoot: &t, RunAsUser: &uid, RunAsGroup: &uid, ReadOnlyRootFilesystem: &t,
		AllowPrivilegeEscalation: &f, Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	a := map[string]string{"tokenvault.dev/inject": "true", "tokenvault.dev/config-map": "tokenvault-config",
		"tokenvault.dev/master-key-secret": "tokenvault-master-key", "tokenvault.dev/providers-secret": "tokenvault-providers"}
	for k, v := range ann {
		if v == "" {
			delete(a, k)
		} else {
			a[k] = v
		}
	}
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{GenerateName: "app-7d9c-", Namespace: "shop", Labels: map[string]string{"app.kubernetes.io/name": "app"}, Annotations: a},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: &t, SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
			Containers: []corev1.Container{{Name: "app", Image: "your-app:latest", SecurityContext: sc,
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}},
		},
	}
}

func asDeployment(p *corev1.Pod) *appsv1.Deployment {
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "injected"},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{ObjectMeta: p.ObjectMeta, Spec: p.Spec}}}
}

// An injected pod holds every invariant of the shipped manifests, and its
// sidecar is the kustomize base's.
func TestInject_AnnotatedPod(t *testing.T) {
	in := startInjector(t)
	pod := appPod(nil)
	got := admit(t, pod, in.review(t, pod))
	raw, _ := json.Marshal(got)
	checkInvariants(t, &rendered{deployments: []*appsv1.Deployment{asDeployment(got)}, raw: raw})

	sc := &got.Spec.InitContainers[0]
	if sc.Name != "tokenvault" || got.Annotations["tokenvault.dev/status"] != "injected" {
		t.Fatalf("init containers %v, status %q; want tokenvault first and the status annotation", got.Spec.InitContainers, got.Annotations["tokenvault.dev/status"])
	}
	if sc.Image != "tokenvault/tokenvault:v0.1.0" {
		t.Errorf("image %q; want the injector's --image", sc.Image)
	}
	// The same sidecar as the base's (deploy/kubernetes/base).
	base := sidecar(renderKustomize(t, "kubernetes/overlays/many").deployments[0])
	for what, pair := range map[string][2]any{
		"args": {sc.Args, base.Args}, "env": {sc.Env, base.Env}, "resources": {sc.Resources, base.Resources},
		"securityContext": {sc.SecurityContext, base.SecurityContext}, "restartPolicy": {sc.RestartPolicy, base.RestartPolicy},
		"probe timings": {probeTimings(sc), probeTimings(base)},
	} {
		if !reflect.DeepEqual(pair[0], pair[1]) {
			t.Errorf("the injected sidecar's %s differ from the base's:\n%+v\n%+v", what, pair[0], pair[1])
		}
	}
	// Secrets by reference: the projected volume names the Secrets.
	var projected *corev1.ProjectedVolumeSource
	for _, v := range got.Spec.Volumes {
		if v.Name == "tokenvault-secrets" {
			projected = v.Projected
		}
	}
	if projected == nil || len(projected.Sources) != 2 || projected.Sources[0].Secret.Name != "tokenvault-master-key" ||
		projected.Sources[1].Secret.Name != "tokenvault-providers" || *projected.DefaultMode != 0o400 {
		t.Errorf("secrets volume %+v; want the master key and providers Secrets, mode 0400", projected)
	}
	for _, c := range got.Spec.Containers {
		if !hasEnv(c, "TOKENVAULT_ADDR", "unix:///run/tokenvault/grpc.sock") {
			t.Errorf("%s: TOKENVAULT_ADDR is not the socket", c.Name)
		}
	}
	// The Secrets' files are mode 0400 (the sidecar refuses a master key
	// others may read): the sidecar's uid reads them through the fsGroup.
	if fg := got.Spec.SecurityContext.FSGroup; fg == nil || *fg != 65532 || got.Spec.SecurityContext.RunAsNonRoot == nil {
		t.Errorf("pod securityContext %+v; want fsGroup 65532 added beside what was there", got.Spec.SecurityContext)
	}

	// Idempotent: the injected pod comes back untouched, so a second pass
	// (reinvocation, a retried request) changes nothing.
	again := in.review(t, got)
	if !again.Allowed || again.Patch != nil || again.PatchType != nil {
		t.Errorf("second pass: allowed %v, patch %s; want allowed with no patch", again.Allowed, again.Patch)
	}
	if twice := admit(t, got, again); !reflect.DeepEqual(twice, got) {
		t.Error("injecting twice differs from injecting once")
	}
}

func probeTimings(c *corev1.Container) [3][4]int32 {
	var out [3][4]int32
	for i, p := range []*corev1.Probe{c.StartupProbe, c.LivenessProbe, c.ReadinessProbe} {
		out[i] = [4]int32{p.PeriodSeconds, p.TimeoutSeconds, p.FailureThreshold, p.InitialDelaySeconds}
	}
	return out
}

func hasEnv(c corev1.Container, name, value string) bool {
	for _, e := range c.Env {
		if e.Name == name && e.Value == value {
			return true
		}
	}
	return false
}

// The annotations shape the sidecar; existing init containers, env and
// mounts are kept.
func TestInject_Annotations(t *testing.T) {
	in := startInjector(t)
	pod := appPod(map[string]string{
		"tokenvault.dev/socket-path": "/var/run/tv/api.sock", "tokenvault.dev/memory-limit": "512Mi", "tokenvault.dev/memory-request": "256Mi",
		"tokenvault.dev/cpu-request": "100m", "tokenvault.dev/cpu-limit": "2", "tokenvault.dev/image": "registry.example/tokenvault:v0.2.0",
		"tokenvault.dev/data-claim": "tokenvault-data", "tokenvault.dev/etcd-tls-secret": "tokenvault-etcd-client",
		"tokenvault.dev/providers-secret": "",
	})
	pod.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "your-app:latest"}}
	fsGroup := int64(2000)
	pod.Spec.SecurityContext.FSGroup = &fsGroup
	app := pod.Spec.Containers[0]
	app.Env = []corev1.EnvVar{{Name: "TOKENVAULT_ADDR", Value: "unix:///var/run/tv/api.sock"}}
	app.VolumeMounts = []corev1.VolumeMount{{Name: "cache", MountPath: "/cache"}}
	worker := *app.DeepCopy()
	worker.Name, worker.Env, worker.Ports = "worker", []corev1.EnvVar{{Name: "QUEUE", Value: "jobs"}}, nil
	pod.Spec.Containers = []corev1.Container{app, worker}
	pod.Spec.Volumes = []corev1.Volume{{Name: "cache", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}

	got := admit(t, pod, in.review(t, pod))
	if n := len(got.Spec.InitContainers); n != 2 || got.Spec.InitContainers[0].Name != "tokenvault" || got.Spec.InitContainers[1].Name != "migrate" {
		t.Fatalf("init containers %d; want tokenvault, then migrate", n)
	}
	sc := got.Spec.InitContainers[0]
	if sc.Image != "registry.example/tokenvault:v0.2.0" {
		t.Errorf("image %q; want the annotation's", sc.Image)
	}
	want := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("256Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("512Mi")},
	}
	if !reflect.DeepEqual(sc.Resources, want) || !hasEnv(sc, "GOMEMLIMIT", "460MiB") {
		t.Errorf("resources %+v, env %+v; want the annotations' and GOMEMLIMIT=460MiB", sc.Resources, sc.Env)
	}
	mounts := map[string]string{}
	for _, m := range sc.VolumeMounts {
		mounts[m.MountPath] = m.Name
	}
	if mounts["/var/run/tv"] != "tokenvault-socket" || mounts["/var/lib/tokenvault"] != "tokenvault-data" || mounts["/etc/tokenvault/etcd"] != "tokenvault-etcd" {
		t.Errorf("sidecar mounts %v; want the socket, data and etcd volumes", mounts)
	}
	for _, c := range got.Spec.Containers {
		shared := false
		for _, m := range c.VolumeMounts {
			shared = shared || (m.Name == "tokenvault-socket" && m.MountPath == "/var/run/tv")
		}
		if !shared {
			t.Errorf("%s does not mount the socket volume at /var/run/tv", c.Name)
		}
		if !hasEnv(c, "TOKENVAULT_ADDR", "unix:///var/run/tv/api.sock") {
			t.Errorf("%s: TOKENVAULT_ADDR %v", c.Name, c.Env)
		}
	}
	if len(got.Spec.Containers[0].Env) != 1 || len(got.Spec.Containers[1].Env) != 2 || len(got.Spec.Containers[0].VolumeMounts) != 2 {
		t.Errorf("the app's own env and mounts were not kept: %+v", got.Spec.Containers)
	}
	if got.Spec.SecurityContext.FSGroup == nil || *got.Spec.SecurityContext.FSGroup != 2000 {
		t.Errorf("pod securityContext %+v; want the pod's own fsGroup kept", got.Spec.SecurityContext)
	}
	for _, v := range got.Spec.Volumes {
		if v.Name == "tokenvault-data" && (v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != "tokenvault-data") ||
			v.Name == "tokenvault-etcd" && (v.Secret == nil || v.Secret.SecretName != "tokenvault-etcd-client") {
			t.Errorf("volume %+v", v)
		}
	}
}

// Pods that do not ask are untouched; a pod that asks without what the
// sidecar needs is refused with a message saying what to set.
func TestInject_UntouchedAndRefused(t *testing.T) {
	in := startInjector(t)
	plain := appPod(map[string]string{"tokenvault.dev/inject": "", "tokenvault.dev/config-map": "", "tokenvault.dev/master-key-secret": "", "tokenvault.dev/providers-secret": ""})
	if r := in.review(t, plain); !r.Allowed || r.Patch != nil || r.PatchType != nil {
		t.Errorf("a pod without the annotation: allowed %v, patch %s; want allowed untouched", r.Allowed, r.Patch)
	}
	off := appPod(map[string]string{"tokenvault.dev/inject": "false"})
	if r := in.review(t, off); !r.Allowed || r.Patch != nil {
		t.Errorf("inject: false: allowed %v, patch %s; want allowed untouched", r.Allowed, r.Patch)
	}
	r := in.review(t, appPod(map[string]string{"tokenvault.dev/master-key-secret": ""}))
	if r.Allowed || r.Patch != nil || r.Result == nil || r.Result.Code != 400 ||
		!strings.Contains(r.Result.Message, "does not set tokenvault.dev/master-key-secret (the Secret whose key master-key is the master key)") {
		t.Errorf("no master key Secret: %+v; want refused, saying which annotation to set", r.Result)
	}
	// The injector's defaults stand in for the annotations.
	dflt := startInjector(t, "--config-map", "tokenvault-config", "--master-key-secret", "shared-master-key")
	bare := appPod(map[string]string{"tokenvault.dev/master-key-secret": "", "tokenvault.dev/config-map": ""})
	bare.Spec.SecurityContext = nil
	got := admit(t, bare, dflt.review(t, bare))
	raw, _ := json.Marshal(got)
	if !bytes.Contains(raw, []byte(`"name":"shared-master-key"`)) {
		t.Errorf("--master-key-secret was not used: %s", raw)
	}
	if sc := got.Spec.SecurityContext; sc == nil || sc.FSGroup == nil || *sc.FSGroup != 65532 {
		t.Errorf("a pod without a securityContext: %+v; want fsGroup 65532", sc)
	}
}

// What is not an AdmissionReview v1 is answered with an error naming the
// problem.
func TestInject_BadRequests(t *testing.T) {
	in := startInjector(t)
	old, _ := json.Marshal(admissionv1beta1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1beta1", Kind: "AdmissionReview"},
		Request:  &admissionv1beta1.AdmissionRequest{UID: "u", Operation: admissionv1beta1.Create}})
	// Just over the injector's bound (3 MiB), so the server reads it all
	// and answers rather than resetting the connection mid-upload.
	huge := io.MultiReader(strings.NewReader(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":{"metadata":{"annotations":{"a":"`),
		io.LimitReader(zeros{}, 3<<20+64<<10), strings.NewReader(`"}}}}}`))
	for _, tc := range []struct {
		name string
		body io.Reader
		code int
		want string
	}{
		{"garbage", strings.NewReader("<AdmissionReview/>"), 400, "not an AdmissionReview (JSON)"},
		{"v1beta1", bytes.NewReader(old), 400, `apiVersion "admission.k8s.io/v1beta1"`},
		{"oversized", huge, 413, "request body over"},
	} {
		if code, out := in.post(t, tc.body); code != tc.code || !strings.Contains(string(out), tc.want) {
			t.Errorf("%s: %d %s; want %d and %q", tc.name, code, out, tc.code, tc.want)
		}
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = '0'
	}
	return len(p), nil
}

// The overlays' sidecar configs work unchanged in an injected pod: every
// file they name is in a volume the injector mounts, the socket is where
// the app looks, and the listeners are on the injected ports.
func TestInject_OverlayConfigsFit(t *testing.T) {
	in := startInjector(t)
	for overlay, ann := range map[string]map[string]string{
		"single": {"tokenvault.dev/data-claim": "tokenvault-data"},
		"many":   {"tokenvault.dev/etcd-tls-secret": "tokenvault-etcd-client"},
	} {
		t.Run(overlay, func(t *testing.T) {
			b, err := os.ReadFile("kubernetes/overlays/" + overlay + "/tokenvault.yaml")
			if err != nil {
				t.Fatal(err)
			}
			var cfg struct {
				PublicAddr    string `json:"public_addr"`
				HealthAddr    string `json:"health_addr"`
				MetricsAddr   string `json:"metrics_addr"`
				DataDir       string `json:"data_dir"`
				MasterKeyFile string `json:"master_key_file"`
				Store         *struct {
					TLS map[string]string `json:"tls"`
				} `json:"store"`
				Auth struct {
					UnixSocket struct {
						Path string `json:"path"`
					} `json:"unix_socket"`
				} `json:"auth"`
				Providers map[string]struct {
					ClientSecretFile string `json:"client_secret_file"`
				} `json:"providers"`
			}
			if err := yaml.Unmarshal(b, &cfg); err != nil {
				t.Fatal(err)
			}
			pod := appPod(ann)
			got := admit(t, pod, in.review(t, pod))
			sc := got.Spec.InitContainers[0]
			// Which volume holds path, in the sidecar.
			volumeOf := func(path string) string {
				best := corev1.VolumeMount{}
				for _, m := range sc.VolumeMounts {
					if strings.HasPrefix(path, m.MountPath+"/") && len(m.MountPath) > len(best.MountPath) {
						best = m
					}
				}
				return best.Name
			}
			want := map[string]string{cfg.MasterKeyFile: "tokenvault-secrets"}
			for _, p := range cfg.Providers {
				want[p.ClientSecretFile] = "tokenvault-secrets"
			}
			if cfg.Store != nil {
				for _, f := range cfg.Store.TLS {
					want[f] = "tokenvault-etcd"
				}
			}
			if cfg.DataDir != "" {
				want[cfg.DataDir+"/tokenvault.db"] = "tokenvault-data"
			}
			want[sc.Args[len(sc.Args)-1]] = "tokenvault-config"
			for path, vol := range want {
				if got := volumeOf(path); got != vol {
					t.Errorf("%s is in volume %q of the injected sidecar; want %q", path, got, vol)
				}
			}
			if cfg.Auth.UnixSocket.Path != "/run/tokenvault/grpc.sock" || !hasEnv(got.Spec.Containers[0], "TOKENVAULT_ADDR", "unix://"+cfg.Auth.UnixSocket.Path) {
				t.Errorf("the config's socket %q is not where the app is told to look", cfg.Auth.UnixSocket.Path)
			}
			ports := map[string]int32{}
			for _, p := range sc.Ports {
				ports[p.Name] = p.ContainerPort
			}
			for addr, port := range map[string]string{cfg.PublicAddr: "tv-public", cfg.HealthAddr: "tv-health", cfg.MetricsAddr: "tv-metrics"} {
				if _, p, _ := net.SplitHostPort(addr); p != itoa(ports[port]) {
					t.Errorf("the config listens on %s; the injected port %s is %d", addr, port, ports[port])
				}
			}
		})
	}
}
