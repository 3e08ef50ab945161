package opscli

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/internal/textout"
)

func newFreezeCommand(g *globals) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "freeze --reason TEXT",
		Short: "Stop every rollout and plan dispatch, fleet-wide (the incident switch)",
		Long: `Freeze the fleet: at once, no rollout advances and no plan is offered to any
agent, on every control-plane replica, until "attache unfreeze". Plans that
agents already took run to the end. Rollouts show Waiting (Frozen) and carry
on where they stopped after the unfreeze. The reason is required and goes
into the audit trail (fleet.freeze) with who froze the fleet; freezing again
replaces the reason. Needs the admin or operator role.`,
		Example: `  attache freeze --reason "INC-1234: checkout errors after 1.5.0"
  attache freeze status
  attache unfreeze`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(reason) == "" {
				return errors.New(`--reason is required: say why the fleet is frozen (e.g. --reason "INC-1234: checkout errors")`)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			f, err := c.Freeze(cmd.Context(), reason)
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, f)
			}
			if err := printFreeze(g.stdout, f); err != nil {
				return err
			}
			_, err = fmt.Fprintln(g.stdout, "No rollout advances and no plan is offered to any agent until: attache unfreeze")
			return err
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why the fleet is frozen, for the audit trail (required, at most 500 characters)")
	cmd.AddCommand(&cobra.Command{
		Use:     "status",
		Short:   "Show whether the fleet is frozen, by whom, why and since when",
		Example: `  attache freeze status -o json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			f, err := c.FreezeStatus(cmd.Context())
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, f)
			}
			return printFreeze(g.stdout, f)
		},
	})
	return cmd
}

func newUnfreezeCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "unfreeze",
		Short: "Lift the fleet-wide freeze: rollouts and plan dispatch resume",
		Long: `Lift the freeze set by "attache freeze": rollouts carry on where they stopped
and agents receive their pending plans. Audited as fleet.unfreeze. Needs the
admin or operator role.`,
		Example: `  attache unfreeze`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			f, err := c.Unfreeze(cmd.Context())
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, f)
			}
			_, err = fmt.Fprintln(g.stdout, "Fleet unfrozen: rollouts and plan dispatch resume.")
			return err
		},
	}
}

func printFreeze(w io.Writer, f apiclient.Freeze) error {
	if !f.Frozen {
		_, err := fmt.Fprintln(w, "Fleet not frozen.")
		return err
	}
	_, err := fmt.Fprintf(w, "Fleet FROZEN since %s by %s: %s\n", formatTimePtr(f.At), orDash(f.By), textout.Clean(f.Reason))
	return err
}
