package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// The sidecar's ports, by listener (cmd/tokenvault: public_addr,
// health_addr, metrics_addr in the overlays' configs); the API listens on
// 127.0.0.1:7070 and a unix socket and must never be a container port.
const (
	apiPort     = 7070
	publicPort  = 7071
	healthPort  = 7072
	metricsPort = 7073
)

// rendered is one rendered manifest set, decoded into its API types.
type rendered struct {
	deployments []*appsv1.Deployment
	services    []*corev1.Service
	ingresses   []*networkingv1.Ingress
	policies    []*networkingv1.NetworkPolicy
	pdbs        []*policyv1.PodDisruptionBudget
	pvcs        []*corev1.PersistentVolumeClaim
	configMaps  []*corev1.ConfigMap
	// The injector's (deploy/kubernetes/injector).
	namespaces      []*corev1.Namespace
	serviceAccounts []*corev1.ServiceAccount
	webhooks        []*admissionregistrationv1.MutatingWebhookConfiguration
	certificates    []*certificate
	issuers         []*issuer
	raw             []byte
}

// cert-manager's Certificate and Issuer (cert-manager.io/v1) are not in
// k8s.io/api: these are the fields the manifests use, decoded as strictly
// (a field not listed here fails the test, so it is checked by hand).
type certificate struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            struct {
		SecretName  string   `json:"secretName"`
		DNSNames    []string `json:"dnsNames"`
		Duration    string   `json:"duration"`
		RenewBefore string   `json:"renewBefore"`
		PrivateKey  struct {
			Algorithm      string `json:"algorithm"`
			Size           int    `json:"size"`
			RotationPolicy string `json:"rotationPolicy"`
		} `json:"privateKey"`
		IssuerRef struct {
			Name string `json:"name"`
			Kind string `json:"kind"`
		} `json:"issuerRef"`
	} `json:"spec"`
}

type issuer struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            struct {
		SelfSigned *struct{} `json:"selfSigned"`
	} `json:"spec"`
}

func renderKustomize(t *testing.T, dir string) *rendered {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := m.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	return decodeAll(t, out)
}

// decodeAll strictly decodes every document of a multi-document YAML
// stream into its k8s.io/api type: a field the type does not know (a typo,
// a field of another API version) fails the test.
func decodeAll(t *testing.T, stream []byte) *rendered {
	t.Helper()
	r := &rendered{raw: stream}
	for i, doc := range bytes.Split(stream, []byte("\n---\n")) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		var obj any
		switch head.APIVersion + " " + head.Kind {
		case "apps/v1 Deployment":
			d := &appsv1.Deployment{}
			r.deployments, obj = append(r.deployments, d), d
		case "v1 Service":
			s := &corev1.Service{}
			r.services, obj = append(r.services, s), s
		case "networking.k8s.io/v1 Ingress":
			in := &networkingv1.Ingress{}
			r.ingresses, obj = append(r.ingresses, in), in
		case "networking.k8s.io/v1 NetworkPolicy":
			p := &networkingv1.NetworkPolicy{}
			r.policies, obj = append(r.policies, p), p
		case "policy/v1 PodDisruptionBudget":
			p := &policyv1.PodDisruptionBudget{}
			r.pdbs, obj = append(r.pdbs, p), p
		case "v1 PersistentVolumeClaim":
			p := &corev1.PersistentVolumeClaim{}
			r.pvcs, obj = append(r.pvcs, p), p
		case "v1 ConfigMap":
			c := &corev1.ConfigMap{}
			r.configMaps, obj = append(r.configMaps, c), c
		case "v1 Namespace":
			n := &corev1.Namespace{}
			r.namespaces, obj = append(r.namespaces, n), n
		case "v1 ServiceAccount":
			a := &corev1.ServiceAccount{}
			r.serviceAccounts, obj = append(r.serviceAccounts, a), a
		case "admissionregistration.k8s.io/v1 MutatingWebhookConfiguration":
			w := &admissionregistrationv1.MutatingWebhookConfiguration{}
			r.webhooks, obj = append(r.webhooks, w), w
		case "cert-manager.io/v1 Certificate":
			c := &certificate{}
			r.certificates, obj = append(r.certificates, c), c
		case "cert-manager.io/v1 Issuer":
			i := &issuer{}
			r.issuers, obj = append(r.issuers, i), i
		case "v1 Secret":
			t.Errorf("document %d is a Secret: secrets are created by the operator, never shipped", i)
			continue
		default:
			t.Fatalf("document %d: unexpected %s %s", i, head.APIVersion, head.Kind)
		}
		if err := strictDecode(doc, obj); err != nil {
			t.Errorf("document %d (%s): %v", i, head.Kind, err)
		}
	}
	return r
}

func strictDecode(doc []byte, into any) error {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("trailing data after the object")
	}
	return nil
}

func TestKustomize_Overlays(t *testing.T) {
	for _, overlay := range []string{"single", "many"} {
		t.Run(overlay, func(t *testing.T) {
			r := renderKustomize(t, "kubernetes/overlays/"+overlay)
			checkInvariants(t, r)
			if len(r.deployments) != 1 {
				t.Fatalf("%d Deployments; want 1", len(r.deployments))
			}
			d := r.deployments[0]
			switch overlay {
			case "single":
				if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
					t.Errorf("single: replicas %v, strategy %q; want 1 and Recreate (bbolt's file lock)", d.Spec.Replicas, d.Spec.Strategy.Type)
				}
				if len(r.pvcs) != 1 || !usesClaim(d, r.pvcs[0].Name) {
					t.Errorf("single: the sidecar's data is not on the PersistentVolumeClaim")
				}
				if len(r.pdbs) != 0 {
					t.Errorf("single: a PodDisruptionBudget for one replica blocks every drain")
				}
				if !configHas(r, "data_dir: /var/lib/tokenvault/data") {
					t.Error("single: the config does not keep its data on the volume")
				}
			case "many":
				if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
					t.Errorf("many: replicas %v; want several", d.Spec.Replicas)
				}
				if len(r.pdbs) != 1 {
					t.Errorf("many: %d PodDisruptionBudgets; want 1", len(r.pdbs))
				}
				if len(r.pvcs) != 0 {
					t.Error("many: replicas share etcd, not a volume")
				}
				if !configHas(r, "kind: etcd") {
					t.Error("many: the config does not use the etcd store")
				}
			}
		})
	}
}

func usesClaim(d *appsv1.Deployment, claim string) bool {
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == claim {
			for _, m := range sidecar(d).VolumeMounts {
				if m.Name == v.Name {
					return true
				}
			}
		}
	}
	return false
}

func configHas(r *rendered, s string) bool {
	for _, c := range r.configMaps {
		if strings.Contains(c.Data["tokenvault.yaml"], s) {
			return true
		}
	}
	return false
}

// sidecar returns the tokenvault container of d's pod, or nil.
func sidecar(d *appsv1.Deployment) *corev1.Container {
	spec := &d.Spec.Template.Spec
	for i := range spec.InitContainers {
		if spec.InitContainers[i].Name == "tokenvault" {
			return &spec.InitContainers[i]
		}
	}
	for i := range spec.Containers {
		if spec.Containers[i].Name == "tokenvault" {
			return &spec.Containers[i]
		}
	}
	return nil
}

// checkInvariants holds for every rendering: the sidecar is a native
// sidecar with probes on the health listener and a locked-down security
// context, the API is never a port of anything, Services and Ingresses
// reach only the public listener, and no secret value is written out.
func checkInvariants(t *testing.T, r *rendered) {
	t.Helper()
	for _, d := range r.deployments {
		spec := d.Spec.Template.Spec
		sc := sidecar(d)
		if sc == nil {
			t.Errorf("Deployment %s has no tokenvault container", d.Name)
			continue
		}
		isInit := false
		for _, c := range spec.InitContainers {
			isInit = isInit || c.Name == sc.Name
		}
		if !isInit || sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			t.Errorf("%s: the sidecar is not a native sidecar (an init container with restartPolicy: Always)", d.Name)
		}
		ports := map[string]int32{}
		for _, p := range sc.Ports {
			ports[p.Name] = p.ContainerPort
			if p.ContainerPort == apiPort {
				t.Errorf("%s: the token API's port %d is a container port", d.Name, apiPort)
			}
		}
		for name, p := range map[string]*corev1.Probe{"startup": sc.StartupProbe, "liveness": sc.LivenessProbe, "readiness": sc.ReadinessProbe} {
			if p == nil {
				t.Errorf("%s: no %s probe", d.Name, name)
				continue
			}
			if got := probePort(p, ports); got != healthPort {
				t.Errorf("%s: the %s probe targets port %d; want the health listener (%d)", d.Name, name, got, healthPort)
			}
		}
		for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
			checkSecurityContext(t, d.Name+"/"+c.Name, c.SecurityContext)
		}
		if spec.SecurityContext == nil || spec.SecurityContext.RunAsNonRoot == nil || !*spec.SecurityContext.RunAsNonRoot {
			t.Errorf("%s: the pod does not require non-root", d.Name)
		}
		if mem := sc.Resources.Limits.Memory(); mem.IsZero() || sc.Resources.Requests.Memory().IsZero() || sc.Resources.Requests.Cpu().IsZero() {
			t.Errorf("%s: the sidecar's memory limit and requests must be set", d.Name)
		} else if !gomemlimitFits(sc, mem.Value()) {
			t.Errorf("%s: GOMEMLIMIT is not set between 80%% and 95%% of the memory limit %s", d.Name, mem)
		}
		if !mountsSecretFile(d, sc, "master-key") {
			t.Errorf("%s: the master key is not mounted from a Secret", d.Name)
		}
		for _, e := range sc.Env {
			if e.Value != "" && looksSecret(e.Name) {
				t.Errorf("%s: env %s holds a literal value; secrets come from files", d.Name, e.Name)
			}
		}
		// The app reaches the API over the shared socket volume.
		if !sharesSocket(d) {
			t.Errorf("%s: the app containers do not share the sidecar's socket volume", d.Name)
		}
	}
	for _, s := range r.services {
		for _, p := range s.Spec.Ports {
			if p.TargetPort != intstr.FromString("public") && p.TargetPort != intstr.FromInt32(publicPort) {
				t.Errorf("Service %s exposes target port %s; only the public listener may be a Service's", s.Name, p.TargetPort.String())
			}
		}
	}
	for _, in := range r.ingresses {
		for _, rule := range in.Spec.Rules {
			for _, p := range rule.HTTP.Paths {
				if !strings.HasPrefix(p.Path, "/oauth/callback/") && !strings.HasPrefix(p.Path, "/connect/") {
					t.Errorf("Ingress %s routes %s; only the callback (and connect pages) go to the sidecar", in.Name, p.Path)
				}
			}
		}
	}
	for _, p := range r.policies {
		for _, rule := range p.Spec.Ingress {
			for _, port := range rule.Ports {
				if port.Port != nil && (port.Port.IntValue() == apiPort || port.Port.StrVal == "api") {
					t.Errorf("NetworkPolicy %s admits the API port", p.Name)
				}
			}
		}
	}
	// No secret value, not even a placeholder: nothing like a key.
	// (A checksum annotation is a hash of the config, not a secret.)
	if m := secretLiteral.Find(checksumLine.ReplaceAll(r.raw, nil)); m != nil {
		t.Errorf("the rendering holds what looks like a secret value: %q", m)
	}
}

// secretLiteral matches values that look like keys or tokens: a master key
// in base64 or hex, an API key, a client secret assignment.
var secretLiteral = regexp.MustCompile(`(?i)(tvk_[a-z0-9]{8,}|whsec_[A-Za-z0-9+/=]{8,}|[A-Za-z0-9+/]{43}=|\b[0-9a-f]{64}\b|client_secret:\s*\S|password:\s*\S|-----BEGIN)`)

var checksumLine = regexp.MustCompile(`(?m)^\s*checksum/[a-z]+: [0-9a-f]{64}$`)

func looksSecret(name string) bool {
	n := strings.ToUpper(name)
	return strings.Contains(n, "KEY") || strings.Contains(n, "SECRET") || strings.Contains(n, "PASSWORD") || strings.Contains(n, "TOKEN")
}

func probePort(p *corev1.Probe, named map[string]int32) int32 {
	var port intstr.IntOrString
	switch {
	case p.HTTPGet != nil:
		port = p.HTTPGet.Port
	case p.GRPC != nil:
		return p.GRPC.Port
	case p.TCPSocket != nil:
		port = p.TCPSocket.Port
	case p.Exec != nil:
		// tokenvault health --addr 127.0.0.1:7072
		for i, a := range p.Exec.Command {
			if a == "--addr" && i+1 < len(p.Exec.Command) && strings.HasSuffix(p.Exec.Command[i+1], fmt.Sprintf(":%d", healthPort)) {
				return healthPort
			}
		}
		return -1
	}
	if port.Type == intstr.String {
		return named[port.StrVal]
	}
	return port.IntVal
}

func checkSecurityContext(t *testing.T, who string, sc *corev1.SecurityContext) {
	t.Helper()
	switch {
	case sc == nil:
		t.Errorf("%s: no securityContext", who)
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
		t.Errorf("%s: runAsNonRoot is not set", who)
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Errorf("%s: the root filesystem is writable", who)
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Errorf("%s: privilege escalation is allowed", who)
	case sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) > 0:
		t.Errorf("%s: capabilities are not all dropped", who)
	case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Errorf("%s: seccomp is not RuntimeDefault", who)
	}
}

// gomemlimitFits reports whether the container's GOMEMLIMIT is 80-95% of
// limit bytes.
func gomemlimitFits(c *corev1.Container, limit int64) bool {
	for _, e := range c.Env {
		if e.Name != "GOMEMLIMIT" {
			continue
		}
		var n int64
		var unit string
		if _, err := fmt.Sscanf(e.Value, "%d%s", &n, &unit); err != nil {
			return false
		}
		mult := map[string]int64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit]
		v := n * mult
		return v >= limit*80/100 && v <= limit*95/100
	}
	return false
}

// mountsSecretFile reports whether c mounts a Secret (directly or
// projected) that provides a file named file.
func mountsSecretFile(d *appsv1.Deployment, c *corev1.Container, file string) bool {
	mounted := map[string]bool{}
	for _, m := range c.VolumeMounts {
		mounted[m.Name] = true
	}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if !mounted[v.Name] {
			continue
		}
		if v.Secret != nil {
			for _, it := range v.Secret.Items {
				if it.Path == file {
					return true
				}
			}
		}
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.Secret == nil {
					continue
				}
				for _, it := range s.Secret.Items {
					if it.Path == file {
						return true
					}
				}
			}
		}
	}
	return false
}

// sharesSocket reports whether every app container mounts a volume the
// sidecar mounts at /run/tokenvault, an emptyDir.
func sharesSocket(d *appsv1.Deployment) bool {
	sc := sidecar(d)
	var vol string
	for _, m := range sc.VolumeMounts {
		if m.MountPath == "/run/tokenvault" {
			vol = m.Name
		}
	}
	isEmptyDir := false
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == vol && v.EmptyDir != nil {
			isEmptyDir = true
		}
	}
	if !isEmptyDir {
		return false
	}
	for _, c := range d.Spec.Template.Spec.Containers {
		found := false
		for _, m := range c.VolumeMounts {
			found = found || m.Name == vol
		}
		if !found {
			return false
		}
	}
	return len(d.Spec.Template.Spec.Containers) > 0
}
