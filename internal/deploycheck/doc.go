// Package deploycheck validates the deployment files without a container
// engine or a cluster: docker-compose.yaml through compose-go, the kustomize
// output through strict decoding into k8s.io/api types, and the flags every
// container passes against the binaries' own --help.
package deploycheck
