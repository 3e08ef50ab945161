package opscli

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"attache.dev/attache/controlplane/apiclient"

	"attache.dev/attache/internal/textout"
)

func newAgentCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Watch and revoke enrolled agents",
		Example: `  attache agent list --tenant acme
  attache agent show acme/agent-7f3c
  attache agent health acme/agent-7f3c
  attache agent revoke acme/agent-7f3c`,
	}
	cmd.AddCommand(newAgentListCommand(g), newAgentShowCommand(g), newAgentHealthCommand(g), newAgentRevokeCommand(g))
	return cmd
}

func newAgentListCommand(g *globals) *cobra.Command {
	var tenant string
	cmd := &cobra.Command{
		Use:   "list [--tenant TENANT]",
		Short: "List agents and their status",
		Long: `List agents. STATUS is connected (session open and seen in the last 90s),
disconnected, never-connected or revoked.`,
		Example: `  attache agent list
  attache agent list --tenant acme -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			as, err := c.ListAgents(cmd.Context(), tenant)
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, as)
			}
			now := time.Now()
			rows := make([][]string, 0, len(as))
			for _, a := range as {
				rows = append(rows, []string{a.Tenant, a.ID, a.Status, ago(a.LastSeenAt, now), orDash(a.Version)})
			}
			return textout.Table(g.stdout, []string{"TENANT", "ID", "STATUS", "LAST-SEEN", "VERSION"}, rows)
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "only this tenant's agents")
	return cmd
}

func parseAgentRef(s string) (tenant, id string, err error) {
	tenant, id, ok := strings.Cut(s, "/")
	if !ok || tenant == "" || id == "" || strings.Contains(id, "/") {
		return "", "", fmt.Errorf("agent %q: want TENANT/ID", s)
	}
	return tenant, id, nil
}

func newAgentShowCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "show TENANT/ID",
		Short:   "Show one agent",
		Example: `  attache agent show acme/agent-7f3c -o json`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tenant, id, err := parseAgentRef(args[0])
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			a, err := c.GetAgent(cmd.Context(), tenant, id)
			if err != nil {
				return err
			}
			return g.printAgent(a)
		},
	}
}

func newAgentRevokeCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke TENANT/ID",
		Short: "Revoke an agent",
		Long: `Revoke an agent: the control plane refuses it from now on and cuts its live
session, even while its certificate is still valid. Revoking twice is
harmless. Needs the admin or operator role.`,
		Example: `  attache agent revoke acme/agent-7f3c`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tenant, id, err := parseAgentRef(args[0])
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			a, err := c.RevokeAgent(cmd.Context(), tenant, id)
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, a)
			}
			_, err = fmt.Fprintf(g.stdout, "agent %s/%s revoked at %s\n", a.Tenant, a.ID, formatTimePtr(a.RevokedAt))
			return err
		},
	}
}

func (g *globals) printAgent(a apiclient.Agent) error {
	if g.json() {
		return textout.JSON(g.stdout, a)
	}
	now := time.Now()
	kv := [][2]string{
		{"Tenant", a.Tenant},
		{"ID", a.ID},
		{"Status", a.Status},
		{"SPIFFE ID", orDash(a.SPIFFEID)},
		{"Hostname", orDash(a.Hostname)},
		{"Version", orDash(a.Version)},
		{"Capability version", strconv.FormatUint(uint64(a.CapabilityVersion), 10)},
		{"Enrolled", textout.Time(a.EnrolledAt)},
		{"Last seen", ago(a.LastSeenAt, now)},
		{"Certificate serial", orDash(a.CertSerial)},
		{"Certificate expires", textout.Time(a.CertExpiresAt)},
	}
	if a.SessionID != "" {
		kv = append(kv, [2]string{"Session", a.SessionID})
	}
	kv = append(kv, [2]string{"Health", healthSummary(a.Health)})
	if a.RevokedAt != nil {
		kv = append(kv, [2]string{"Revoked", formatTimePtr(a.RevokedAt) + " by " + orDash(a.RevokedBy)})
	}
	return fields(g.stdout, kv)
}

// healthSummary renders reported component health as "agent=HEALTHY, svid=DEGRADED (why)".
func healthSummary(raw json.RawMessage) string {
	var comps []struct {
		Name    string `json:"name"`
		Status  string `json:"status"`
		Message string `json:"message"`
	}
	if len(raw) == 0 || json.Unmarshal(raw, &comps) != nil || len(comps) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(comps))
	for _, c := range comps {
		st := strings.TrimPrefix(c.Status, "HEALTH_STATUS_")
		if st == "" {
			st = "UNSPECIFIED"
		}
		p := c.Name + "=" + st
		if st != "HEALTHY" && c.Message != "" {
			p += " (" + c.Message + ")"
		}
		parts = append(parts, p)
	}
	return textout.Clean(strings.Join(parts, ", "))
}
