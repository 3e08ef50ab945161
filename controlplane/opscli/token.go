package opscli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"attache.dev/attache/internal/textout"
)

func newTokenCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Mint one-time join tokens for agents",
		Example: `  TOKEN=$(attache token create --tenant acme --ttl 2h)
  attache-agent run --state-dir /var/lib/attache-agent --token "$TOKEN"`,
	}
	cmd.AddCommand(newTokenCreateCommand(g))
	return cmd
}

func newTokenCreateCommand(g *globals) *cobra.Command {
	var (
		tenant string
		ttl    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create --tenant TENANT [--ttl 1h]",
		Short: "Mint a join token for a tenant's agent",
		Long: `Mint a one-time join token an agent uses to enroll for TENANT. The token is
printed alone on stdout (details go to stderr) so it can be captured with
$(...); it is shown once and the control plane keeps only its hash. Treat it
as a secret until it is used or expires. Needs the admin or operator role.`,
		Example: `  attache token create --tenant acme
  TOKEN=$(attache token create --tenant acme --ttl 30m)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if tenant == "" {
				return fmt.Errorf("--tenant is required")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			t, err := c.CreateJoinToken(cmd.Context(), tenant, ttl)
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, t)
			}
			fmt.Fprintf(g.stderr, "join token %s for tenant %s, single use, expires %s\n", t.ID, t.Tenant, textout.Time(t.ExpiresAt))
			_, err = fmt.Fprintln(g.stdout, t.Token)
			return err
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "tenant the agent will belong to (required)")
	cmd.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token stays valid")
	return cmd
}
