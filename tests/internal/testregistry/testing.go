package testregistry

import (
	"context"
	"os"
	"testing"
)

// StartT starts a registry for a test and closes it in t.Cleanup. To keep
// test output clean it forces Options.Quiet unless TESTREGISTRY_LOG=1 is set
// in the environment (useful when debugging the registry side).
func StartT(t testing.TB, opts Options) *Registry {
	t.Helper()
	if os.Getenv("TESTREGISTRY_LOG") != "1" {
		opts.Quiet = true
	}
	r, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("starting test registry: %v", err)
	}
	t.Cleanup(r.Close)
	return r
}
