// Package deploy holds the tests of the Kubernetes manifests and the Helm
// chart: it renders them offline and checks every object. It is a module
// of its own so that the Kubernetes libraries stay out of the sidecar's.
package deploy
