//go:build tools

// Package tools pins k8s.io/kubernetes (the version kube/ pins) for kube-proxy alone. It is a
// module of its own so that adding kube-proxy leaves kube/'s go.sum, the cache key of the other
// Kubernetes binaries, untouched.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
