package opscli

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/internal/textout"
)

func newHealthCommand(g *globals) *cobra.Command {
	var tenant string
	cmd := &cobra.Command{
		Use:   "health [--tenant TENANT]",
		Short: "List agents by health, unhealthy and silent ones first",
		Long: `List agents by health, worst first: unhealthy (a component reports
unhealthy), silent (no session seen in the connected window — three
heartbeat intervals, at least 30s — or never connected), then agents whose
components report drift, then degraded (a component degraded, or of unknown
status), healthy, and revoked last.

A component drifts when what the last applied plan put in place differs
from what is live (changed by hand or by another controller); drift does not
change an agent's state. DRIFT counts an agent's drifted components.
PROBLEMS shows each component that is not healthy or has drifted as the
agent last reported it: "name: status (message)", "name: drift (what
drifted)", or both. A silent agent keeps the problems it last reported.

The command lists, it does not judge: it exits 0 whatever the agents' state
(use -o json and the counts in it for alerting, or the control plane's
/metrics). See an agent's history of component changes with
attache agent health TENANT/ID. Needs any role.`,
		Example: `  attache health
  attache health --tenant acme
  attache health -o json | jq '.counts'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			l, err := c.FleetHealth(cmd.Context(), tenant)
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, l)
			}
			now := time.Now()
			rows := make([][]string, 0, len(l.Agents))
			for _, a := range l.Agents {
				rows = append(rows, []string{a.Tenant, a.ID, a.State, ago(a.LastSeenAt, now), orDash(a.Version), driftCount(a.Drift), problems(a.Problems)})
			}
			if err := textout.Table(g.stdout, []string{"TENANT", "AGENT", "STATE", "LAST-SEEN", "VERSION", "DRIFT", "PROBLEMS"}, rows); err != nil {
				return err
			}
			parts := make([]string, 0, len(apiv1.HealthStates))
			for _, st := range apiv1.HealthStates {
				parts = append(parts, fmt.Sprintf("%d %s", l.Counts[st], st))
			}
			summary := strings.Join(parts, ", ")
			if l.Drifted > 0 {
				summary += fmt.Sprintf("; %d with drift", l.Drifted)
			}
			_, err = fmt.Fprintf(g.stderr, "%d agents: %s\n", len(l.Agents), summary)
			return err
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "only this tenant's agents")
	return cmd
}

// maxProblemRunes is where the PROBLEMS column is cut (-o json keeps it
// whole).
const maxProblemRunes = 160

// problems renders components as "name: status (message); …", a drifted
// one as "name: drift (detail)" when healthy and "name: status (message),
// drift (detail)" when not, cleaned of terminal control sequences (agents
// write them) and cut to fit a table.
func problems(ps []apiclient.HealthProblem) string {
	parts := make([]string, 0, len(ps))
	for _, p := range ps {
		var states []string
		if p.Status != "healthy" || !p.Drift {
			states = append(states, withNote(p.Status, p.Message))
		}
		if p.Drift {
			states = append(states, withNote("drift", p.DriftDetail))
		}
		parts = append(parts, p.Name+": "+strings.Join(states, ", "))
	}
	return textout.Cell(strings.Join(parts, "; "), maxProblemRunes)
}

// withNote is "s (note)", note cleaned of terminal control sequences, or s
// when the note is empty.
func withNote(s, note string) string {
	if n := textout.Clean(note); n != "" {
		return s + " (" + n + ")"
	}
	return s
}

// driftCount is the DRIFT cell: the number of drifted components, "-" for
// none.
func driftCount(n int) string {
	if n == 0 {
		return "-"
	}
	return strconv.Itoa(n)
}

func newAgentHealthCommand(g *globals) *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:   "health TENANT/ID [--limit N]",
		Short: "Show an agent's history of component health changes",
		Long: `Show the changes of an agent's component health, newest first: a row each
time a component's status or drift changed (or the component first
appeared), with the message the agent gave. DRIFT is "yes (what drifted)"
while what the last applied plan put in place differs from what is live,
"-" otherwise. Heartbeats that change nothing are not recorded, so the
history stays short. Needs any role.`,
		Example: `  attache agent health acme/agent-7f3c
  attache agent health acme/agent-7f3c --limit 1000 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tenant, id, err := parseAgentRef(args[0])
			if err != nil {
				return err
			}
			if limit < 1 || limit > 1000 {
				return fmt.Errorf("--limit must be between 1 and 1000, not %d", limit)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			l, err := c.AgentHealthEvents(cmd.Context(), tenant, id, limit)
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, l)
			}
			if len(l.Events) == 0 {
				fmt.Fprintf(g.stderr, "agent %s/%s has reported no component health yet\n", tenant, id)
			}
			rows := make([][]string, 0, len(l.Events))
			for _, e := range l.Events {
				drift := "-"
				if e.Drift {
					drift = cell(withNote("yes", e.DriftDetail))
				}
				rows = append(rows, []string{textout.Time(e.At), textout.Cell(e.Component, 60), textout.Cell(e.Status, 20), cell(e.Message), drift})
			}
			return textout.Table(g.stdout, []string{"TIME", "COMPONENT", "STATUS", "MESSAGE", "DRIFT"}, rows)
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 100, "at most this many changes, newest first (1-1000)")
	return cmd
}
