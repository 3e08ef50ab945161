package opscli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/internal/textout"
)

// rolloutPollInterval is how often --watch asks for the rollout.
var rolloutPollInterval = time.Second

// isTerminal reports whether w is a terminal, where --watch redraws the
// view instead of printing a line per change.
var isTerminal = func(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

const (
	// progressWidth is the number of cells in a wave's progress bar.
	progressWidth = 20
	// maxTargetRows bounds the list of tenants not yet succeeded.
	maxTargetRows = 50
	// clearScreen moves the cursor home and clears the terminal.
	clearScreen = "\x1b[H\x1b[2J"
)

func newRolloutCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Roll a release out across tenants in waves, and follow, pause or abort it",
		Long: `A rollout takes a pushed release to a set of tenants in waves. For each tenant of
the current wave the control plane renders the release into a signed plan
for its agent (at most --concurrency in flight), skipping tenants pinned to
another version and holding those outside their maintenance windows. A wave
passes its gate when its plans succeeded within --max-failed and, for the
--bake time after, the upgraded tenants' agents report healthy components
and their app error rate stays at or under --max-error-rate; then the next
wave starts. A failed gate halts the rollout and rolls that wave's tenants
back to the release they had; the rollout ends Failed and never reaches
the later waves.

Conditions: Progressing, Waiting (a maintenance window, the bake time or a
freeze), Halted (paused, or rolling back), Complete and Failed — each with a
reason and the underlying detail. Rollout state lives in the control
plane's store: a restarted or replaced control plane carries on where it
stopped, without issuing a plan twice.`,
		Example: `  attache rollout start --release 1.5.0 --selector all --waves canary:2,10%,50%,100% --bake 10m --max-failed 1 --max-error-rate 2% --watch
  attache rollout list --active
  attache rollout status ro-20260301-101500-1a2b3c4d --watch
  attache rollout pause ro-20260301-101500-1a2b3c4d
  attache rollout resume ro-20260301-101500-1a2b3c4d
  attache rollout abort ro-20260301-101500-1a2b3c4d`,
	}
	cmd.AddCommand(newRolloutStartCommand(g), newRolloutListCommand(g), newRolloutStatusCommand(g),
		newRolloutControlCommand(g, "pause"), newRolloutControlCommand(g, "resume"), newRolloutControlCommand(g, "abort"))
	return cmd
}

func newRolloutStartCommand(g *globals) *cobra.Command {
	var (
		req          apiclient.StartRolloutRequest
		maxErrorRate string
		bake, ttl    time.Duration
		watch        bool
	)
	cmd := &cobra.Command{
		Use:   "start --release VERSION (--selector SEL | --tenants a,b) --waves WAVES [flags]",
		Short: "Start rolling a release out in waves",
		Long: `Start a rollout of a pushed release.

  --selector   which tenants: "all", or labels "k=v,k2=v2" (the key tier
               matches the tenant's tier: tier=silo); --tenants adds tenants
               by name (either or both)
  --waves      the waves, in order: a count of tenants (canary:2) or a
               cumulative percentage of the selected tenants (10%, 50%,
               100%), optionally named (name:size; unnamed ones are wave-N);
               the last must be 100%. Tenants are assigned in name order.
  --bake       how long a finished wave must stay healthy before the next
               one starts (default none)
  --max-failed       failed plans a wave may have and still pass (default 0)
  --max-error-rate   the app error rate (2% or 0.02) a wave's tenants may
                     reach during the bake; default: not checked
  --concurrency      plans in flight at once (default 10)
  --plan-ttl         how long each plan is valid (default 1h)
  --ignore-windows   act outside tenants' maintenance windows

With --watch, follow the rollout until it is Complete (exit 0) or Failed
(exit 1); see "attache rollout status --help". Needs the admin or operator
role.`,
		Example: `  attache rollout start --release 1.5.0 --selector all --waves canary:2,10%,50%,100% --bake 10m --max-failed 1 --max-error-rate 2% --concurrency 20
  attache rollout start --release 1.5.0 --selector tier=silo,region=eu --waves 50%,100% --watch
  attache rollout start --release 1.5.1 --tenants acme,globex --waves 100% --ignore-windows --plan-ttl 2h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case req.Release == "":
				return errors.New("--release is required (see attache release list)")
			case req.Selector == "" && len(req.Tenants) == 0:
				return errors.New(`--selector or --tenants is required (--selector all selects every tenant)`)
			case req.Waves == "":
				return errors.New("--waves is required, e.g. --waves canary:2,10%,50%,100%")
			case bake < 0:
				return fmt.Errorf("--bake must not be negative, not %s", bake)
			case ttl < 0:
				return fmt.Errorf("--plan-ttl must not be negative, not %s", ttl)
			case req.MaxFailed < 0:
				return fmt.Errorf("--max-failed must not be negative, not %d", req.MaxFailed)
			case req.Concurrency < 0:
				return fmt.Errorf("--concurrency must not be negative, not %d", req.Concurrency)
			}
			if bake > 0 {
				req.Bake = bake.String()
			}
			if ttl > 0 {
				req.PlanTTL = ttl.String()
			}
			req.MaxErrorRate = apiclient.Rate(maxErrorRate)
			c, err := g.client()
			if err != nil {
				return err
			}
			ro, err := c.StartRollout(cmd.Context(), req)
			if err != nil {
				return err
			}
			if watch {
				if !g.json() {
					fmt.Fprintf(g.stderr, "rollout %s started\n", ro.ID)
				}
				return g.watchRollout(cmd.Context(), c, ro.ID, g.json())
			}
			if g.json() {
				return textout.JSON(g.stdout, ro)
			}
			if err := printRolloutStatus(g.stdout, ro); err != nil {
				return err
			}
			fmt.Fprintf(g.stderr, "follow it with: attache rollout status %s --watch\n", ro.ID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Release, "release", "", "the pushed release version to roll out (required)")
	f.StringVar(&req.Selector, "selector", "", `tenants to update: "all" or labels "k=v,k2=v2" (tier=… matches the tier)`)
	f.StringSliceVar(&req.Tenants, "tenants", nil, "tenants to update, by name (comma-separated; with or instead of --selector)")
	f.StringVar(&req.Waves, "waves", "", "waves: counts or cumulative percentages, optionally named, e.g. canary:2,10%,50%,100% (required)")
	f.DurationVar(&bake, "bake", 0, "how long a finished wave must stay healthy before the next starts")
	f.IntVar(&req.MaxFailed, "max-failed", 0, "failed plans a wave may have and still pass")
	f.StringVar(&maxErrorRate, "max-error-rate", "", "highest app error rate during the bake, 2% or 0.02 (default: not checked)")
	f.IntVar(&req.Concurrency, "concurrency", 0, "plans in flight at once (default 10)")
	f.DurationVar(&ttl, "plan-ttl", 0, "how long each plan stays valid (default 1h)")
	f.BoolVar(&req.IgnoreWindows, "ignore-windows", false, "act outside tenants' maintenance windows")
	f.BoolVar(&watch, "watch", false, "follow the rollout until it is Complete (exit 0) or Failed (exit 1)")
	return cmd
}

func newRolloutListCommand(g *globals) *cobra.Command {
	var q apiclient.RolloutQuery
	cmd := &cobra.Command{
		Use:   "list [--active] [--limit N]",
		Short: "List rollouts, newest first",
		Example: `  attache rollout list
  attache rollout list --active -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			rs, err := c.ListRollouts(cmd.Context(), q)
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, rs)
			}
			rows := make([][]string, 0, len(rs))
			for _, ro := range rs {
				size, done := 0, 0
				for _, w := range ro.Waves {
					size += w.Size
					done += w.Done
				}
				rows = append(rows, []string{ro.ID, ro.Release, ro.State, orDash(ro.Reason), waveLabel(ro),
					fmt.Sprintf("%d/%d", done, size), textout.Time(ro.CreatedAt)})
			}
			return textout.Table(g.stdout, []string{"ID", "RELEASE", "STATE", "REASON", "WAVE", "DONE", "CREATED"}, rows)
		},
	}
	cmd.Flags().BoolVar(&q.Active, "active", false, "only rollouts that have not finished")
	cmd.Flags().IntVar(&q.Limit, "limit", 50, "at most this many rollouts (1-500)")
	return cmd
}

// waveLabel is "2/4 wave-2".
func waveLabel(ro apiclient.Rollout) string {
	if len(ro.Waves) == 0 {
		return "-"
	}
	return fmt.Sprintf("%d/%d %s", ro.Wave+1, len(ro.Waves), ro.WaveName)
}

func newRolloutStatusCommand(g *globals) *cobra.Command {
	var (
		watch  bool
		format string
	)
	cmd := &cobra.Command{
		Use:   "status ID [--watch] [--format table|json]",
		Short: "Show a rollout's condition, each wave's progress and the tenants not yet done",
		Long: `Show a rollout: its condition (State: Reason — the underlying detail), a table
of its waves (size, a progress bar of the tenants done, and how many are in
each state), then the tenants that have not succeeded, with their messages
(pinned tenants are skipped, tenants outside their maintenance window wait).

With --watch, follow it live until it is Complete (exit 0) or Failed (exit
1). On a terminal the view is redrawn every second; otherwise a line is
printed each time the condition changes (with --format json, one JSON
object per change). Ctrl-C stops watching; the rollout goes on.`,
		Example: `  attache rollout status ro-20260301-101500-1a2b3c4d
  attache rollout status ro-20260301-101500-1a2b3c4d --watch
  attache rollout status ro-20260301-101500-1a2b3c4d --format json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			jsonOut := g.json()
			if cmd.Flags().Changed("format") {
				switch format {
				case "table", "json":
					jsonOut = format == "json"
				default:
					return fmt.Errorf("--format must be table or json, not %q", format)
				}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			if watch {
				return g.watchRollout(cmd.Context(), c, args[0], jsonOut)
			}
			ro, err := c.GetRollout(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if jsonOut {
				return textout.JSON(g.stdout, ro)
			}
			return printRolloutStatus(g.stdout, ro)
		},
	}
	cmd.Flags().BoolVar(&watch, "watch", false, "follow the rollout live until it is Complete (exit 0) or Failed (exit 1)")
	cmd.Flags().StringVar(&format, "format", "table", "output format: table or json (default: --output)")
	return cmd
}

func newRolloutControlCommand(g *globals, verb string) *cobra.Command {
	var short, long, done string
	switch verb {
	case "pause":
		short = "Pause a rollout: no new plans until it is resumed"
		long = `Pause a rollout: the control plane issues no new plan for it; plans already
issued run to the end. The rollout shows Halted (Paused) until resumed.`
		done = "pause requested: no new plans are issued; plans in flight finish. Resume with: attache rollout resume %s"
	case "resume":
		short = "Resume a paused rollout"
		long = `Resume a paused rollout where it stopped. An aborted or finished rollout cannot
be resumed.`
		done = "resumed"
	case "abort":
		short = "Abort a rollout: cancel the tenants it has not reached"
		long = `Abort a rollout: tenants it has not reached are cancelled, plans already issued
run to the end (nothing is rolled back), and the rollout ends Failed
(Aborted). It cannot be resumed; start a new rollout instead.`
		done = "abort requested: tenants not reached are cancelled and the rollout ends Failed (Aborted)"
	}
	return &cobra.Command{
		Use:     verb + " ID",
		Short:   short,
		Long:    long + "\nNeeds the admin or operator role; audited as rollout." + verb + ".",
		Example: "  attache rollout " + verb + " ro-20260301-101500-1a2b3c4d",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var ro apiclient.Rollout
			switch verb {
			case "pause":
				ro, err = c.PauseRollout(cmd.Context(), args[0])
			case "resume":
				ro, err = c.ResumeRollout(cmd.Context(), args[0])
			default:
				ro, err = c.AbortRollout(cmd.Context(), args[0])
			}
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, ro)
			}
			msg := done
			if strings.Contains(msg, "%s") {
				msg = fmt.Sprintf(msg, ro.ID)
			}
			_, err = fmt.Fprintf(g.stdout, "rollout %s: %s\n%s\n", ro.ID, msg, conditionLine(ro))
			return err
		},
	}
}

// conditionLine is "Progressing: WaveInProgress — 3 of 10 tenants done".
func conditionLine(ro apiclient.Rollout) string {
	line := ro.State
	if ro.Reason != "" {
		line += ": " + ro.Reason
	}
	if ro.Message != "" {
		line += " — " + textout.Clean(ro.Message)
	}
	return line
}

// printRolloutStatus is `rollout status`: the header and condition, the
// wave table, then the tenants not yet succeeded.
func printRolloutStatus(w io.Writer, ro apiclient.Rollout) error {
	fmt.Fprintf(w, "Rollout %s: release %s, wave %s, started %s by %s\n", ro.ID, ro.Release, waveLabel(ro), textout.Time(ro.CreatedAt), orDash(ro.CreatedBy))
	fmt.Fprintln(w, conditionLine(ro))
	if ro.Control != "" && ro.FinishedAt == nil {
		fmt.Fprintf(w, "Operator asked: %s\n", ro.Control)
	}
	fmt.Fprintf(w, "Spec: %s\n\n", specLine(ro.Spec))
	rows := make([][]string, 0, len(ro.Waves))
	for _, wv := range ro.Waves {
		name := "  " + wv.Name
		if wv.Index == ro.Wave && ro.FinishedAt == nil {
			name = "* " + wv.Name
		}
		rows = append(rows, []string{name, strconv.Itoa(wv.Size), progressBar(wv.Done, wv.Size), stateCounts(wv.Counts)})
	}
	if err := textout.Table(w, []string{"  WAVE", "SIZE", "PROGRESS", "STATES"}, rows); err != nil {
		return err
	}
	var trows [][]string
	more := 0
	for _, t := range ro.Targets {
		if t.State == "succeeded" || t.State == "pending" && t.Wave > ro.Wave {
			continue
		}
		if len(trows) == maxTargetRows {
			more++
			continue
		}
		trows = append(trows, []string{t.Tenant, t.WaveName, t.State, orDash(t.PlanID), cell(t.Message)})
	}
	if len(trows) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\nNot yet succeeded:")
	if err := textout.Table(w, []string{"TENANT", "WAVE", "STATE", "PLAN", "MESSAGE"}, trows); err != nil {
		return err
	}
	if more > 0 {
		fmt.Fprintf(w, "… and %d more (attache rollout status %s -o json lists every tenant)\n", more, ro.ID)
	}
	return nil
}

func specLine(sp apiclient.RolloutSpec) string {
	var parts []string
	if sp.Selector != "" {
		parts = append(parts, "selector "+sp.Selector)
	}
	if len(sp.Tenants) > 0 {
		parts = append(parts, "tenants "+strings.Join(sp.Tenants, ","))
	}
	parts = append(parts, "waves "+sp.Waves, "bake "+sp.Bake, "max failed "+strconv.Itoa(sp.MaxFailed))
	if sp.MaxErrorRate > 0 {
		parts = append(parts, "max error rate "+strconv.FormatFloat(sp.MaxErrorRate*100, 'f', -1, 64)+"%")
	}
	parts = append(parts, "concurrency "+strconv.Itoa(sp.Concurrency), "plan ttl "+sp.PlanTTL)
	if sp.IgnoreWindows {
		parts = append(parts, "ignoring maintenance windows")
	}
	return strings.Join(parts, "; ")
}

// progressBar is "[##########----------] 5/10".
func progressBar(done, size int) string {
	filled := 0
	if size > 0 {
		filled = done * progressWidth / size
	}
	return "[" + strings.Repeat("#", filled) + strings.Repeat("-", progressWidth-filled) + "] " + strconv.Itoa(done) + "/" + strconv.Itoa(size)
}

// stateCounts is "succeeded=3 dispatched=2", in apiv1.TargetStates order.
func stateCounts(counts map[string]int) string {
	var parts []string
	for _, s := range apiv1.TargetStates {
		if n := counts[s]; n > 0 {
			parts = append(parts, s+"="+strconv.Itoa(n))
		}
	}
	for s, n := range counts { // states this CLI does not know yet
		if n > 0 && !slices.Contains(apiv1.TargetStates, s) {
			parts = append(parts, textout.Clean(s)+"="+strconv.Itoa(n))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

// watchRollout follows rollout id until it is Complete (nil) or Failed (an
// error naming the cause). On a terminal it redraws the status every
// rolloutPollInterval; otherwise it prints a line (or, jsonOut, a JSON
// object) whenever the condition changes. A cancelled ctx (Ctrl-C) stops
// the watching, never the rollout.
func (g *globals) watchRollout(ctx context.Context, c *apiclient.Client, id string, jsonOut bool) error {
	tty := !jsonOut && isTerminal(g.stdout)
	tick := time.NewTicker(rolloutPollInterval)
	defer tick.Stop()
	last := ""
	for {
		ro, err := c.GetRollout(ctx, id)
		switch {
		case err == nil:
			if err := g.showWatched(ro, tty, jsonOut, &last); err != nil {
				return err
			}
			if ro.State == apiv1.RolloutComplete {
				return nil
			}
			if ro.State == apiv1.RolloutFailed {
				return fmt.Errorf("rollout %s failed: %s", ro.ID, conditionLine(ro))
			}
		case ctx.Err() != nil:
			// Interrupted mid-request: reported below.
		case isTransient(err):
			fmt.Fprintf(g.stderr, "%s rollout %s: %v (retrying)\n", clock(), id, err)
		default:
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped watching rollout %s; the rollout goes on (attache rollout status %s --watch)", id, id)
		case <-tick.C:
		}
	}
}

// showWatched prints one observation of a watched rollout: the whole view
// redrawn on a terminal, else a line when the condition changed.
func (g *globals) showWatched(ro apiclient.Rollout, tty, jsonOut bool, last *string) error {
	if tty {
		var buf bytes.Buffer
		if err := printRolloutStatus(&buf, ro); err != nil {
			return err
		}
		if ro.FinishedAt == nil {
			fmt.Fprintf(&buf, "\n%s watching; Ctrl-C stops watching, not the rollout\n", clock())
		}
		_, err := io.WriteString(g.stdout, clearScreen+buf.String())
		return err
	}
	key := strings.Join([]string{ro.State, ro.Reason, ro.Message, strconv.Itoa(ro.Wave), ro.Control}, "\x00")
	if key == *last {
		return nil
	}
	*last = key
	if jsonOut {
		b, err := json.Marshal(ro)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(g.stdout, "%s\n", b)
		return err
	}
	_, err := fmt.Fprintf(g.stdout, "%s %s wave %s: %s\n", clock(), ro.ID, waveLabel(ro), conditionLine(ro))
	return err
}
