package agentcli

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"attache.dev/attache/agent/journal"
	"attache.dev/attache/internal/auditlog"
)

var journalNow = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

// seedJournal writes a journal into a fresh state directory, as an agent
// would have left it, and closes it: p1 (sequence 1) succeeded and was
// acknowledged, p2 (sequence 2) is running with one step of three done, p3
// was refused. Three audit records, one per plan.
func seedJournal(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	clock := journalNow
	j, err := journal.Open(filepath.Join(dir, JournalFile), journal.Options{Now: func() time.Time {
		clock = clock.Add(time.Second)
		return clock
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	steps := func(ids ...string) []journal.StepRecord {
		var out []journal.StepRecord
		for _, id := range ids {
			out = append(out, journal.StepRecord{ID: id, Provider: "local", Action: "dir.ensure"})
		}
		return out
	}
	must := func(_ journal.PlanRecord, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	audit := func(action, target, outcome string, detail string) {
		t.Helper()
		if _, err := j.Audit(auditlog.Entry{Actor: "spiffe://example.org/tenant/acme/agent/a1", Role: "agent", Action: action,
			Tenant: "acme", Target: target, Outcome: outcome, Detail: json.RawMessage(detail)}); err != nil {
			t.Fatal(err)
		}
	}

	must(j.Accept(journal.PlanRecord{ID: "p1", Sequence: 1, Tenant: "acme", Envelope: []byte(`{"secret":"envelope"}`), Steps: steps("dir", "db")}))
	audit("plan.accept", "p1", auditlog.OutcomeSuccess, `{"sequence":1}`)
	must(j.Update("p1", func(r *journal.PlanRecord) error {
		r.State = journal.PlanSucceeded
		for i := range r.Steps {
			r.Steps[i].State = journal.StepSucceeded
			r.Steps[i].Attempts = 1
		}
		return nil
	}))
	rec, _ := j.Get("p1")
	if err := j.MarkReported("p1", rec.Version); err != nil {
		t.Fatal(err)
	}
	must(j.Accept(journal.PlanRecord{ID: "p2", Sequence: 2, Tenant: "acme", DryRun: true, Steps: steps("a", "b", "c")}))
	audit("plan.accept", "p2", auditlog.OutcomeSuccess, `{"sequence":2}`)
	must(j.Update("p2", func(r *journal.PlanRecord) error {
		r.State = journal.PlanRunning
		r.Steps[0].State = journal.StepPlanned
		r.Steps[1].State = journal.StepRunning
		r.Steps[1].Message = "planning\x1b[2J b"
		return nil
	}))
	must(j.Refuse(journal.PlanRecord{ID: "p3\x1b[31m", Sequence: 9, Tenant: "acme", Reason: "SIGNATURE",
		Message: "plan signature not valid: plans role needs 1 signature from its keys, got 0"}))
	audit("plan.refuse", "p3\x1b[31m", auditlog.OutcomeDenied, `{"reason":"SIGNATURE","sequence":9}`)
	return dir
}

func TestPlansCommand(t *testing.T) {
	dir := seedJournal(t)

	out, _, err := runCLI(t, "plans", "--state-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "ID") {
		t.Fatalf("plans output:\n%s", out)
	}
	if strings.ContainsRune(out, '\x1b') {
		t.Fatalf("control characters reach the terminal:\n%q", out)
	}
	// Newest first: the refusal, then p2, then p1.
	for i, want := range [][]string{
		{"p3\uFFFD[31m", "9", "refused", "-", "no", "SIGNATURE: plan signature not valid"},
		{"p2", "2", "running", "1/3", "yes", "no"},
		{"p1", "1", "succeeded", "2/2", "-", "yes"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i+1], w) {
				t.Errorf("line %q does not contain %q", lines[i+1], w)
			}
		}
	}

	out, _, err = runCLI(t, "plans", "--state-dir", dir, "--limit", "1")
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.Contains(lines[1], "refused") {
		t.Fatalf("--limit 1:\n%s", out)
	}

	out, _, err = runCLI(t, "plans", "--state-dir", dir, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "envelope") {
		t.Fatalf("-o json prints the envelope:\n%s", out)
	}
	var views []planView
	if err := json.Unmarshal([]byte(out), &views); err != nil {
		t.Fatal(err)
	}
	if len(views) != 3 {
		t.Fatalf("%d plans", len(views))
	}
	p3, p2, p1 := views[0], views[1], views[2]
	if p3.State != journal.PlanRefused || p3.Reason != "SIGNATURE" || p3.Sequence != 9 || p3.StepsTotal != 0 {
		t.Errorf("refused plan %+v", p3)
	}
	if p2.State != journal.PlanRunning || !p2.DryRun || p2.StepsDone != 1 || p2.StepsTotal != 3 || p2.Steps[1].Message != "planning\x1b[2J b" {
		t.Errorf("running plan %+v", p2)
	}
	if p1.State != journal.PlanSucceeded || p1.StepsDone != 2 || p1.Reported != p1.Version || p1.Steps[0].Attempts != 1 {
		t.Errorf("succeeded plan %+v", p1)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"plans"}, `"state-dir" not set`},
		{[]string{"plans", "--state-dir", dir, "-o", "yaml"}, "--output must be table or json"},
		{[]string{"plans", "--state-dir", dir, "--limit", "-1"}, "--limit"},
	} {
		if _, _, err := runCLI(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestPlansCommandEmptyAndMissing(t *testing.T) {
	dir := t.TempDir()
	_, _, err := runCLI(t, "plans", "--state-dir", dir)
	if err == nil || !strings.Contains(err.Error(), "no plan journal") {
		t.Fatalf("plans without a journal = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, JournalFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("plans created a journal")
	}

	j, err := journal.Open(filepath.Join(dir, JournalFile), journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	j.Close()
	out, _, err := runCLI(t, "plans", "--state-dir", dir)
	if err != nil || strings.TrimSpace(out) != "no plans in the journal" {
		t.Fatalf("empty journal: %q, %v", out, err)
	}
	if out, _, err := runCLI(t, "plans", "--state-dir", dir, "-o", "json"); err != nil || strings.TrimSpace(out) != "[]" {
		t.Fatalf("empty journal as JSON: %q, %v", out, err)
	}
	out, _, err = runCLI(t, "audit", "--state-dir", dir)
	if err != nil || !strings.Contains(out, "empty") {
		t.Fatalf("empty audit log: %q, %v", out, err)
	}
	out, _, err = runCLI(t, "audit", "--state-dir", dir, "--verify")
	if err != nil || !strings.Contains(out, "verified: 0 records") {
		t.Fatalf("verify an empty audit log: %q, %v", out, err)
	}
}

func TestAuditCommand(t *testing.T) {
	dir := seedJournal(t)

	out, _, err := runCLI(t, "audit", "--state-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "SEQ") || strings.ContainsRune(out, '\x1b') {
		t.Fatalf("audit output:\n%q", out)
	}
	for i, want := range [][]string{
		{"1", "plan.accept", "p1", "success", `{"sequence":1}`},
		{"2", "plan.accept", "p2", "success"},
		{"3", "plan.refuse", "p3", "denied", `"reason":"SIGNATURE"`},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i+1], w) {
				t.Errorf("line %q does not contain %q", lines[i+1], w)
			}
		}
	}

	out, _, err = runCLI(t, "audit", "--state-dir", dir, "--verify")
	if err != nil || !strings.HasPrefix(out, "agent audit log verified: 3 records, head 3 ") {
		t.Fatalf("--verify: %q, %v", out, err)
	}

	// -o json: one record per line, which verifies on its own.
	out, _, err = runCLI(t, "audit", "--state-dir", dir, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var recs []auditlog.Record
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var r auditlog.Record
		dec := json.NewDecoder(strings.NewReader(sc.Text()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		recs = append(recs, r)
	}
	if len(recs) != 3 || recs[2].Target != "p3\x1b[31m" {
		t.Fatalf("records %+v", recs)
	}
	if p := auditlog.Verify(recs, 0, auditlog.GenesisHash, 3, recs[2].Hash); p != nil {
		t.Fatalf("exported records do not verify: %v", p)
	}

	// Tampering with a record is caught, naming it.
	db, err := bolt.Open(filepath.Join(dir, JournalFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		key := binary.BigEndian.AppendUint64(nil, 2)
		b := tx.Bucket([]byte("audit"))
		var r auditlog.Record
		if err := json.Unmarshal(b.Get(key), &r); err != nil {
			return err
		}
		r.Outcome = auditlog.OutcomeDenied
		v, err := json.Marshal(r)
		if err != nil {
			return err
		}
		return b.Put(key, v)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := runCLI(t, "audit", "--state-dir", dir, "--verify"); err == nil || !strings.Contains(err.Error(), "audit record 2") {
		t.Fatalf("--verify of a tampered log = %v, want it to name record 2", err)
	}
}

// TestJournalCommandsWhileAgentRuns: the commands fail at once with a clear
// error while an agent holds the journal, and the agent is not disturbed.
func TestJournalCommandsWhileAgentRuns(t *testing.T) {
	dir := seedJournal(t)
	agent, err := journal.Open(filepath.Join(dir, JournalFile), journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()

	for _, args := range [][]string{
		{"plans", "--state-dir", dir},
		{"audit", "--state-dir", dir},
		{"audit", "--state-dir", dir, "--verify"},
	} {
		start := time.Now()
		out, _, err := runCLI(t, args...)
		if !errors.Is(err, ErrAgentRunning) || !errors.Is(err, journal.ErrLocked) || !strings.Contains(err.Error(), "only while the agent is stopped") {
			t.Fatalf("%v = %v, want ErrAgentRunning", args, err)
		}
		if out != "" {
			t.Errorf("%v printed %q", args, out)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("%v took %s to give up", args, d)
		}
	}
	// The agent goes on writing.
	if _, err := agent.Audit(auditlog.Entry{Action: "plan.accept", Outcome: auditlog.OutcomeSuccess}); err != nil {
		t.Fatalf("agent after the commands: %v", err)
	}
	if err := agent.VerifyAudit(); err != nil {
		t.Fatal(err)
	}
	agent.Close()
	if out, _, err := runCLI(t, "audit", "--state-dir", dir, "--verify"); err != nil || !strings.Contains(out, "4 records") {
		t.Fatalf("after the agent stopped: %q, %v", out, err)
	}
}
