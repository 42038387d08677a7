// sdk-go: what a Go service does with the AWS SDK for Go v2 — load the default config
// (its default credential chain: environment, shared files, web identity, container, IMDS)
// and call STS GetCallerIdentity. Prints one JSON object; exits 0 whether the call worked
// or not, so the caller reads the error text as a result.
package main

import (
	"context"
	"encoding/json"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

type result struct {
	SDK      string `json:"sdk"`
	Version  string `json:"version"`
	Provider string `json:"provider,omitempty"`
	Arn      string `json:"arn,omitempty"`
	Error    string `json:"error,omitempty"`
}

func main() {
	out := result{SDK: "aws-sdk-go-v2", Version: aws.SDKVersion}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := call(ctx, &out); err != nil {
		out.Error = err.Error()
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
}

func call(ctx context.Context, out *result) error {
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return err
	}
	creds, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		return err
	}
	out.Provider = creds.Source
	ident, err := sts.NewFromConfig(cfg).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		return err
	}
	out.Arn = aws.ToString(ident.Arn)
	return nil
}
