package e2e

import (
	"os"
	"testing"

	"attache.dev/attache/e2e/harness"
	"attache.dev/attache/testenv/pgtest"
)

func TestMain(m *testing.M) {
	code := harness.Main(m)
	pgtest.Stop()
	os.Exit(code)
}
