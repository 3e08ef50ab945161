// Command attache-provider-local is the local provider plugin: the agent
// starts it through go-plugin (agent/catalog); run by hand it only prints a
// notice. It logs JSON to stderr, which the agent re-logs.
package main

import (
	"log/slog"
	"os"

	"attache.dev/attache/providers/local"
	"attache.dev/attache/providers/sdk"
)

// version is stamped by the build (-ldflags "-X main.version=…").
var version = "0.0.0-dev"

func main() {
	sdk.Serve(local.New(sdk.NewLogger(os.Stderr, slog.LevelInfo), version))
}
