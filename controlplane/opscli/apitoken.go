package opscli

import (
	"fmt"

	"github.com/spf13/cobra"

	"attache.dev/attache/internal/textout"
)

func newAPITokenCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "apitoken",
		Short: "Manage ops API tokens (admin only)",
		Example: `  attache apitoken create --name ci-deployer --role operator > ci.token
  attache apitoken list`,
	}
	cmd.AddCommand(newAPITokenCreateCommand(g), newAPITokenListCommand(g))
	return cmd
}

func newAPITokenCreateCommand(g *globals) *cobra.Command {
	var name, role string
	cmd := &cobra.Command{
		Use:   "create --name NAME --role admin|operator|auditor",
		Short: "Create an API token",
		Long: `Create an API token. The token is printed alone on stdout (details go to
stderr) and shown only once. Roles: admin (everything), operator (tenants,
join tokens, agents), auditor (read-only, including the audit trail).`,
		Example: `  attache apitoken create --name reviewer --role auditor > reviewer.token
  chmod 600 reviewer.token`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if name == "" || role == "" {
				return fmt.Errorf("--name and --role are required")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			t, err := c.CreateAPIToken(cmd.Context(), name, role)
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, t)
			}
			fmt.Fprintf(g.stderr, "API token %s (%s, role %s) created\n", t.ID, t.Name, t.Role)
			_, err = fmt.Fprintln(g.stdout, t.Token)
			return err
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name shown as the actor in the audit trail (required)")
	cmd.Flags().StringVar(&role, "role", "", "admin, operator or auditor (required)")
	return cmd
}

func newAPITokenListCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List API tokens (never their secrets)",
		Example: `  attache apitoken list`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ts, err := c.ListAPITokens(cmd.Context())
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, ts)
			}
			rows := make([][]string, 0, len(ts))
			for _, t := range ts {
				rows = append(rows, []string{t.ID, t.Name, t.Role, orDash(t.CreatedBy), textout.Time(t.CreatedAt), formatTimePtr(t.RevokedAt)})
			}
			return textout.Table(g.stdout, []string{"ID", "NAME", "ROLE", "CREATED-BY", "CREATED", "REVOKED"}, rows)
		},
	}
}
