package journal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/types/known/timestamppb"

	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/securefile"
	"attache.dev/attache/internal/sign"
	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"
)

// clock is a settable test clock that advances a millisecond per reading,
// so records received one after another have distinct ReceivedAt.
type clock struct{ t time.Time }

func (c *clock) now() time.Time {
	c.t = c.t.Add(time.Millisecond)
	return c.t
}

func open(t *testing.T, path string, opts Options) *Journal {
	t.Helper()
	j, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

func newJournal(t *testing.T) (*Journal, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "journal.db")
	c := &clock{t: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	return open(t, path, Options{Now: c.now}), path
}

func rec(id string, seq uint64, steps ...string) PlanRecord {
	r := PlanRecord{ID: id, Sequence: seq, Tenant: "acme"}
	for _, s := range steps {
		r.Steps = append(r.Steps, StepRecord{ID: s, Provider: "local", Action: "dir.ensure", State: "bogus"})
	}
	return r
}

func ids(recs []PlanRecord) string {
	var out []string
	for _, r := range recs {
		out = append(out, r.ID)
	}
	return strings.Join(out, ",")
}

func TestAcceptReplayExists(t *testing.T) {
	j, _ := newJournal(t)
	if seq, err := j.LastSequence(); err != nil || seq != 0 {
		t.Fatalf("LastSequence of a new journal = %d, %v", seq, err)
	}
	got, err := j.Accept(rec("p1", 5, "a", "b"))
	if err != nil {
		t.Fatal(err)
	}
	if got.State != PlanAccepted || got.Version != 1 || got.Reported != 0 || got.ReceivedAt.IsZero() {
		t.Fatalf("accepted record %+v", got)
	}
	for _, s := range got.Steps {
		if s.State != StepPending {
			t.Fatalf("step %s is %q, want pending", s.ID, s.State)
		}
	}
	if seq, _ := j.LastSequence(); seq != 5 {
		t.Fatalf("LastSequence = %d, want 5", seq)
	}
	back, err := j.Get("p1")
	if err != nil {
		t.Fatal(err)
	}
	if b1, b2 := mustJSON(t, got), mustJSON(t, back); b1 != b2 {
		t.Fatalf("Accept returned\n%s\nGet returns\n%s", b1, b2)
	}

	for _, tc := range []struct {
		name string
		rec  PlanRecord
		want error
	}{
		{"same id", rec("p1", 6), ErrExists},
		{"same sequence", rec("p2", 5), ErrReplay},
		{"older sequence", rec("p2", 4), ErrReplay},
		{"zero sequence", rec("p2", 0), ErrReplay},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := j.Accept(tc.rec)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Accept = %v, want %v", err, tc.want)
			}
		})
	}
	if seq, _ := j.LastSequence(); seq != 5 {
		t.Fatalf("LastSequence after refusals = %d, want 5", seq)
	}
	if _, err := j.Accept(PlanRecord{Sequence: 9}); err == nil {
		t.Fatal("Accept without an id succeeded")
	}
	if _, err := j.Get("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get unknown = %v, want ErrNotFound", err)
	}

	// Refuse: no LastSequence change; ErrExists returns the existing record.
	r, err := j.Refuse(PlanRecord{ID: "bad", Sequence: 99, Reason: "SIGNATURE", Message: "nope"})
	if err != nil || r.State != PlanRefused || r.Version != 1 {
		t.Fatalf("Refuse = %+v, %v", r, err)
	}
	if seq, _ := j.LastSequence(); seq != 5 {
		t.Fatalf("LastSequence after Refuse = %d, want 5", seq)
	}
	existing, err := j.Refuse(PlanRecord{ID: "p1"})
	if !errors.Is(err, ErrExists) || existing.State != PlanAccepted {
		t.Fatalf("Refuse of a known id = %+v, %v; want the accepted record and ErrExists", existing, err)
	}
	if _, err := j.Accept(rec("bad", 100)); !errors.Is(err, ErrExists) {
		t.Fatalf("Accept of a refused id = %v, want ErrExists", err)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestUpdate(t *testing.T) {
	j, _ := newJournal(t)
	if _, err := j.Accept(rec("p1", 1, "a")); err != nil {
		t.Fatal(err)
	}
	changed := j.Subscribe()
	<-drain(changed)
	got, err := j.Update("p1", func(r *PlanRecord) error {
		r.State = PlanRunning
		r.Steps[0].State = StepRunning
		r.Steps[0].Attempts++
		r.Version, r.Reported, r.ID = 100, 100, "hijack" // ignored
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 2 || got.Reported != 0 || got.ID != "p1" || got.State != PlanRunning || got.Steps[0].Attempts != 1 {
		t.Fatalf("updated record %+v", got)
	}
	select {
	case <-changed:
	default:
		t.Fatal("Update did not signal subscribers")
	}
	boom := errors.New("boom")
	if _, err := j.Update("p1", func(r *PlanRecord) error { r.State = PlanFailed; return boom }); !errors.Is(err, boom) {
		t.Fatalf("Update with failing fn = %v", err)
	}
	if r, _ := j.Get("p1"); r.Version != 2 || r.State != PlanRunning {
		t.Fatalf("aborted update was written: %+v", r)
	}
	select {
	case <-changed:
		t.Fatal("aborted Update signalled")
	default:
	}
	if _, err := j.Update("nope", func(*PlanRecord) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Update unknown = %v", err)
	}
}

// drain empties a cap-1 signal channel and returns a closed channel.
func drain(ch <-chan struct{}) <-chan struct{} {
	select {
	case <-ch:
	default:
	}
	done := make(chan struct{})
	close(done)
	return done
}

func TestUnfinishedUnreportedList(t *testing.T) {
	j, _ := newJournal(t)
	for _, r := range []PlanRecord{rec("p3", 3), rec("p7", 7), rec("p9", 9)} {
		if _, err := j.Accept(r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := j.Refuse(PlanRecord{ID: "r1", Reason: "EXPIRED"}); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Refuse(PlanRecord{ID: "r0", Reason: "EXPIRED"}); err != nil {
		t.Fatal(err)
	}
	finish := func(id string) {
		t.Helper()
		if _, err := j.Update(id, func(r *PlanRecord) error { r.State = PlanSucceeded; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	finish("p7")

	check := func(what string, f func() ([]PlanRecord, error), want string) {
		t.Helper()
		got, err := f()
		if err != nil {
			t.Fatal(err)
		}
		if ids(got) != want {
			t.Fatalf("%s = %s, want %s", what, ids(got), want)
		}
	}
	check("Unfinished", j.Unfinished, "p3,p9")
	check("Unreported", j.Unreported, "p3,p7,p9,r1,r0")
	check("List", func() ([]PlanRecord, error) { return j.List(0) }, "r0,r1,p9,p7,p3")
	check("List(2)", func() ([]PlanRecord, error) { return j.List(2) }, "r0,r1")

	// Reported catches up with Version; an older ack changes nothing; an
	// ack beyond Version is capped.
	if err := j.MarkReported("p3", 1); err != nil {
		t.Fatal(err)
	}
	if err := j.MarkReported("p7", 1); err != nil { // p7 is at version 2
		t.Fatal(err)
	}
	if err := j.MarkReported("r1", 50); err != nil {
		t.Fatal(err)
	}
	check("Unreported after acks", j.Unreported, "p7,p9,r0")
	if r, _ := j.Get("r1"); r.Reported != 1 || r.Version != 1 {
		t.Fatalf("r1 after ack beyond its version: %+v", r)
	}
	if err := j.MarkReported("p7", 2); err != nil {
		t.Fatal(err)
	}
	if err := j.MarkReported("p7", 1); err != nil {
		t.Fatal(err)
	}
	if r, _ := j.Get("p7"); r.Reported != 2 || r.Version != 2 {
		t.Fatalf("p7 after acks: %+v", r)
	}
	check("Unreported after p7 acked", j.Unreported, "p9,r0")
	// A change after the ack makes it unreported again.
	if _, err := j.Update("p3", func(r *PlanRecord) error { r.State = PlanRunning; return nil }); err != nil {
		t.Fatal(err)
	}
	check("Unreported after p3 changed", j.Unreported, "p3,p9,r0")
	check("Unfinished after p3 runs", j.Unfinished, "p3,p9")
	finish("p3")
	finish("p9")
	check("Unfinished when all done", j.Unfinished, "")
	if err := j.MarkReported("nope", 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("MarkReported unknown = %v", err)
	}
}

func TestRefusalPruning(t *testing.T) {
	c := &clock{t: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	j := open(t, filepath.Join(t.TempDir(), "journal.db"), Options{Now: c.now, MaxRefusals: 3})
	if _, err := j.Accept(rec("keep", 1)); err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		if _, err := j.Refuse(PlanRecord{ID: fmt.Sprintf("r%d", i), Reason: "SIGNATURE"}); err != nil {
			t.Fatal(err)
		}
	}
	all, err := j.List(0)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(all); got != "r5,r4,r3,keep" {
		t.Fatalf("after pruning: %s, want r5,r4,r3,keep", got)
	}
	for _, id := range []string{"r0", "r1", "r2"} {
		if _, err := j.Get(id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("pruned %s: Get = %v", id, err)
		}
	}
	un, _ := j.Unreported()
	if got := ids(un); got != "keep,r3,r4,r5" {
		t.Fatalf("Unreported after pruning: %s", got)
	}
}

func TestReopenPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.db")
	j, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Accept(rec("p1", 4, "a")); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Update("p1", func(r *PlanRecord) error {
		r.State = PlanRunning
		r.Steps[0].State = StepSucceeded
		r.Steps[0].Changes = []Change{{Resource: "tenants/acme", Operation: "create", Summary: "created"}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Refuse(PlanRecord{ID: "r1", Reason: "EXPIRED"}); err != nil {
		t.Fatal(err)
	}
	if err := j.MarkReported("r1", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Audit(auditlog.Entry{Actor: "agent", Role: "agent", Action: "plan.accept", Outcome: auditlog.OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}
	before, _ := j.List(0)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}

	j = open(t, path, Options{})
	after, err := j.List(0)
	if err != nil {
		t.Fatal(err)
	}
	if mustJSON(t, before) != mustJSON(t, after) {
		t.Fatalf("records changed across reopen:\n%s\n%s", mustJSON(t, before), mustJSON(t, after))
	}
	if seq, _ := j.LastSequence(); seq != 4 {
		t.Fatalf("LastSequence after reopen = %d", seq)
	}
	if un, _ := j.Unreported(); ids(un) != "p1" {
		t.Fatalf("Unreported after reopen = %s", ids(un))
	}
	if un, _ := j.Unfinished(); ids(un) != "p1" {
		t.Fatalf("Unfinished after reopen = %s", ids(un))
	}
	if _, err := j.Accept(rec("p2", 4)); !errors.Is(err, ErrReplay) {
		t.Fatalf("replay after reopen = %v", err)
	}
	log, err := j.AuditLog()
	if err != nil || len(log) != 1 || log[0].Action != "plan.accept" {
		t.Fatalf("audit log after reopen: %+v, %v", log, err)
	}
	if err := j.VerifyAudit(); err != nil {
		t.Fatal(err)
	}
	// The chain continues where it was.
	r, err := j.Audit(auditlog.Entry{Actor: "agent", Role: "agent", Action: "plan.refuse", Outcome: auditlog.OutcomeDenied})
	if err != nil || r.Seq != 2 || string(r.PrevHash) != string(log[0].Hash) {
		t.Fatalf("second audit record %+v, %v", r, err)
	}
	if err := j.VerifyAudit(); err != nil {
		t.Fatal(err)
	}
}

func TestAuditChain(t *testing.T) {
	seal := func(t *testing.T) *Journal {
		j, _ := newJournal(t)
		for i := range 4 {
			if _, err := j.Audit(auditlog.Entry{
				Actor: "spiffe://example.org/tenant/acme/agent/a1", Role: "agent", Action: "plan.accept",
				Target: fmt.Sprintf("p%d", i), Outcome: auditlog.OutcomeSuccess,
				Detail: json.RawMessage(fmt.Sprintf(`{ "sequence" : %d }`, i)),
			}); err != nil {
				t.Fatal(err)
			}
		}
		if err := j.VerifyAudit(); err != nil {
			t.Fatalf("intact chain: %v", err)
		}
		return j
	}
	raw := func(t *testing.T, j *Journal, f func(b *bolt.Bucket) error) {
		t.Helper()
		if err := j.db.Update(func(tx *bolt.Tx) error { return f(tx.Bucket(bucketAudit)) }); err != nil {
			t.Fatal(err)
		}
	}
	edit := func(seq uint64, f func(r *auditlog.Record)) func(b *bolt.Bucket) error {
		return func(b *bolt.Bucket) error {
			var r auditlog.Record
			if err := json.Unmarshal(b.Get(u64(seq)), &r); err != nil {
				return err
			}
			f(&r)
			v, err := json.Marshal(r)
			if err != nil {
				return err
			}
			return b.Put(u64(seq), v)
		}
	}
	for _, tc := range []struct {
		name   string
		tamper func(b *bolt.Bucket) error
		want   string
	}{
		{"altered", edit(2, func(r *auditlog.Record) { r.Target = "other" }), "audit record 2: content does not match"},
		{"altered and rehashed", edit(2, func(r *auditlog.Record) {
			r.Outcome = auditlog.OutcomeDenied
			r.Hash = auditlog.Hash(r.Seq, r.Entry, r.PrevHash)
		}), "audit record 3: previous-hash link broken"},
		{"deleted", func(b *bolt.Bucket) error { return b.Delete(u64(2)) }, "audit record 2: missing"},
		{"truncated", func(b *bolt.Bucket) error { return b.Delete(u64(4)) }, "audit record 4: missing"},
		{"garbage", func(b *bolt.Bucket) error { return b.Put(u64(3), []byte("{")) }, "audit record"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := seal(t)
			raw(t, j, tc.tamper)
			err := j.VerifyAudit()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("VerifyAudit = %v, want …%s…", err, tc.want)
			}
		})
	}
	t.Run("detail compacted", func(t *testing.T) {
		j := seal(t)
		log, err := j.AuditLog()
		if err != nil {
			t.Fatal(err)
		}
		if len(log) != 4 || string(log[1].Detail) != `{"sequence":1}` || log[0].Time.IsZero() {
			t.Fatalf("audit log %+v", log)
		}
	})
}

func TestSecondOpenTimesOut(t *testing.T) {
	_, path := newJournal(t)
	_, err := Open(path, Options{Timeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "another attache-agent seems to use this state directory") {
		t.Fatalf("second Open = %v, want ErrLocked naming another attache-agent", err)
	}
}

func TestReadOnly(t *testing.T) {
	j, path := newJournal(t)
	if _, err := j.Accept(rec("p1", 1, "a")); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Audit(auditlog.Entry{Action: "plan.accept", Outcome: auditlog.OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}

	// While the agent holds the journal, a reader is refused, and the
	// writer is unaffected.
	if _, err := Open(path, Options{ReadOnly: true, Timeout: 50 * time.Millisecond}); !errors.Is(err, ErrLocked) {
		t.Fatalf("read-only Open beside the writer = %v, want ErrLocked", err)
	}
	if _, err := j.Update("p1", func(*PlanRecord) error { return nil }); err != nil {
		t.Fatalf("writer after a refused reader: %v", err)
	}
	j.Close()

	info, _ := os.Stat(path)
	// Readers share the file.
	r1 := open(t, path, Options{ReadOnly: true})
	r2 := open(t, path, Options{ReadOnly: true})
	for _, r := range []*Journal{r1, r2} {
		if recs, err := r.List(0); err != nil || ids(recs) != "p1" || recs[0].Version != 2 {
			t.Fatalf("List = %+v, %v", recs, err)
		}
		if err := r.VerifyAudit(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r1.Accept(rec("p2", 2)); err == nil {
		t.Fatal("Accept on a read-only journal succeeded")
	}
	// A writer waits for the readers.
	if _, err := Open(path, Options{Timeout: 50 * time.Millisecond}); !errors.Is(err, ErrLocked) {
		t.Fatalf("writer beside readers = %v, want ErrLocked", err)
	}
	r1.Close()
	r2.Close()
	if after, _ := os.Stat(path); !after.ModTime().Equal(info.ModTime()) || after.Size() != info.Size() {
		t.Fatal("read-only use changed the file")
	}

	// A missing journal is not created; a file that is not a journal is
	// refused.
	missing := filepath.Join(t.TempDir(), "journal.db")
	if _, err := Open(missing, Options{ReadOnly: true}); err == nil {
		t.Fatal("read-only Open of a missing journal succeeded")
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("read-only Open created %s", missing)
	}
	other := filepath.Join(t.TempDir(), "other.db")
	db, err := bolt.Open(other, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := Open(other, Options{ReadOnly: true}); err == nil || !strings.Contains(err.Error(), "not a plan journal") {
		t.Fatalf("read-only Open of an empty bbolt file = %v", err)
	}
}

func TestFileMode(t *testing.T) {
	j, path := newJournal(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("journal mode %04o, want 0600", perm)
	}
	j.Close()
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err = Open(path, Options{})
	if !errors.Is(err, securefile.ErrTooOpen) || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("Open of a group-readable journal = %v, want ErrTooOpen", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	open(t, path, Options{})

	dir := filepath.Join(t.TempDir(), "dir.db")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("Open of a directory = %v", err)
	}
}

func TestPlanDecode(t *testing.T) {
	signer, err := sign.GenerateSigner()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	p := &planv1.Plan{
		PlanId:        "0193a0c0-0000-7000-8000-000000000001",
		Tenant:        "acme",
		AgentSpiffeId: "spiffe://example.org/tenant/acme/agent/a1",
		Sequence:      3,
		IssuedAt:      timestamppb.New(now),
		ExpiresAt:     timestamppb.New(now.Add(time.Hour)),
		Steps:         []*planv1.Step{{Id: "dir", Provider: "local", Action: "dir.ensure", Resource: "tenants/acme"}},
	}
	env, err := plan.Sign(context.Background(), p, signer)
	if err != nil {
		t.Fatal(err)
	}
	j, _ := newJournal(t)
	if _, err := j.Accept(PlanRecord{ID: p.PlanId, Sequence: 3, Envelope: env}); err != nil {
		t.Fatal(err)
	}
	got, err := j.Plan(p.PlanId)
	if err != nil {
		t.Fatal(err)
	}
	if got.GetPlanId() != p.PlanId || len(got.GetSteps()) != 1 || got.GetSteps()[0].GetAction() != "dir.ensure" {
		t.Fatalf("decoded plan %v", got)
	}
	for _, tc := range []struct {
		name string
		rec  PlanRecord
		want string
	}{
		{"no envelope", PlanRecord{ID: "x"}, "no envelope"},
		{"not json", PlanRecord{ID: "x", Envelope: []byte("{")}, "journaled envelope"},
		{"other type", PlanRecord{ID: "x", Envelope: []byte(`{"payloadType":"text/plain","payload":""}`)}, "not a plan"},
		{"other plan", PlanRecord{ID: "x", Envelope: env}, "holds plan"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.rec.Plan(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Plan() = %v, want …%s…", err, tc.want)
			}
		})
	}
}
