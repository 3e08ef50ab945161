package opscli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/internal/plan"

	"attache.dev/attache/internal/textout"
)

// planPollInterval is how often --wait asks for the plan's status.
var planPollInterval = 500 * time.Millisecond

// defaultPlanWait is how long --wait waits by default.
const defaultPlanWait = 5 * time.Minute

// maxMessageRunes is where step messages are cut in tables (-o json and
// `plan show` of one step keep them whole).
const maxMessageRunes = 100

func newPlanCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Submit signed deployment plans and follow them",
		Long: `A plan is an ordered set of steps for one agent of one tenant, written in YAML.
The control plane validates it, signs it with its plans key, stores it with
the agent's next sequence number and offers it to the agent, which verifies
the signature, journals the plan and applies it step by step, reporting as it
goes. A plan for an agent that is offline waits until the agent reconnects, at
most until it expires.

  version: 1                # required
  release: app@v2           # optional
  expires_in: 1h            # optional: default 24h, at most 7d
  steps:
    - id: app               # lowercase DNS label, unique in the plan
      provider: local
      action: app.upgrade
      resource: app
      params: {version: v2, command: [sampleapp, -version, v2]}  # optional
      depends_on: [migrate] # optional: ids of steps that run first
      compensation:         # optional: undoes the step if a later one fails
        action: app.stop
        params: {}          # optional

A failed step stops the plan; the steps that succeeded before it run their
compensations, newest first. A dry run (--dry-run) asks every provider what
it would change and changes nothing. A signed plan may be at most 1 MiB:
split bigger ones, or move bulky content into the release.

Plan states: pending (waiting for the agent), accepted, running, succeeded,
failed, refused (the agent did not accept it: the message says why) and
expired (never delivered before its expiry).`,
		Example: `  attache plan submit --tenant acme install.yaml --wait
  attache plan submit --tenant acme --agent agent-7f3c --dry-run upgrade.yaml --wait
  attache plan list --tenant acme
  attache plan show 0193a1b2-…
  attache plan status 0193a1b2-… --wait`,
	}
	cmd.AddCommand(newPlanSubmitCommand(g), newPlanListCommand(g), newPlanShowCommand(g), newPlanStatusCommand(g))
	return cmd
}

// waitFlags are --wait and --timeout.
type waitFlags struct {
	wait    bool
	timeout time.Duration
}

func (w *waitFlags) add(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&w.wait, "wait", false, "follow the plan until it is done; exit non-zero unless it succeeded")
	cmd.Flags().DurationVar(&w.timeout, "timeout", defaultPlanWait, "with --wait: give up waiting after this long (the plan goes on)")
}

func (w *waitFlags) check(cmd *cobra.Command) error {
	if cmd.Flags().Changed("timeout") && !w.wait {
		return errors.New("--timeout needs --wait")
	}
	if w.timeout <= 0 {
		return fmt.Errorf("--timeout must be positive, not %s", w.timeout)
	}
	return nil
}

func newPlanSubmitCommand(g *globals) *cobra.Command {
	var (
		req apiclient.SubmitPlanRequest
		wf  waitFlags
	)
	cmd := &cobra.Command{
		Use:   "submit --tenant TENANT [--agent ID] [--dry-run] [--wait [--timeout 5m]] FILE|-",
		Short: "Validate, sign and send a plan to a tenant's agent",
		Long: `Submit the plan in FILE (- reads standard input) for a tenant's agent. The
control plane checks the YAML (errors name the field), signs the plan and
queues it for the agent. --agent names the agent; it may be left out when
the tenant has exactly one agent that is not revoked.

Prints the plan's ID, sequence number and state. With --wait it then
follows the plan, printing each step's progress to stderr, prints the step
table when the plan is done and exits non-zero unless it succeeded. Needs
the admin or operator role.`,
		Example: `  attache plan submit --tenant acme install.yaml
  attache plan submit --tenant acme --agent agent-7f3c upgrade.yaml --wait --timeout 10m
  attache plan submit --tenant acme --dry-run upgrade.yaml --wait
  render-plan acme | attache plan submit --tenant acme - -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if req.Tenant == "" {
				return errors.New("--tenant is required")
			}
			if err := wf.check(cmd); err != nil {
				return err
			}
			yaml, err := readPlanFile(cmd.InOrStdin(), args[0])
			if err != nil {
				return err
			}
			req.YAML = string(yaml)
			c, err := g.client()
			if err != nil {
				return err
			}
			p, err := c.SubmitPlan(cmd.Context(), req)
			if err != nil {
				return err
			}
			if !wf.wait {
				if g.json() {
					return textout.JSON(g.stdout, p)
				}
				if err := fields(g.stdout, submittedFields(p)); err != nil {
					return err
				}
				fmt.Fprintf(g.stderr, "follow it with: attache plan status %s --wait\n", p.ID)
				return nil
			}
			if !g.json() {
				if err := fields(g.stdout, submittedFields(p)); err != nil {
					return err
				}
			}
			return g.waitAndReport(cmd.Context(), c, p, wf.timeout)
		},
	}
	cmd.Flags().StringVar(&req.Tenant, "tenant", "", "tenant the plan is for (required)")
	cmd.Flags().StringVar(&req.Agent, "agent", "", "agent ID; optional when the tenant has one active agent")
	cmd.Flags().BoolVar(&req.DryRun, "dry-run", false, "ask each provider what it would change; change nothing")
	wf.add(cmd)
	return cmd
}

// readPlanFile reads a plan's YAML from path, or from stdin for "-".
func readPlanFile(stdin io.Reader, path string) ([]byte, error) {
	var (
		r    io.Reader
		name = path
	)
	if path == "-" {
		r, name = stdin, "standard input"
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("read plan: %w", err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, plan.MaxYAMLBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read plan from %s: %w", name, err)
	}
	if len(b) > plan.MaxYAMLBytes {
		return nil, fmt.Errorf("plan in %s is larger than %d bytes (4 MiB), and a signed plan may be at most %d bytes (1 MiB): split the plan or move bulky content into the release",
			name, plan.MaxYAMLBytes, plan.MaxPlanBytes)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil, fmt.Errorf("plan in %s is empty", name)
	}
	return b, nil
}

func submittedFields(p apiclient.Plan) [][2]string {
	kv := [][2]string{
		{"Plan", p.ID},
		{"Tenant", p.Tenant},
		{"Agent", p.Agent},
		{"Sequence", strconv.FormatUint(p.Sequence, 10)},
		{"State", p.State},
	}
	if p.DryRun {
		kv = append(kv, [2]string{"Dry run", "yes: nothing will be changed"})
	}
	return append(kv, [2]string{"Expires", textout.Time(p.ExpiresAt)})
}

// waitAndReport follows plan p until it is done, then prints it: the step
// table, or the plan as JSON. It returns an error unless the plan
// succeeded.
func (g *globals) waitAndReport(ctx context.Context, c *apiclient.Client, p apiclient.Plan, timeout time.Duration) error {
	final, werr := g.waitPlan(ctx, c, p, timeout)
	if g.json() {
		if err := textout.JSON(g.stdout, final); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(g.stdout)
		if err := g.printStatus(final); err != nil {
			return err
		}
	}
	if werr != nil {
		return werr
	}
	if final.State != apiv1.PlanSucceeded {
		return planNotSucceeded(final)
	}
	return nil
}

func planNotSucceeded(p apiclient.Plan) error {
	msg := fmt.Sprintf("plan %s %s", p.ID, p.State)
	if p.Message != "" {
		msg += ": " + p.Message
	}
	if p.State == apiv1.PlanExpired {
		msg += fmt.Sprintf(" (agent %s/%s did not take it before %s)", p.Tenant, p.Agent, textout.Time(p.ExpiresAt))
	}
	return errors.New(msg)
}

// planDone reports whether a plan in state will not change any more.
func planDone(state string) bool {
	switch state {
	case apiv1.PlanSucceeded, apiv1.PlanFailed, apiv1.PlanRefused, apiv1.PlanExpired:
		return true
	}
	return false
}

// waitPlan polls plan p every planPollInterval until it is done or timeout
// passes, printing what changes to stderr. It returns the last plan seen.
// Transient failures (network, 5xx) are reported and retried.
func (g *globals) waitPlan(ctx context.Context, c *apiclient.Client, p apiclient.Plan, timeout time.Duration) (apiclient.Plan, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(planPollInterval)
	defer tick.Stop()
	var prev *apiclient.Plan
	if p.Steps != nil {
		prev = &p
	}
	last := p
	for {
		if prev == nil || !planDone(prev.State) {
			cur, err := c.GetPlan(ctx, p.ID)
			switch {
			case err == nil:
				g.progress(prev, cur)
				last, prev = cur, &cur
			case ctx.Err() != nil:
				// Timed out or interrupted mid-request: reported below.
			case isTransient(err):
				fmt.Fprintf(g.stderr, "%s plan %s: %v (retrying)\n", clock(), p.ID, err)
			default:
				return last, err
			}
		}
		if prev != nil && planDone(prev.State) {
			return last, nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return last, fmt.Errorf("plan %s is still %s after %s; it goes on without this command: attache plan status %s --wait",
					p.ID, last.State, timeout, p.ID)
			}
			return last, ctx.Err()
		case <-tick.C:
		}
	}
}

func isTransient(err error) bool {
	var ae *apiclient.APIError
	if errors.As(err, &ae) {
		return ae.Status >= 500 || ae.Status == http.StatusTooManyRequests
	}
	return true // network
}

func clock() string { return time.Now().Format("15:04:05") }

// progress prints to stderr what changed between prev (nil: nothing seen
// yet) and cur: the plan's state and each step's state, attempt, message
// and compensation.
func (g *globals) progress(prev *apiclient.Plan, cur apiclient.Plan) {
	w := g.stderr
	if prev == nil || prev.State != cur.State || prev.Message != cur.Message {
		line := fmt.Sprintf("%s plan %s: %s", clock(), cur.ID, cur.State)
		if cur.Message != "" {
			line += ": " + textout.Clean(cur.Message)
		}
		fmt.Fprintln(w, line)
	}
	before := map[string]apiclient.PlanStep{}
	if prev != nil {
		for _, s := range prev.Steps {
			before[s.ID] = s
		}
	}
	for _, s := range cur.Steps {
		b, seen := before[s.ID]
		if !seen {
			b = apiclient.PlanStep{State: apiv1.StepPending}
		}
		if s.State != b.State || s.Attempts != b.Attempts || s.Message != b.Message {
			fmt.Fprintf(w, "%s   step %s\n", clock(), stepLine(s))
		}
		if s.CompensationState != b.CompensationState || s.CompensationMessage != b.CompensationMessage {
			line := fmt.Sprintf("%s   step %s: compensation %s", clock(), s.ID, orDash(s.CompensationState))
			if s.CompensationMessage != "" {
				line += ": " + textout.Clean(s.CompensationMessage)
			}
			fmt.Fprintln(w, line)
		}
	}
}

// stepLine is "migrate: running (attempt 2): applying 003" or
// "migrate: succeeded in 1.2s".
func stepLine(s apiclient.PlanStep) string {
	line := s.ID + ": " + s.State
	if s.Attempts > 1 {
		line += fmt.Sprintf(" (attempt %d)", s.Attempts)
	}
	if s.Duration != "" && s.State != "running" {
		line += " in " + s.Duration
	}
	if s.Message != "" {
		line += ": " + textout.Clean(s.Message)
	}
	return line
}

func newPlanListCommand(g *globals) *cobra.Command {
	var q apiclient.PlanQuery
	cmd := &cobra.Command{
		Use:   "list [--tenant T] [--agent A] [--limit N]",
		Short: "List plans, newest first",
		Example: `  attache plan list
  attache plan list --tenant acme --agent agent-7f3c --limit 10
  attache plan list --tenant acme -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ps, err := c.ListPlans(cmd.Context(), q)
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, ps)
			}
			rows := make([][]string, 0, len(ps))
			for _, p := range ps {
				dry := "-"
				if p.DryRun {
					dry = "yes"
				}
				rows = append(rows, []string{p.ID, p.Tenant, p.Agent, strconv.FormatUint(p.Sequence, 10), p.State,
					strconv.Itoa(p.StepCount), dry, orDash(p.Release), textout.Time(p.CreatedAt)})
			}
			return textout.Table(g.stdout, []string{"ID", "TENANT", "AGENT", "SEQ", "STATE", "STEPS", "DRY-RUN", "RELEASE", "CREATED"}, rows)
		},
	}
	cmd.Flags().StringVar(&q.Tenant, "tenant", "", "only this tenant's plans")
	cmd.Flags().StringVar(&q.Agent, "agent", "", "only plans for this agent ID")
	cmd.Flags().IntVar(&q.Limit, "limit", 100, "at most this many plans (1-1000)")
	return cmd
}

func newPlanShowCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show a plan and every step's state, timing and message",
		Long: `Show a plan: who submitted it for which agent, its state, and each step with
its provider action, resource, state, attempts, duration and last message.
For a dry run (and for any step that reported changes) the changes follow.`,
		Example: `  attache plan show 0193a1b2-…
  attache plan show 0193a1b2-… -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			p, err := c.GetPlan(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, p)
			}
			return g.printPlan(p)
		},
	}
}

func newPlanStatusCommand(g *globals) *cobra.Command {
	var wf waitFlags
	cmd := &cobra.Command{
		Use:   "status ID [--wait [--timeout 5m]]",
		Short: "Show a plan's state and its steps' progress",
		Long: `Show a plan's state and a line per step. With --wait, follow the plan until
it is done (progress on stderr), print the final table and exit non-zero
unless it succeeded.`,
		Example: `  attache plan status 0193a1b2-…
  attache plan status 0193a1b2-… --wait --timeout 30m`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := wf.check(cmd); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			p, err := c.GetPlan(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if wf.wait && !planDone(p.State) {
				g.progress(nil, p)
				return g.waitAndReport(cmd.Context(), c, p, wf.timeout)
			}
			if g.json() {
				if err := textout.JSON(g.stdout, p); err != nil {
					return err
				}
			} else if err := g.printStatus(p); err != nil {
				return err
			}
			if wf.wait && p.State != apiv1.PlanSucceeded {
				return planNotSucceeded(p)
			}
			return nil
		},
	}
	wf.add(cmd)
	return cmd
}

// printPlan is `plan show`: the header, the step table and the changes.
func (g *globals) printPlan(p apiclient.Plan) error {
	dry := "no"
	if p.DryRun {
		dry = "yes: nothing is changed"
	}
	kv := [][2]string{
		{"Plan", p.ID},
		{"Tenant", p.Tenant},
		{"Agent", p.Agent},
		{"Sequence", strconv.FormatUint(p.Sequence, 10)},
		{"Release", orDash(p.Release)},
		{"Dry run", dry},
		{"State", p.State},
	}
	if p.Message != "" {
		kv = append(kv, [2]string{"Message", textout.Clean(p.Message)})
	}
	kv = append(kv,
		[2]string{"Created", textout.Time(p.CreatedAt) + " by " + orDash(p.CreatedBy)},
		[2]string{"Expires", textout.Time(p.ExpiresAt)},
		[2]string{"Acknowledged", formatTimePtr(p.AckedAt)},
		[2]string{"Finished", formatTimePtr(p.FinishedAt)},
	)
	if err := fields(g.stdout, kv); err != nil {
		return err
	}
	fmt.Fprintln(g.stdout)
	return g.printSteps(p, true)
}

// printStatus is `plan status`: one line for the plan, the step table and
// the changes.
func (g *globals) printStatus(p apiclient.Plan) error {
	line := fmt.Sprintf("Plan %s (%s/%s #%d", p.ID, p.Tenant, p.Agent, p.Sequence)
	if p.DryRun {
		line += ", dry run"
	}
	line += "): " + p.State
	if p.Message != "" {
		line += ": " + textout.Clean(p.Message)
	}
	fmt.Fprintln(g.stdout, line)
	return g.printSteps(p, false)
}

// printSteps prints the step table (with each step's action and resource
// when wide), a COMPENSATION column when any step has one, then the
// changes.
func (g *globals) printSteps(p apiclient.Plan, wide bool) error {
	header := []string{"STEP", "STATE", "ATTEMPTS", "DURATION", "MESSAGE"}
	if wide {
		header = slices.Insert(header, 1, "ACTION", "RESOURCE")
	}
	comp := hasCompensation(p.Steps)
	if comp {
		header = append(header, "COMPENSATION")
	}
	rows := make([][]string, 0, len(p.Steps))
	for _, s := range p.Steps {
		row := []string{s.ID, s.State, attempts(s), orDash(s.Duration), cell(s.Message)}
		if wide {
			row = slices.Insert(row, 1, s.Provider+"/"+s.Action, s.Resource)
		}
		if comp {
			row = append(row, compensation(s))
		}
		rows = append(rows, row)
	}
	if err := textout.Table(g.stdout, header, rows); err != nil {
		return err
	}
	if err := g.printChanges(p); err != nil {
		return err
	}
	return g.printOutputs(p)
}

// printOutputs lists the values steps returned, the verification first.
func (g *globals) printOutputs(p apiclient.Plan) error {
	var rows [][]string
	for _, s := range p.Steps {
		keys := plan.OutputKeys(s.Outputs)
		for _, k := range keys {
			rows = append(rows, []string{s.ID, cell(k), cell(s.Outputs[k])})
		}
	}
	if len(rows) == 0 {
		return nil
	}
	fmt.Fprintf(g.stdout, "\nOutputs:\n")
	return textout.Table(g.stdout, []string{"STEP", "OUTPUT", "VALUE"}, rows)
}

// printChanges lists what the steps changed or, in a dry run, would change.
func (g *globals) printChanges(p apiclient.Plan) error {
	var rows [][]string
	for _, s := range p.Steps {
		for _, ch := range s.Changes {
			rows = append(rows, []string{s.ID, ch.Operation, ch.Resource, cell(ch.Summary)})
		}
	}
	if len(rows) == 0 {
		return nil
	}
	title := "Changes:"
	if p.DryRun {
		title = "Changes the plan would make (dry run, nothing was changed):"
	}
	fmt.Fprintf(g.stdout, "\n%s\n", title)
	return textout.Table(g.stdout, []string{"STEP", "OPERATION", "RESOURCE", "SUMMARY"}, rows)
}

func hasCompensation(steps []apiclient.PlanStep) bool {
	for _, s := range steps {
		if s.CompensationState != "" {
			return true
		}
	}
	return false
}

func compensation(s apiclient.PlanStep) string {
	if s.CompensationState == "" {
		return "-"
	}
	if s.CompensationMessage == "" {
		return s.CompensationState
	}
	return cell(s.CompensationState + ": " + s.CompensationMessage)
}

func attempts(s apiclient.PlanStep) string {
	if s.Attempts == 0 {
		return "-"
	}
	return strconv.FormatUint(uint64(s.Attempts), 10)
}

// cell is a message fit for a table cell: see textout.Cell.
func cell(s string) string { return textout.Cell(s, maxMessageRunes) }
