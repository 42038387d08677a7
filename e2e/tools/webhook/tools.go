//go:build tools

// Package tools pins the upstream Go webhook (the reference oracle). A module, not
// `go install ...@v`, because the proxy refuses its version list, which install needs.
package tools

import _ "github.com/aws/amazon-eks-pod-identity-webhook"
