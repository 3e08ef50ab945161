// Command attache-controlplane runs the Attaché control plane: the trust
// domain's CA, the agent endpoint (gRPC over mTLS) and the ops API.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"attache.dev/attache/controlplane/cpcli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cpcli.NewRootCommand(os.Stdout, os.Stderr).ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "attache-controlplane:", err)
		os.Exit(1)
	}
}
