// Command attache is the ops and reviewer CLI for an Attaché control plane;
// the commands live in controlplane/opscli.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"attache.dev/attache/controlplane/opscli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := opscli.NewRootCommand(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
