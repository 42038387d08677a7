//go:build tools

// Package tools pins promtool so `go build .../cmd/promtool` resolves from go.sum.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
