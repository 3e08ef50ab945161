package opscli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"attache.dev/attache/controlplane/apiclient"

	"attache.dev/attache/internal/textout"
)

func newTenantCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tenant",
		Short: "Register and inspect tenants",
		Example: `  attache tenant create acme --display-name "Acme Corp" --label tier=silo
  attache tenant list
  attache tenant show acme -o json`,
	}
	cmd.AddCommand(newTenantCreateCommand(g), newTenantListCommand(g), newTenantShowCommand(g))
	return cmd
}

func newTenantCreateCommand(g *globals) *cobra.Command {
	var (
		displayName string
		labels      []string
	)
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Register a tenant",
		Long: `Register a tenant. NAME is a DNS label (1-63 of a-z, 0-9 and '-', not starting
or ending with '-'): it appears in agent SPIFFE IDs, namespaces and schemas.
Needs the admin or operator role.`,
		Example: `  attache tenant create acme
  attache tenant create globex --display-name "Globex Inc." --label tier=pool --label region=eu`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := apiclient.CreateTenantRequest{Name: args[0], DisplayName: displayName}
			if len(labels) > 0 {
				req.Labels = make(map[string]string, len(labels))
				for _, l := range labels {
					k, v, ok := strings.Cut(l, "=")
					if !ok || k == "" {
						return fmt.Errorf("--label %q: want key=value", l)
					}
					req.Labels[k] = v
				}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			t, err := c.CreateTenant(cmd.Context(), req)
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, t)
			}
			_, err = fmt.Fprintf(g.stdout, "tenant %s created\n", t.Name)
			return err
		},
	}
	cmd.Flags().StringVar(&displayName, "display-name", "", "human-readable name")
	cmd.Flags().StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	return cmd
}

func newTenantListCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List tenants",
		Example: `  attache tenant list -o json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ts, err := c.ListTenants(cmd.Context())
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, ts)
			}
			rows := make([][]string, 0, len(ts))
			for _, t := range ts {
				rows = append(rows, []string{t.Name, orDash(t.DisplayName), formatLabels(t.Labels), textout.Time(t.CreatedAt)})
			}
			return textout.Table(g.stdout, []string{"NAME", "DISPLAY-NAME", "LABELS", "CREATED"}, rows)
		},
	}
}

func newTenantShowCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "show NAME",
		Short:   "Show one tenant",
		Example: `  attache tenant show acme`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			t, err := c.GetTenant(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, t)
			}
			return fields(g.stdout, [][2]string{
				{"Name", t.Name},
				{"Display name", orDash(t.DisplayName)},
				{"Labels", formatLabels(t.Labels)},
				{"Created", textout.Time(t.CreatedAt)},
			})
		},
	}
}
