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

func newTenantCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tenant",
		Short: "Register and inspect tenants",
		Example: `  attache tenant create acme --display-name "Acme Corp" --label region=eu
  attache tenant set acme --tier silo --window "sat,sun 02:00+4h Europe/Paris"
  attache tenant list
  attache tenant show acme -o json`,
	}
	cmd.AddCommand(newTenantCreateCommand(g), newTenantListCommand(g), newTenantShowCommand(g), newTenantSetCommand(g))
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
				rows = append(rows, []string{t.Name, orDash(t.DisplayName), formatLabels(t.Labels), orDash(t.Tier), orDash(t.Release), textout.Time(t.CreatedAt)})
			}
			return textout.Table(g.stdout, []string{"NAME", "DISPLAY-NAME", "LABELS", "TIER", "RELEASE", "CREATED"}, rows)
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
			return printTenant(g.stdout, t)
		},
	}
}

// printTenant is `tenant show` (and what `tenant set` prints).
func printTenant(w io.Writer, t apiclient.Tenant) error {
	windows := "any time (no maintenance windows)"
	if len(t.Windows) > 0 {
		windows = strings.Join(t.Windows, "; ")
	}
	cellText := "its only active agent"
	if t.Cell != "" {
		cellText = "agent " + t.Cell
	}
	return fields(w, [][2]string{
		{"Name", t.Name},
		{"Display name", orDash(t.DisplayName)},
		{"Labels", formatLabels(t.Labels)},
		{"Tier", orDash(t.Tier)},
		{"Cell", cellText},
		{"Windows", windows},
		{"Pin", orDash(t.Pin)},
		{"Release", orDash(t.Release)},
		{"Flags", formatLabels(t.Flags)},
		{"Created", textout.Time(t.CreatedAt)},
	})
}

func newTenantSetCommand(g *globals) *cobra.Command {
	var (
		tier, cellID, pin   string
		windows, labels     []string
		clearWindows, unpin bool
	)
	cmd := &cobra.Command{
		Use:   "set NAME [--tier T] [--cell AGENT] [--window W]... [--clear-windows] [--pin V | --unpin] [--label k=v | --label k-]...",
		Short: "Change a tenant's tier, cell, maintenance windows, version pin or labels",
		Long: `Change how rollouts treat a tenant; only the flags given change.

  --tier      pool, bridge, silo or byoc: the isolation model, which picks the
              release's per-tier values (and can be selected: --selector tier=silo)
  --cell      the ID of the tenant's agent that runs its plans; "" means its
              only active agent
  --window    a weekly maintenance window, "DAYS HH:MM+DURATION [TIME_ZONE]":
              DAYS is daily, a day (mon), a list (sat,sun) or a range (mon-fri);
              the time is in the window's own time zone (IANA name, default
              UTC), so 02:00 Paris stays 02:00 across daylight saving. Repeat
              for several windows; the windows given replace the tenant's.
              Rollouts act on a tenant only inside one of its windows (unless
              started with --ignore-windows); a tenant without windows may be
              updated at any time. --clear-windows removes them all.
  --pin       hold the tenant at a pushed release version: rollouts of any
              other version skip it (and say so); --unpin releases it
  --label     set a label (k=v) or remove one (k-); repeatable

Needs the admin or operator role; the change is audited as tenant.update.`,
		Example: `  attache tenant set acme --tier silo
  attache tenant set acme --window "sat,sun 02:00+4h Europe/Paris" --window "wed 23:00+1h"
  attache tenant set acme --clear-windows
  attache tenant set acme --pin 1.4.0
  attache tenant set acme --unpin --label region=eu --label legacy-
  attache tenant set acme --cell agent-7f3c`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := tenantSetRequest(cmd, tier, cellID, pin, windows, labels, clearWindows, unpin)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			t, err := c.UpdateTenant(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, t)
			}
			return printTenant(g.stdout, t)
		},
	}
	f := cmd.Flags()
	f.StringVar(&tier, "tier", "", "isolation tier: pool, bridge, silo or byoc")
	f.StringVar(&cellID, "cell", "", `agent ID that serves the tenant ("" for its only active agent)`)
	f.StringArrayVar(&windows, "window", nil, `maintenance window "DAYS HH:MM+DURATION [TIME_ZONE]" (repeatable; replaces the tenant's windows)`)
	f.BoolVar(&clearWindows, "clear-windows", false, "remove every maintenance window (rollouts may act at any time)")
	f.StringVar(&pin, "pin", "", "hold the tenant at this pushed release version")
	f.BoolVar(&unpin, "unpin", false, "remove the version pin")
	f.StringArrayVar(&labels, "label", nil, "set a label k=v, or remove one with k- (repeatable)")
	return cmd
}

// tenantSetRequest turns `tenant set` flags into the PATCH body; only the
// flags given are sent.
func tenantSetRequest(cmd *cobra.Command, tier, cellID, pin string, windows, labels []string, clearWindows, unpin bool) (apiclient.UpdateTenantRequest, error) {
	var req apiclient.UpdateTenantRequest
	f := cmd.Flags()
	switch {
	case f.Changed("pin") && unpin:
		return req, errors.New("use --pin or --unpin, not both")
	case len(windows) > 0 && clearWindows:
		return req, errors.New("use --window or --clear-windows, not both")
	}
	if f.Changed("tier") {
		req.Tier = &tier
	}
	if f.Changed("cell") {
		req.Cell = &cellID
	}
	if f.Changed("pin") {
		if pin == "" {
			return req, errors.New(`--pin needs a version; use --unpin to remove the pin`)
		}
		req.Pin = &pin
	}
	if unpin {
		empty := ""
		req.Pin = &empty
	}
	if len(windows) > 0 {
		req.Windows = &windows
	}
	if clearWindows {
		req.Windows = &[]string{}
	}
	for _, l := range labels {
		if k, ok := strings.CutSuffix(l, "-"); ok && !strings.Contains(l, "=") {
			if k == "" {
				return req, fmt.Errorf("--label %q: want key=value or key-", l)
			}
			if req.Labels == nil {
				req.Labels = map[string]*string{}
			}
			req.Labels[k] = nil
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return req, fmt.Errorf("--label %q: want key=value to set it or key- to remove it", l)
		}
		if req.Labels == nil {
			req.Labels = map[string]*string{}
		}
		req.Labels[k] = &v
	}
	if req.Tier == nil && req.Cell == nil && req.Pin == nil && req.Windows == nil && req.Labels == nil {
		return req, errors.New("nothing to change: give --tier, --cell, --window, --clear-windows, --pin, --unpin or --label")
	}
	return req, nil
}
