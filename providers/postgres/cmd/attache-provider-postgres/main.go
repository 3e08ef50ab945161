// Command attache-provider-postgres is the PostgreSQL provider plugin: the
// agent starts it through go-plugin (agent/catalog); run by hand it only
// prints a notice. It logs JSON to stderr, which the agent re-logs. Its
// configuration names where to read the connection string (an environment
// variable or a file), never the string itself.
package main

import (
	"log/slog"
	"os"

	"attache.dev/attache/providers/postgres"
	"attache.dev/attache/providers/sdk"
)

// version is stamped by the build (-ldflags "-X main.version=…").
var version = "0.0.0-dev"

func main() {
	sdk.Serve(postgres.New(sdk.NewLogger(os.Stderr, slog.LevelInfo), version))
}
