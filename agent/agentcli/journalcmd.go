package agentcli

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"attache.dev/attache/agent/journal"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/textout"
)

// journalReadTimeout is how long the read-only commands wait for the
// journal's file lock before saying the agent is running.
const journalReadTimeout = 500 * time.Millisecond

// maxCellRunes bounds a message in a table cell; -o json has it whole.
const maxCellRunes = 120

// ErrAgentRunning is matched (errors.Is) by the error of the journal
// commands when an agent holds the journal; the error also matches
// journal.ErrLocked.
var ErrAgentRunning = errors.New("the agent is running")

// openJournalReadOnly opens the journal in stateDir for reading. It never
// creates one, and fails at once with a clear error while an agent runs:
// the agent keeps an exclusive lock on the file, and reading its pages
// without the lock could see a transaction half written.
func openJournalReadOnly(stateDir string) (*journal.Journal, error) {
	path := filepath.Join(stateDir, JournalFile)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no plan journal at %s: the agent has not run with --state-dir %s yet", path, stateDir)
	}
	j, err := journal.Open(path, journal.Options{ReadOnly: true, Timeout: journalReadTimeout})
	if errors.Is(err, journal.ErrLocked) {
		return nil, fmt.Errorf("%w with --state-dir %s: %w; the journal can be read only while the agent is stopped "+
			"(the control plane shows the same plans: attache plan list --agent ID)", ErrAgentRunning, stateDir, journal.ErrLocked)
	}
	return j, err
}

func addOutputFlag(cmd *cobra.Command, output *string) {
	cmd.Flags().StringVarP(output, "output", "o", "table", "output format: table or json")
}

func checkOutput(output string) error {
	if output != "table" && output != "json" {
		return fmt.Errorf("--output must be table or json, not %q", output)
	}
	return nil
}

// planView is a journal record as `plans -o json` prints it: the record
// without its envelope, with the step count done.
type planView struct {
	ID         string               `json:"id"`
	Sequence   uint64               `json:"sequence"`
	State      string               `json:"state"`
	Reason     string               `json:"reason,omitempty"`
	Message    string               `json:"message,omitempty"`
	DryRun     bool                 `json:"dry_run,omitempty"`
	StepsDone  int                  `json:"steps_done"`
	StepsTotal int                  `json:"steps_total"`
	Steps      []journal.StepRecord `json:"steps,omitempty"`
	ReceivedAt time.Time            `json:"received_at"`
	StartedAt  time.Time            `json:"started_at,omitzero"`
	FinishedAt time.Time            `json:"finished_at,omitzero"`
	// Version counts the record's changes; Reported is the latest the
	// control plane acknowledged.
	Version  uint64 `json:"version"`
	Reported uint64 `json:"reported"`
}

func viewOf(rec journal.PlanRecord) planView {
	v := planView{
		ID: rec.ID, Sequence: rec.Sequence, State: rec.State, Reason: rec.Reason, Message: rec.Message,
		DryRun: rec.DryRun, StepsTotal: len(rec.Steps), Steps: rec.Steps,
		ReceivedAt: rec.ReceivedAt, StartedAt: rec.StartedAt, FinishedAt: rec.FinishedAt,
		Version: rec.Version, Reported: rec.Reported,
	}
	for _, s := range rec.Steps {
		if s.State == journal.StepSucceeded || s.State == journal.StepPlanned {
			v.StepsDone++
		}
	}
	return v
}

func newPlansCommand(stdout io.Writer) *cobra.Command {
	var (
		stateDir, output string
		limit            int
	)
	cmd := &cobra.Command{
		Use:   "plans --state-dir DIR [--limit N] [-o json]",
		Short: "List the plans in the agent's journal, newest first",
		Long: `List the plans the agent journaled, newest first: each accepted plan with its
sequence, state and how many steps are done (succeeded, or planned in a dry
run), and each refused plan with its reason and message. REPORTED says whether
the control plane acknowledged the latest state of the record. -o json adds
every step's state, attempts, timings, changes and compensation.

The agent holds its journal locked while it runs: stop it first. While it is
running this command fails at once and changes nothing.`,
		Example: `  attache-agent plans --state-dir /var/lib/attache-agent
  attache-agent plans --state-dir /var/lib/attache-agent --limit 5 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if limit < 0 {
				return fmt.Errorf("--limit must be 0 (all) or more, not %d", limit)
			}
			j, err := openJournalReadOnly(stateDir)
			if err != nil {
				return err
			}
			defer j.Close()
			recs, err := j.List(limit)
			if err != nil {
				return err
			}
			views := make([]planView, len(recs))
			for i, r := range recs {
				views[i] = viewOf(r)
			}
			if output == "json" {
				return textout.JSON(stdout, views)
			}
			if len(views) == 0 {
				_, err := fmt.Fprintln(stdout, "no plans in the journal")
				return err
			}
			rows := make([][]string, 0, len(views))
			for _, v := range views {
				steps := "-"
				if v.StepsTotal > 0 {
					steps = fmt.Sprintf("%d/%d", v.StepsDone, v.StepsTotal)
				}
				dry := "-"
				if v.DryRun {
					dry = "yes"
				}
				reported := "no"
				if v.Reported >= v.Version {
					reported = "yes"
				}
				msg := v.Message
				if v.Reason != "" {
					msg = v.Reason + ": " + msg
				}
				rows = append(rows, []string{cell(v.ID), strconv.FormatUint(v.Sequence, 10), v.State, steps, dry,
					textout.Time(v.ReceivedAt), reported, cell(msg)})
			}
			return textout.Table(stdout, []string{"ID", "SEQ", "STATE", "STEPS", "DRY-RUN", "RECEIVED", "REPORTED", "MESSAGE"}, rows)
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", "", "the agent's state directory (required)")
	cmd.Flags().IntVar(&limit, "limit", 50, "at most this many plans; 0 lists all")
	addOutputFlag(cmd, &output)
	_ = cmd.MarkFlagRequired("state-dir")
	return cmd
}

func newAuditCommand(stdout io.Writer) *cobra.Command {
	var (
		stateDir, output string
		verify           bool
	)
	cmd := &cobra.Command{
		Use:   "audit --state-dir DIR [--verify] [-o json]",
		Short: "Show or verify the agent's own audit log",
		Long: `Show the agent's audit log, kept in its journal: every plan it accepted
(plan.accept) or refused (plan.refuse, with the reason and message it reported
to the control plane) and every trust-root rotation it followed or refused
(trust_root.follow). The log is a hash chain: every record commits to the one
before it.

--verify recomputes the chain and checks that it ends at the recorded head; it
exits non-zero naming the first record that fails. -o json writes one record
per line, the format 'attache audit verify --file' also checks.

The agent holds its journal locked while it runs: stop it first. While it is
running this command fails at once and changes nothing.`,
		Example: `  attache-agent audit --state-dir /var/lib/attache-agent
  attache-agent audit --state-dir /var/lib/attache-agent --verify
  attache-agent audit --state-dir /var/lib/attache-agent -o json > agent-audit.jsonl`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			j, err := openJournalReadOnly(stateDir)
			if err != nil {
				return err
			}
			defer j.Close()
			if verify {
				if err := j.VerifyAudit(); err != nil {
					return err
				}
				recs, err := j.AuditLog()
				if err != nil {
					return err
				}
				seq, hash := uint64(0), auditlog.GenesisHash
				if n := len(recs); n > 0 {
					seq, hash = recs[n-1].Seq, recs[n-1].Hash
				}
				s := hex.EncodeToString(hash)
				_, err = fmt.Fprintf(stdout, "agent audit log verified: %d records, head %d %s\n", len(recs), seq, s[:16])
				return err
			}
			recs, err := j.AuditLog()
			if err != nil {
				return err
			}
			if output == "json" {
				// One record per line, Detail byte-exact (its hash covers it).
				enc := json.NewEncoder(stdout)
				enc.SetEscapeHTML(false)
				for _, r := range recs {
					if err := enc.Encode(r); err != nil {
						return err
					}
				}
				return nil
			}
			if len(recs) == 0 {
				_, err := fmt.Fprintln(stdout, "the agent's audit log is empty")
				return err
			}
			rows := make([][]string, 0, len(recs))
			for _, r := range recs {
				rows = append(rows, []string{strconv.FormatUint(r.Seq, 10), textout.Time(r.Time), r.Action,
					cell(r.Target), r.Outcome, textout.Clean(string(r.Detail))})
			}
			return textout.Table(stdout, []string{"SEQ", "TIME", "ACTION", "TARGET", "OUTCOME", "DETAIL"}, rows)
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", "", "the agent's state directory (required)")
	cmd.Flags().BoolVar(&verify, "verify", false, "recompute the hash chain and check it instead of printing the records")
	addOutputFlag(cmd, &output)
	_ = cmd.MarkFlagRequired("state-dir")
	return cmd
}

// cell is a journal field fit for a table cell: see textout.Cell.
func cell(s string) string { return textout.Cell(s, maxCellRunes) }
