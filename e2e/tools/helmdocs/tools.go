//go:build tools

// Package tools pins helm-docs so `go build .../cmd/helm-docs` resolves from go.sum.
package tools

import _ "github.com/norwoodj/helm-docs/cmd/helm-docs"
