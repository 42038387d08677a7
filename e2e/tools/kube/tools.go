//go:build tools

// Package tools pins k8s.io/kubernetes so `go build k8s.io/kubernetes/cmd/kube-apiserver`
// resolves from this module's go.mod/go.sum.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
