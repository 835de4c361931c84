package inject

import "encoding/json"

// The wire types of admission.k8s.io/v1 and core/v1 that the injector
// reads and writes, written out by hand: only the fields it uses, so that
// the sidecar's binary does not link the Kubernetes API packages (the
// deploy module's tests decode what it writes into the real k8s.io/api
// types, strictly, and would catch a misspelt field).

// admissionAPIVersion is the only AdmissionReview version spoken: the
// MutatingWebhookConfiguration asks for it (admissionReviewVersions: [v1]).
const admissionAPIVersion = "admission.k8s.io/v1"

type admissionReview struct {
	APIVersion string             `json:"apiVersion"`
	Kind       string             `json:"kind"`
	Request    *admissionRequest  `json:"request,omitempty"`
	Response   *admissionResponse `json:"response,omitempty"`
}

type groupVersionKind struct {
	Group   string `json:"group"`
	Version string `json:"version"`
	Kind    string `json:"kind"`
}

type groupVersionResource struct {
	Group    string `json:"group"`
	Version  string `json:"version"`
	Resource string `json:"resource"`
}

type admissionRequest struct {
	UID         string               `json:"uid"`
	Kind        groupVersionKind     `json:"kind"`
	Resource    groupVersionResource `json:"resource"`
	SubResource string               `json:"subResource,omitempty"`
	Name        string               `json:"name,omitempty"`
	Namespace   string               `json:"namespace,omitempty"`
	Operation   string               `json:"operation"`
	Object      json.RawMessage      `json:"object,omitempty"`
}

type admissionResponse struct {
	UID     string  `json:"uid"`
	Allowed bool    `json:"allowed"`
	Result  *status `json:"status,omitempty"`
	// Patch is a JSON Patch (RFC 6902); encoding/json writes []byte as
	// base64, as the API expects.
	Patch     []byte `json:"patch,omitempty"`
	PatchType string `json:"patchType,omitempty"`
}

// status is the metav1.Status of a refusal: the API server shows Message
// to whoever created the pod (or in the ReplicaSet's events).
type status struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Code    int32  `json:"code,omitempty"`
}

// The pod as read: only what the patch depends on. Unknown fields are
// ignored (a pod has many).
type pod struct {
	Metadata struct {
		Name         string            `json:"name"`
		GenerateName string            `json:"generateName"`
		Annotations  map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		InitContainers  []podContainer          `json:"initContainers"`
		Containers      []podContainer          `json:"containers"`
		Volumes         []struct{ Name string } `json:"volumes"`
		SecurityContext *struct {
			FSGroup *int64 `json:"fsGroup"`
		} `json:"securityContext"`
	} `json:"spec"`
}

type podContainer struct {
	Name         string                  `json:"name"`
	Env          []struct{ Name string } `json:"env"`
	VolumeMounts []struct {
		Name      string `json:"name"`
		MountPath string `json:"mountPath"`
	} `json:"volumeMounts"`
	Ports []struct {
		ContainerPort int32 `json:"containerPort"`
	} `json:"ports"`
}

// The objects written into the pod.

type container struct {
	Name            string           `json:"name"`
	Image           string           `json:"image"`
	Args            []string         `json:"args,omitempty"`
	Env             []envVar         `json:"env,omitempty"`
	Ports           []containerPort  `json:"ports,omitempty"`
	Resources       resources        `json:"resources"`
	VolumeMounts    []volumeMount    `json:"volumeMounts,omitempty"`
	StartupProbe    *probe           `json:"startupProbe,omitempty"`
	LivenessProbe   *probe           `json:"livenessProbe,omitempty"`
	ReadinessProbe  *probe           `json:"readinessProbe,omitempty"`
	RestartPolicy   string           `json:"restartPolicy,omitempty"`
	SecurityContext *securityContext `json:"securityContext,omitempty"`
}

type envVar struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

type containerPort struct {
	Name          string `json:"name"`
	ContainerPort int32  `json:"containerPort"`
}

type resources struct {
	Requests map[string]string `json:"requests,omitempty"`
	Limits   map[string]string `json:"limits,omitempty"`
}

type volumeMount struct {
	Name      string `json:"name"`
	MountPath string `json:"mountPath"`
	ReadOnly  bool   `json:"readOnly,omitempty"`
}

type probe struct {
	HTTPGet          *httpGetAction `json:"httpGet,omitempty"`
	GRPC             *grpcAction    `json:"grpc,omitempty"`
	PeriodSeconds    int32          `json:"periodSeconds,omitempty"`
	TimeoutSeconds   int32          `json:"timeoutSeconds,omitempty"`
	FailureThreshold int32          `json:"failureThreshold,omitempty"`
}

type httpGetAction struct {
	Path string `json:"path"`
	Port string `json:"port"` // a named port
}

type grpcAction struct {
	Port int32 `json:"port"`
}

type securityContext struct {
	RunAsNonRoot             bool           `json:"runAsNonRoot"`
	RunAsUser                int64          `json:"runAsUser"`
	RunAsGroup               int64          `json:"runAsGroup"`
	ReadOnlyRootFilesystem   bool           `json:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation bool           `json:"allowPrivilegeEscalation"`
	Capabilities             capabilities   `json:"capabilities"`
	SeccompProfile           seccompProfile `json:"seccompProfile"`
}

type capabilities struct {
	Drop []string `json:"drop"`
}

type seccompProfile struct {
	Type string `json:"type"`
}

type volume struct {
	Name                  string           `json:"name"`
	ConfigMap             *configMapSource `json:"configMap,omitempty"`
	Secret                *secretSource    `json:"secret,omitempty"`
	Projected             *projectedSource `json:"projected,omitempty"`
	EmptyDir              *emptyDirSource  `json:"emptyDir,omitempty"`
	PersistentVolumeClaim *claimSource     `json:"persistentVolumeClaim,omitempty"`
}

type configMapSource struct {
	Name string `json:"name"`
}

type secretSource struct {
	SecretName  string `json:"secretName"`
	DefaultMode int32  `json:"defaultMode"`
}

type projectedSource struct {
	DefaultMode int32              `json:"defaultMode"`
	Sources     []projectionSource `json:"sources"`
}

type projectionSource struct {
	Secret *secretProjection `json:"secret"`
}

type secretProjection struct {
	Name  string      `json:"name"`
	Items []keyToPath `json:"items,omitempty"`
}

type keyToPath struct {
	Key  string `json:"key"`
	Path string `json:"path"`
}

type emptyDirSource struct {
	Medium    string `json:"medium"`
	SizeLimit string `json:"sizeLimit"`
}

type claimSource struct {
	ClaimName string `json:"claimName"`
}

type podSecurityContext struct {
	FSGroup int64 `json:"fsGroup"`
}

// patchOp is one JSON Patch operation; the injector only adds.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}
