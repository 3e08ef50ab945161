// Command attache-provider-kubernetes is the Kubernetes provider plugin: the
// agent starts it through go-plugin (agent/catalog); run by hand it only
// prints a notice. It logs JSON to stderr, which the agent re-logs. Its
// configuration names a kubeconfig file or, empty, uses the in-cluster
// ServiceAccount (providers/kubernetes/rbac has the rights it needs).
package main

import (
	"log/slog"
	"os"

	"attache.dev/attache/providers/kubernetes"
	"attache.dev/attache/providers/sdk"
)

// version is stamped by the build (-ldflags "-X main.version=…").
var version = "0.0.0-dev"

func main() {
	sdk.Serve(kubernetes.New(sdk.NewLogger(os.Stderr, slog.LevelInfo), version))
}
