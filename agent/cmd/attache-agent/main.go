// Command attache-agent is the Attaché agent that customers run in their own
// account or cluster.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	plugin "github.com/hashicorp/go-plugin"

	"attache.dev/attache/agent/agentcli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := agentcli.NewRootCommand(os.Stdout, os.Stderr).ExecuteContext(ctx)
	// Provider plugin processes must not outlive the agent, even on paths
	// that skipped the catalog's Close (os.Exit runs no defers).
	plugin.CleanupClients()
	if err != nil {
		fmt.Fprintln(os.Stderr, "attache-agent:", err)
		var ee *agentcli.ExitError
		if errors.As(err, &ee) {
			os.Exit(ee.Code)
		}
		os.Exit(1)
	}
}
