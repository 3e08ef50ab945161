package opscli

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/internal/textout"
)

func newFlagCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "flag",
		Short: "Set, unset and list tenants' feature flags",
		Long: `Feature flags are key=value settings a release declares (with defaults) and
its providers apply (a ConfigMap, the local provider's config). A tenant's
flags override the release's defaults; only flags its release declares may
be set. A change is stored, audited (flag.set) and delivered at once: the
control plane re-applies the tenant's current release with the new flags in
a plan for its agent. A tenant without a release yet gets its flags with its
first release.

With --rollout and --wave, the same change goes to every tenant of one wave
of a rollout, e.g. to enable a flag for the canary tenants that already run
the new release before the release reaches the rest of the fleet.

Keys are 1-64 of a-z, 0-9, '_', '.' and '-'; values at most 1 KiB; a tenant
has at most 64 flags.`,
		Example: `  attache flag set --tenant acme checkout_v2=true theme=dark
  attache flag unset --tenant acme theme
  attache flag list --tenant acme
  attache flag set --rollout ro-20260301-101500-1a2b3c4d --wave canary checkout_v2=true`,
	}
	cmd.AddCommand(newFlagSetCommand(g), newFlagUnsetCommand(g), newFlagListCommand(g))
	return cmd
}

// flagTarget is --tenant, or --rollout with --wave.
type flagTarget struct {
	tenant, rollout, wave string
}

func (t *flagTarget) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&t.tenant, "tenant", "", "the tenant whose flags change")
	cmd.Flags().StringVar(&t.rollout, "rollout", "", "a rollout ID: change the flags of every tenant of one of its waves (needs --wave)")
	cmd.Flags().StringVar(&t.wave, "wave", "", "with --rollout: the wave's name (canary) or index (0)")
}

func (t *flagTarget) check() error {
	switch {
	case t.tenant != "" && t.rollout != "":
		return errors.New("use --tenant or --rollout, not both")
	case t.tenant == "" && t.rollout == "":
		return errors.New("--tenant or --rollout (with --wave) is required")
	case t.rollout != "" && t.wave == "":
		return errors.New("--rollout needs --wave (a wave name such as canary, or its index)")
	case t.tenant != "" && t.wave != "":
		return errors.New("--wave goes with --rollout, not --tenant")
	}
	return nil
}

// parseFlagAssignments reads key=value arguments.
func parseFlagAssignments(args []string) (map[string]string, error) {
	set := make(map[string]string, len(args))
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q: want key=value", a)
		}
		if _, dup := set[k]; dup {
			return nil, fmt.Errorf("%s is given twice", k)
		}
		set[k] = v
	}
	return set, nil
}

func newFlagSetCommand(g *globals) *cobra.Command {
	var target flagTarget
	cmd := &cobra.Command{
		Use:   "set (--tenant T | --rollout R --wave W) KEY=VALUE...",
		Short: "Set feature flags for a tenant, or for every tenant of a rollout wave",
		Long: `Set feature flags. Each key must be declared by the tenant's release (and by
the release of any rollout that has yet to reach it); nothing is stored if
one is not. The change is delivered to the tenant's agent at once in a plan
that re-applies its release with the new flags; while a rollout's plan for
the tenant is in flight the change is refused (try again when it is done).
Needs the admin or operator role.`,
		Example: `  attache flag set --tenant acme checkout_v2=true
  attache flag set --tenant acme theme=dark banner="Maintenance at 22:00"
  attache flag set --rollout ro-20260301-101500-1a2b3c4d --wave canary checkout_v2=true`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := target.check(); err != nil {
				return err
			}
			set, err := parseFlagAssignments(args)
			if err != nil {
				return err
			}
			return g.changeFlags(cmd, target, apiclient.SetFlagsRequest{Set: set})
		},
	}
	target.add(cmd)
	return cmd
}

func newFlagUnsetCommand(g *globals) *cobra.Command {
	var target flagTarget
	cmd := &cobra.Command{
		Use:   "unset (--tenant T | --rollout R --wave W) KEY...",
		Short: "Remove a tenant's flag overrides (back to the release's defaults)",
		Example: `  attache flag unset --tenant acme theme
  attache flag unset --rollout ro-20260301-101500-1a2b3c4d --wave 0 checkout_v2`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := target.check(); err != nil {
				return err
			}
			for _, a := range args {
				if strings.Contains(a, "=") {
					return fmt.Errorf("%q: unset takes keys, not key=value", a)
				}
			}
			return g.changeFlags(cmd, target, apiclient.SetFlagsRequest{Unset: args})
		},
	}
	target.add(cmd)
	return cmd
}

// changeFlags sends a flag change and reports, per tenant, how it reaches
// the agent. It fails if a tenant with a release did not get a plan.
func (g *globals) changeFlags(cmd *cobra.Command, target flagTarget, req apiclient.SetFlagsRequest) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	var changes []apiclient.FlagChange
	if target.tenant != "" {
		fc, err := c.SetTenantFlags(cmd.Context(), target.tenant, req)
		if err != nil {
			return err
		}
		if g.json() {
			if err := textout.JSON(g.stdout, fc); err != nil {
				return err
			}
		}
		changes = []apiclient.FlagChange{fc}
	} else {
		rf, err := c.SetRolloutFlags(cmd.Context(), target.rollout, apiclient.RolloutFlagsRequest{
			Wave: apiclient.WaveRef(target.wave), Set: req.Set, Unset: req.Unset,
		})
		if err != nil {
			return err
		}
		if g.json() {
			if err := textout.JSON(g.stdout, rf); err != nil {
				return err
			}
		} else {
			fmt.Fprintf(g.stdout, "rollout %s, wave %s: %d tenants\n", rf.Rollout, rf.WaveName, len(rf.Tenants))
		}
		changes = rf.Tenants
	}
	var undelivered []string
	for _, fc := range changes {
		if !g.json() {
			fmt.Fprintf(g.stdout, "tenant %s: flags %s\n  %s\n", fc.Tenant, formatLabels(fc.Overrides), textout.Clean(fc.Delivery))
		}
		if fc.Release != "" && fc.PlanID == "" {
			undelivered = append(undelivered, fc.Tenant)
		}
	}
	if len(undelivered) > 0 {
		return fmt.Errorf("flags stored but not delivered to %s: see the delivery message", strings.Join(undelivered, ", "))
	}
	return nil
}

func newFlagListCommand(g *globals) *cobra.Command {
	var tenant string
	cmd := &cobra.Command{
		Use:   "list --tenant T",
		Short: "List a tenant's flags: its overrides, the release's defaults and what applies",
		Example: `  attache flag list --tenant acme
  attache flag list --tenant acme -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if tenant == "" {
				return errors.New("--tenant is required")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			tf, err := c.TenantFlags(cmd.Context(), tenant)
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, tf)
			}
			return printFlags(g, tf)
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "the tenant (required)")
	return cmd
}

func printFlags(g *globals, tf apiclient.TenantFlags) error {
	if tf.Release == "" {
		fmt.Fprintf(g.stdout, "Tenant %s has no release yet: its flags apply with its first release.\n", tf.Tenant)
	} else {
		fmt.Fprintf(g.stdout, "Tenant %s, release %s\n", tf.Tenant, tf.Release)
	}
	keys := map[string]bool{}
	for k := range tf.Overrides {
		keys[k] = true
	}
	for k := range tf.Defaults {
		keys[k] = true
	}
	rows := make([][]string, 0, len(keys))
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		over, hasOver := tf.Overrides[k]
		def, hasDef := tf.Defaults[k]
		o, d, eff := "-", "-", "-"
		if hasOver {
			o = cell(over)
		}
		if hasDef {
			d = cell(def)
		}
		if v, ok := tf.Effective[k]; ok {
			eff = cell(v)
		} else if tf.Release == "" && hasOver {
			eff = "(with the first release) " + cell(over)
		}
		rows = append(rows, []string{k, eff, o, d})
	}
	if len(rows) == 0 {
		_, err := fmt.Fprintln(g.stdout, "No flags.")
		return err
	}
	return textout.Table(g.stdout, []string{"FLAG", "VALUE", "OVERRIDE", "DEFAULT"}, rows)
}
