package deploy

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The injector's manifests (deploy/kubernetes/injector) render, decode
// strictly, and hold together: the webhook calls the Service, which
// reaches the injector's HTTPS port, which serves the certificate
// cert-manager issues for the Service's name and whose CA it injects;
// the injector is as locked down as the sidecar; the webhook speaks v1
// only, has no side effects, says what happens when the injector is down,
// and is limited to pod creation in labelled namespaces.
func TestKustomize_Injector(t *testing.T) {
	r := renderKustomize(t, "kubernetes/injector")
	if len(r.deployments) != 1 || len(r.services) != 1 || len(r.webhooks) != 1 || len(r.certificates) != 1 ||
		len(r.issuers) != 1 || len(r.pdbs) != 1 || len(r.namespaces) != 1 || len(r.serviceAccounts) != 1 {
		t.Fatalf("rendered %d Deployments, %d Services, %d webhook configurations, %d Certificates, %d Issuers, %d PDBs, %d Namespaces, %d ServiceAccounts; want one of each",
			len(r.deployments), len(r.services), len(r.webhooks), len(r.certificates), len(r.issuers), len(r.pdbs), len(r.namespaces), len(r.serviceAccounts))
	}
	d, svc, mwc, cert, ns := r.deployments[0], r.services[0], r.webhooks[0], r.certificates[0], r.namespaces[0]
	if m := secretLiteral.Find(r.raw); m != nil {
		t.Errorf("the rendering holds what looks like a secret value: %q", m)
	}

	// The injector's pod.
	spec := d.Spec.Template.Spec
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("replicas %v; want at least 2: pod creation waits on the injector", d.Spec.Replicas)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken || spec.ServiceAccountName != r.serviceAccounts[0].Name {
		t.Error("the injector needs no API access: its own service account, no token mounted")
	}
	if spec.SecurityContext == nil || spec.SecurityContext.RunAsNonRoot == nil || !*spec.SecurityContext.RunAsNonRoot {
		t.Error("the injector's pod does not require non-root")
	}
	if len(spec.Containers) != 1 || len(spec.InitContainers) != 0 {
		t.Fatalf("%d containers; want the injector alone", len(spec.Containers))
	}
	c := spec.Containers[0]
	checkSecurityContext(t, "injector", c.SecurityContext)
	if c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() {
		t.Error("the injector's resources are not set")
	} else if !gomemlimitFits(&c, c.Resources.Limits.Memory().Value()) {
		t.Error("the injector's GOMEMLIMIT is not 80-95% of its memory limit")
	}
	if len(c.Args) == 0 || c.Args[0] != "inject" {
		t.Fatalf("args %q; want tokenvault inject", c.Args)
	}
	flags := map[string]string{}
	for _, a := range c.Args[1:] {
		k, v, _ := strings.Cut(a, "=")
		flags[k] = v
	}
	if base := sidecar(renderKustomize(t, "kubernetes/overlays/single").deployments[0]); flags["--image"] != base.Image || c.Image != base.Image {
		t.Errorf("the injector (%s) injects %q; want the release the manifests ship, %q", c.Image, flags["--image"], base.Image)
	}
	var httpsPort int32
	for _, p := range c.Ports {
		if p.Name == "https" {
			httpsPort = p.ContainerPort
		}
	}
	if !strings.HasSuffix(flags["--addr"], ":"+itoa(httpsPort)) {
		t.Errorf("--addr %q is not the container's https port %d", flags["--addr"], httpsPort)
	}
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Scheme != corev1.URISchemeHTTPS || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port != intstr.FromString("https") {
			t.Errorf("%s probe %+v; want HTTPS GET /healthz on the https port", name, p)
		}
	}
	// The TLS files are the cert-manager Secret's.
	var tlsDir string
	for _, m := range c.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.Secret != nil && v.Secret.SecretName == cert.Spec.SecretName {
				tlsDir = m.MountPath
			}
		}
	}
	if tlsDir == "" || flags["--tls-cert-file"] != tlsDir+"/tls.crt" || flags["--tls-key-file"] != tlsDir+"/tls.key" {
		t.Errorf("--tls-cert-file %q, --tls-key-file %q; want tls.crt and tls.key of the Secret %s (mounted at %q)",
			flags["--tls-cert-file"], flags["--tls-key-file"], cert.Spec.SecretName, tlsDir)
	}
	if !selects(r.pdbs[0].Spec.Selector.MatchLabels, d.Spec.Template.Labels) || !selects(svc.Spec.Selector, d.Spec.Template.Labels) {
		t.Error("the Service or the PodDisruptionBudget does not select the injector's pods")
	}

	// The Service, its certificate and the webhook agree.
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort != intstr.FromString("https") {
		t.Fatalf("Service ports %+v; want one, to the https port", svc.Spec.Ports)
	}
	dns := svc.Name + "." + svc.Namespace + ".svc"
	if !slices.Contains(cert.Spec.DNSNames, dns) || cert.Spec.IssuerRef.Name != r.issuers[0].Metadata.Name || r.issuers[0].Spec.SelfSigned == nil {
		t.Errorf("Certificate %+v; want %s, from the Issuer", cert.Spec, dns)
	}
	if got := mwc.Annotations["cert-manager.io/inject-ca-from"]; got != cert.Metadata.Namespace+"/"+cert.Metadata.Name {
		t.Errorf("inject-ca-from %q; want the Certificate", got)
	}
	for _, w := range mwc.Webhooks {
		s := w.ClientConfig.Service
		if s == nil || s.Name != svc.Name || s.Namespace != svc.Namespace || s.Path == nil || *s.Path != "/mutate" ||
			s.Port == nil || *s.Port != svc.Spec.Ports[0].Port || w.ClientConfig.URL != nil {
			t.Errorf("%s: clientConfig %+v; want the Service's /mutate", w.Name, w.ClientConfig)
		}
		if !slices.Equal(w.AdmissionReviewVersions, []string{"v1"}) {
			t.Errorf("%s: admissionReviewVersions %q; the injector speaks v1 only", w.Name, w.AdmissionReviewVersions)
		}
		if w.SideEffects == nil || *w.SideEffects != admissionregistrationv1.SideEffectClassNone {
			t.Errorf("%s: sideEffects %s; want None", w.Name, deref(w.SideEffects))
		}
		// Explicit, and Fail: the YAML and docs say why.
		if w.FailurePolicy == nil || *w.FailurePolicy != admissionregistrationv1.Fail {
			t.Errorf("%s: failurePolicy %s; want Fail, written out", w.Name, deref(w.FailurePolicy))
		}
		if w.TimeoutSeconds == nil || *w.TimeoutSeconds > 10 {
			t.Errorf("%s: timeoutSeconds %v; want a short one", w.Name, w.TimeoutSeconds)
		}
		if w.NamespaceSelector == nil || w.NamespaceSelector.MatchLabels["tokenvault.dev/injection"] != "enabled" {
			t.Errorf("%s: namespaceSelector %v; want tokenvault.dev/injection=enabled", w.Name, w.NamespaceSelector)
		}
		if selects(w.NamespaceSelector.MatchLabels, ns.Labels) {
			t.Errorf("%s: the injector's own namespace is selected: its pods would wait on themselves", w.Name)
		}
		if len(w.Rules) != 1 || !slices.Equal(w.Rules[0].Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Create}) ||
			!slices.Equal(w.Rules[0].APIGroups, []string{""}) || !slices.Equal(w.Rules[0].Resources, []string{"pods"}) {
			t.Errorf("%s: rules %+v; want pod creation only", w.Name, w.Rules)
		}
	}
	for _, a := range r.serviceAccounts {
		if a.AutomountServiceAccountToken == nil || *a.AutomountServiceAccountToken {
			t.Errorf("ServiceAccount %s mounts its token by default", a.Name)
		}
	}
}

// selects reports whether labels carry every pair of sel (and sel is not
// empty).
func selects(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return len(sel) > 0
}

func itoa(n int32) string {
	return strconv.Itoa(int(n))
}

func deref[T ~string](p *T) string {
	if p == nil {
		return "unset"
	}
	return string(*p)
}
