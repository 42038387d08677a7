//go:build tools

// Package tools pins vegeta, whose module root package is its main (the bench load generator).
package tools

import _ "github.com/tsenart/vegeta/v12"
