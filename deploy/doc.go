// Package deploy holds the tests of the Kubernetes manifests and the Helm
// chart: it renders them offline and checks every object; and of the
// injector (tokenvault inject), run as the API server calls it. It is a module
// of its own so that the Kubernetes libraries stay out of the sidecar's.
package deploy
