//go:build tools

// Package tools pins actionlint so `go build .../cmd/actionlint` resolves from go.sum.
package tools

import _ "github.com/rhysd/actionlint/cmd/actionlint"
