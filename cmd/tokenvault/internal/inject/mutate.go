// Package inject is tokenvault's mutating admission webhook: it adds the
// sidecar, as a native sidecar (an init container with restartPolicy
// Always), to pods annotated tokenvault.dev/inject: "true", shaped as the
// kustomize base in deploy/kubernetes/base shapes it.
package inject

import (
	"encoding/json"
	"fmt"
	"math"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// The pod annotations the injector reads (and writes: Status).
const (
	AnnotationInject          = "tokenvault.dev/inject"
	AnnotationStatus          = "tokenvault.dev/status"
	AnnotationConfigMap       = "tokenvault.dev/config-map"
	AnnotationMasterKeySecret = "tokenvault.dev/master-key-secret"
	AnnotationProvidersSecret = "tokenvault.dev/providers-secret"
	AnnotationEtcdTLSSecret   = "tokenvault.dev/etcd-tls-secret"
	AnnotationDataClaim       = "tokenvault.dev/data-claim"
	AnnotationSocketPath      = "tokenvault.dev/socket-path"
	AnnotationImage           = "tokenvault.dev/image"
	AnnotationCPURequest      = "tokenvault.dev/cpu-request"
	AnnotationCPULimit        = "tokenvault.dev/cpu-limit"
	AnnotationMemoryRequest   = "tokenvault.dev/memory-request"
	AnnotationMemoryLimit     = "tokenvault.dev/memory-limit"

	// StatusInjected is AnnotationStatus's value on an injected pod.
	StatusInjected = "injected"
)

var knownAnnotations = map[string]bool{
	AnnotationInject: true, AnnotationStatus: true, AnnotationConfigMap: true,
	AnnotationMasterKeySecret: true, AnnotationProvidersSecret: true, AnnotationEtcdTLSSecret: true,
	AnnotationDataClaim: true, AnnotationSocketPath: true, AnnotationImage: true,
	AnnotationCPURequest: true, AnnotationCPULimit: true, AnnotationMemoryRequest: true, AnnotationMemoryLimit: true,
}

// The sidecar's fixed layout, as in the kustomize base: its config
// (tokenvault.yaml of the ConfigMap) must name these paths and ports.
const (
	SidecarName      = "tokenvault"
	sidecarUID       = 65532
	configDir        = "/etc/tokenvault/config"
	secretsDir       = "/etc/tokenvault/secrets"
	etcdDir          = "/etc/tokenvault/etcd"
	dataDir          = "/var/lib/tokenvault"
	DefaultSocket    = "/run/tokenvault/grpc.sock"
	apiPort          = 7070
	publicPort       = 7071
	healthPort       = 7072
	metricsPort      = 7073
	volConfig        = "tokenvault-config"
	volSecrets       = "tokenvault-secrets"
	volSocket        = "tokenvault-socket"
	volData          = "tokenvault-data"
	volEtcd          = "tokenvault-etcd"
	defaultCPUReq    = "50m"
	defaultCPULimit  = "1"
	defaultMemReq    = "160Mi"
	defaultMemLimit  = "256Mi"
	minMemLimitBytes = 32 << 20
)

// Config is the injector's own configuration (its flags): the sidecar's
// image, and defaults for settings a pod may leave out.
type Config struct {
	// Image is the sidecar's image unless the pod names one.
	Image string
	// ConfigMap and MasterKeySecret, when set, stand in for a pod
	// without the annotation; unset, the annotation is required.
	ConfigMap, MasterKeySecret string
}

// refusal is a pod the injector will not admit, with the reason shown to
// whoever created it.
type refusal struct{ msg string }

func (r *refusal) Error() string { return r.msg }

func refuse(format string, args ...any) error {
	return &refusal{"tokenvault injector: " + fmt.Sprintf(format, args...)}
}

// settings are a pod's validated annotations.
type settings struct {
	image, configMap, masterKey, providers, etcdTLS, dataClaim, socket string
	cpuReq, cpuLimit, memReq, memLimit                                 string
	memLimitBytes                                                      int64
}

// mutate decides what to do with the pod: no patch (nil, nil), a JSON
// patch, or a refusal.
func mutate(cfg Config, raw []byte) ([]patchOp, error) {
	var p pod
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, refuse("the request's object is not a pod: %v", err)
	}
	ann := p.Metadata.Annotations
	switch v := ann[AnnotationInject]; v {
	case "true":
	case "", "false":
		return nil, nil
	default:
		return nil, refuse("%s is %.64q; want \"true\" or \"false\"", AnnotationInject, v)
	}
	if ann[AnnotationStatus] == StatusInjected || hasContainer(p, SidecarName) {
		return nil, nil // already injected: left alone
	}
	s, err := readSettings(cfg, ann)
	if err != nil {
		return nil, err
	}
	if err := checkConflicts(p, s); err != nil {
		return nil, err
	}
	return buildPatch(p, s), nil
}

func hasContainer(p pod, name string) bool {
	for _, c := range append(append([]podContainer{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		if c.Name == name {
			return true
		}
	}
	return false
}

// The patterns are compiled on first use: only the injector needs them,
// not every start of the binary.
var (
	// A DNS-1123 subdomain: the names of Secrets, ConfigMaps and claims.
	dnsSubdomain = lazyRegexp(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	imageRef     = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$`)
	memQuantity  = lazyRegexp(`^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$`)
	cpuQuantity  = lazyRegexp(`^(?:([0-9]+)m|([0-9]+(?:\.[0-9]{1,3})?))$`)
)

func lazyRegexp(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}

func readSettings(cfg Config, ann map[string]string) (settings, error) {
	var unknown []string
	for k := range ann {
		if strings.HasPrefix(k, "tokenvault.dev/") && !knownAnnotations[k] {
			unknown = append(unknown, fmt.Sprintf("%.80q", k))
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return settings{}, refuse("unknown annotation %s (see docs/kubernetes.md for the ones read)", strings.Join(unknown, ", "))
	}
	get := func(k, def string) string {
		if v, ok := ann[k]; ok {
			return strings.TrimSpace(v)
		}
		return def
	}
	s := settings{
		image:     get(AnnotationImage, cfg.Image),
		configMap: get(AnnotationConfigMap, cfg.ConfigMap),
		masterKey: get(AnnotationMasterKeySecret, cfg.MasterKeySecret),
		providers: get(AnnotationProvidersSecret, ""),
		etcdTLS:   get(AnnotationEtcdTLSSecret, ""),
		dataClaim: get(AnnotationDataClaim, ""),
		socket:    get(AnnotationSocketPath, DefaultSocket),
		cpuReq:    get(AnnotationCPURequest, defaultCPUReq),
		cpuLimit:  get(AnnotationCPULimit, defaultCPULimit),
		memReq:    get(AnnotationMemoryRequest, defaultMemReq),
		memLimit:  get(AnnotationMemoryLimit, defaultMemLimit),
	}
	var missing []string
	if s.configMap == "" {
		missing = append(missing, AnnotationConfigMap+" (the ConfigMap holding the sidecar's tokenvault.yaml)")
	}
	if s.masterKey == "" {
		missing = append(missing, AnnotationMasterKeySecret+" (the Secret whose key master-key is the master key)")
	}
	if len(missing) > 0 {
		return s, refuse("the pod asks for the sidecar (%s: \"true\") but does not set %s", AnnotationInject, strings.Join(missing, " and "))
	}
	for _, n := range []struct{ ann, v string }{
		{AnnotationConfigMap, s.configMap}, {AnnotationMasterKeySecret, s.masterKey},
		{AnnotationProvidersSecret, s.providers}, {AnnotationEtcdTLSSecret, s.etcdTLS}, {AnnotationDataClaim, s.dataClaim},
	} {
		if n.v != "" && (len(n.v) > 253 || !dnsSubdomain().MatchString(n.v)) {
			return s, refuse("%s is %.64q: not the name of a Kubernetes object (lower case letters, digits, '-' and '.')", n.ann, n.v)
		}
	}
	if s.image == "" {
		return s, refuse("no image for the sidecar: set %s or the injector's --image", AnnotationImage)
	}
	if len(s.image) > 512 || !imageRef().MatchString(s.image) {
		return s, refuse("%s is %.64q: not an image reference", AnnotationImage, s.image)
	}
	if err := checkSocketPath(s.socket); err != nil {
		return s, err
	}
	memReq, err := memBytes(AnnotationMemoryRequest, s.memReq)
	if err != nil {
		return s, err
	}
	if s.memLimitBytes, err = memBytes(AnnotationMemoryLimit, s.memLimit); err != nil {
		return s, err
	}
	if s.memLimitBytes < minMemLimitBytes {
		return s, refuse("%s is %s: the sidecar needs at least 32Mi", AnnotationMemoryLimit, s.memLimit)
	}
	if memReq > s.memLimitBytes {
		return s, refuse("%s (%s) is over %s (%s)", AnnotationMemoryRequest, s.memReq, AnnotationMemoryLimit, s.memLimit)
	}
	cpuReq, err := milliCPU(AnnotationCPURequest, s.cpuReq)
	if err != nil {
		return s, err
	}
	cpuLimit, err := milliCPU(AnnotationCPULimit, s.cpuLimit)
	if err != nil {
		return s, err
	}
	if cpuReq > cpuLimit {
		return s, refuse("%s (%s) is over %s (%s)", AnnotationCPURequest, s.cpuReq, AnnotationCPULimit, s.cpuLimit)
	}
	return s, nil
}

// checkSocketPath accepts an absolute, clean path in a directory of its
// own (the shared volume is mounted there), short enough for a unix
// socket, outside the sidecar's other directories.
func checkSocketPath(p string) error {
	dir := path.Dir(p)
	switch {
	case len(p) > 100 || !path.IsAbs(p) || path.Clean(p) != p:
		return refuse("%s is %.64q: want an absolute, clean path of at most 100 bytes, e.g. %s", AnnotationSocketPath, p, DefaultSocket)
	case dir == "/" || strings.ContainsAny(p, " \t\n:"):
		return refuse("%s is %.64q: the socket needs a directory of its own (the shared volume is mounted on it), e.g. %s", AnnotationSocketPath, p, DefaultSocket)
	}
	for _, d := range []string{"/etc/tokenvault", dataDir, "/proc", "/sys", "/dev", "/var/run/secrets"} {
		if dir == d || strings.HasPrefix(dir, d+"/") {
			return refuse("%s is %.64q: the shared volume may not cover %s", AnnotationSocketPath, p, dir)
		}
	}
	for _, d := range []string{"/etc", "/usr", "/bin", "/sbin", "/lib", "/var", "/run", "/tmp", "/home"} {
		if dir == d {
			return refuse("%s is %.64q: the shared volume would hide the image's %s; use a directory of its own, e.g. %s", AnnotationSocketPath, p, dir, DefaultSocket)
		}
	}
	return nil
}

var memUnits = map[string]float64{"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}

func memBytes(ann, q string) (int64, error) {
	m := memQuantity().FindStringSubmatch(q)
	if len(q) > 32 || m == nil {
		return 0, refuse("%s is %.32q: want a memory quantity such as 256Mi or 1Gi", ann, q)
	}
	f, err := strconv.ParseFloat(m[1], 64)
	if err != nil || f*memUnits[m[2]] > math.MaxInt64/2 {
		return 0, refuse("%s is %.32q: out of range", ann, q)
	}
	return int64(f * memUnits[m[2]]), nil
}

func milliCPU(ann, q string) (int64, error) {
	m := cpuQuantity().FindStringSubmatch(q)
	if len(q) > 16 || m == nil {
		return 0, refuse("%s is %.32q: want a CPU quantity such as 50m, 0.5 or 1", ann, q)
	}
	if m[1] != "" {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		return n, nil
	}
	f, _ := strconv.ParseFloat(m[2], 64)
	return int64(math.Round(f * 1000)), nil
}

// checkConflicts refuses a pod whose own containers or volumes would
// collide with what the injector adds: the API server would refuse the
// patched pod with a message naming no cause.
func checkConflicts(p pod, s settings) error {
	ours := map[string]bool{volConfig: true, volSecrets: true, volSocket: true, volData: true, volEtcd: true}
	for _, v := range p.Spec.Volumes {
		if ours[v.Name] {
			return refuse("the pod already has a volume named %q, which the injector adds", v.Name)
		}
	}
	dir := path.Dir(s.socket)
	for _, c := range p.Spec.Containers {
		for _, m := range c.VolumeMounts {
			if path.Clean(m.MountPath) == dir {
				return refuse("container %.64q already mounts a volume at %s, where the sidecar's socket volume goes: set %s", c.Name, dir, AnnotationSocketPath)
			}
		}
	}
	for _, c := range append(append([]podContainer{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		for _, port := range c.Ports {
			if port.ContainerPort >= apiPort && port.ContainerPort <= metricsPort {
				return refuse("container %.64q uses port %d; the sidecar listens on %d-%d in the pod's network", c.Name, port.ContainerPort, apiPort, metricsPort)
			}
		}
	}
	if len(p.Spec.Containers) == 0 {
		return refuse("the pod has no containers to share the socket with")
	}
	return nil
}

// escape is a JSON Pointer token (RFC 6901).
func escape(s string) string {
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(s)
}

// buildPatch adds the sidecar first among the init containers (so that
// init containers after it may call it), its volumes, the socket volume's
// mount and TOKENVAULT_ADDR to every app container, and the status
// annotation that makes a second pass a no-op.
func buildPatch(p pod, s settings) []patchOp {
	sockDir := path.Dir(s.socket)
	secretSources := []projectionSource{{Secret: &secretProjection{Name: s.masterKey,
		Items: []keyToPath{{Key: "master-key", Path: "master-key"}}}}}
	if s.providers != "" {
		secretSources = append(secretSources, projectionSource{Secret: &secretProjection{Name: s.providers}})
	}
	vols := []volume{
		{Name: volConfig, ConfigMap: &configMapSource{Name: s.configMap}},
		{Name: volSecrets, Projected: &projectedSource{DefaultMode: 0o400, Sources: secretSources}},
		{Name: volSocket, EmptyDir: &emptyDirSource{Medium: "Memory", SizeLimit: "1Mi"}},
	}
	mounts := []volumeMount{
		{Name: volConfig, MountPath: configDir, ReadOnly: true},
		{Name: volSecrets, MountPath: secretsDir, ReadOnly: true},
		{Name: volSocket, MountPath: sockDir},
	}
	if s.dataClaim != "" {
		vols = append(vols, volume{Name: volData, PersistentVolumeClaim: &claimSource{ClaimName: s.dataClaim}})
		mounts = append(mounts, volumeMount{Name: volData, MountPath: dataDir})
	}
	if s.etcdTLS != "" {
		vols = append(vols, volume{Name: volEtcd, Secret: &secretSource{SecretName: s.etcdTLS, DefaultMode: 0o400}})
		mounts = append(mounts, volumeMount{Name: volEtcd, MountPath: etcdDir, ReadOnly: true})
	}
	sc := container{
		Name:  SidecarName,
		Image: s.image,
		Args:  []string{"serve", "--config", configDir + "/tokenvault.yaml"},
		// About 90% of the memory limit: the collector works harder
		// near it instead of the kernel killing the pod.
		Env: []envVar{{Name: "GOMEMLIMIT", Value: fmt.Sprintf("%dMiB", s.memLimitBytes*9/10>>20)}},
		Ports: []containerPort{
			{Name: "tv-public", ContainerPort: publicPort},
			{Name: "tv-health", ContainerPort: healthPort},
			{Name: "tv-metrics", ContainerPort: metricsPort},
		},
		Resources: resources{
			Requests: map[string]string{"cpu": s.cpuReq, "memory": s.memReq},
			Limits:   map[string]string{"cpu": s.cpuLimit, "memory": s.memLimit},
		},
		VolumeMounts:   mounts,
		StartupProbe:   &probe{HTTPGet: &httpGetAction{Path: "/readyz", Port: "tv-health"}, PeriodSeconds: 1, FailureThreshold: 60},
		LivenessProbe:  &probe{GRPC: &grpcAction{Port: healthPort}, PeriodSeconds: 10, TimeoutSeconds: 2, FailureThreshold: 3},
		ReadinessProbe: &probe{HTTPGet: &httpGetAction{Path: "/readyz", Port: "tv-health"}, PeriodSeconds: 5, TimeoutSeconds: 2, FailureThreshold: 2},
		RestartPolicy:  "Always",
		SecurityContext: &securityContext{
			RunAsNonRoot: true, RunAsUser: sidecarUID, RunAsGroup: sidecarUID,
			ReadOnlyRootFilesystem: true, AllowPrivilegeEscalation: false,
			Capabilities:   capabilities{Drop: []string{"ALL"}},
			SeccompProfile: seccompProfile{Type: "RuntimeDefault"},
		},
	}

	var ops []patchOp
	add := func(path string, v any) { ops = append(ops, patchOp{Op: "add", Path: path, Value: v}) }
	// The pod has annotations: tokenvault.dev/inject is one.
	add("/metadata/annotations/"+escape(AnnotationStatus), StatusInjected)
	if len(p.Spec.Volumes) == 0 {
		add("/spec/volumes", vols)
	} else {
		for _, v := range vols {
			add("/spec/volumes/-", v)
		}
	}
	if len(p.Spec.InitContainers) == 0 {
		add("/spec/initContainers", []container{sc})
	} else {
		add("/spec/initContainers/0", sc)
	}
	addr := "unix://" + s.socket
	for i, c := range p.Spec.Containers {
		base := "/spec/containers/" + strconv.Itoa(i)
		m := volumeMount{Name: volSocket, MountPath: sockDir}
		if len(c.VolumeMounts) == 0 {
			add(base+"/volumeMounts", []volumeMount{m})
		} else {
			add(base+"/volumeMounts/-", m)
		}
		hasAddr := false
		for _, e := range c.Env {
			hasAddr = hasAddr || e.Name == "TOKENVAULT_ADDR"
		}
		if hasAddr {
			continue
		}
		e := envVar{Name: "TOKENVAULT_ADDR", Value: addr}
		if len(c.Env) == 0 {
			add(base+"/env", []envVar{e})
		} else {
			add(base+"/env/-", e)
		}
	}
	// The Secrets' files are mode 0400, owned by root: the sidecar's uid
	// reads them through the pod's fsGroup (group-readable, as the
	// kubelet makes them), which also makes the data volume writable. A
	// pod with an fsGroup of its own keeps it: every container of the pod
	// has it as a supplementary group.
	switch {
	case p.Spec.SecurityContext == nil:
		add("/spec/securityContext", podSecurityContext{FSGroup: sidecarUID})
	case p.Spec.SecurityContext.FSGroup == nil:
		add("/spec/securityContext/fsGroup", sidecarUID)
	}
	return ops
}
