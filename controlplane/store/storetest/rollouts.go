package storetest

import (
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
)

func testTenantAttributes(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	got, err := s.GetTenant(ctx(t), "acme")
	if err != nil || got.Tier != "pool" || got.Windows != nil || got.Flags != nil || got.Pin != "" {
		t.Fatalf("new tenant: %+v, %v", got, err)
	}
	win := []store.Window{{Days: []string{"sat", "sun"}, Start: "02:00", Duration: "4h", TimeZone: "Europe/Paris"}}
	before := headSeq(t, s)
	e := entry("tenant.update", "acme")
	up, err := s.UpdateTenant(ctx(t), "acme", func(tn *store.Tenant) error {
		tn.Tier, tn.Cell, tn.Windows, tn.Pin = "silo", "a1", win, "1.0.0"
		tn.Flags = map[string]string{"checkout_v2": "true"}
		tn.Name = "renamed" // ignored
		return nil
	}, &e)
	if err != nil || up.Name != "acme" {
		t.Fatalf("UpdateTenant: %+v, %v", up, err)
	}
	got, err = s.GetTenant(ctx(t), "acme")
	if err != nil || got.Tier != "silo" || got.Cell != "a1" || got.Pin != "1.0.0" || !reflect.DeepEqual(got.Windows, win) ||
		got.Flags["checkout_v2"] != "true" {
		t.Fatalf("after update: %+v, %v", got, err)
	}
	if headSeq(t, s) != before+1 {
		t.Fatal("tenant update not audited")
	}
	// A failing fn stores nothing.
	_, err = s.UpdateTenant(ctx(t), "acme", func(tn *store.Tenant) error { tn.Tier = "byoc"; return errors.New("no") }, &e)
	if err == nil {
		t.Fatal("UpdateTenant ignored fn's error")
	}
	if got, _ := s.GetTenant(ctx(t), "acme"); got.Tier != "silo" || headSeq(t, s) != before+1 {
		t.Fatalf("failed update stored something: tier %s", got.Tier)
	}
	_, err = s.UpdateTenant(ctx(t), "nope", func(*store.Tenant) error { return nil }, nil)
	wantErr(t, "unknown tenant", err, store.ErrNotFound)
	// The new columns reach ListTenants too.
	ts, err := s.ListTenants(ctx(t))
	if err != nil || len(ts) != 1 || ts[0].Tier != "silo" {
		t.Fatalf("ListTenants: %+v, %v", ts, err)
	}
}

func testReleases(t *testing.T, s store.Store) {
	r := store.Release{Version: "1.0.0", Name: "app", Envelope: []byte(`{"payload":"r1"}`), Digest: "d1", PushedBy: "ci", CreatedAt: t0}
	if err := s.CreateRelease(ctx(t), r, entry("release.push", "")); err != nil {
		t.Fatal(err)
	}
	r2 := r
	r2.Envelope = []byte(`{"payload":"other"}`)
	wantErr(t, "same version again", s.CreateRelease(ctx(t), r2, entry("release.push", "")), store.ErrAlreadyExists)
	got, err := s.GetRelease(ctx(t), "1.0.0")
	if err != nil || string(got.Envelope) != `{"payload":"r1"}` || got.Name != "app" || !got.CreatedAt.Equal(micro(t0)) {
		t.Fatalf("GetRelease: %+v, %v (immutable: the first push must stay)", got, err)
	}
	if err := s.CreateRelease(ctx(t), store.Release{Version: "1.1.0", Name: "app", Envelope: []byte("x"), Digest: "d2", CreatedAt: t0.Add(time.Hour)}, entry("release.push", "")); err != nil {
		t.Fatal(err)
	}
	rs, err := s.ListReleases(ctx(t))
	if err != nil || len(rs) != 2 || rs[0].Version != "1.1.0" {
		t.Fatalf("ListReleases: %+v, %v", rs, err)
	}
	_, err = s.GetRelease(ctx(t), "9.9.9")
	wantErr(t, "unknown release", err, store.ErrNotFound)
}

func testFreeze(t *testing.T, s store.Store) {
	f, err := s.GetFreeze(ctx(t))
	if err != nil || f != nil {
		t.Fatalf("initial freeze: %+v, %v", f, err)
	}
	before := headSeq(t, s)
	if err := s.SetFreeze(ctx(t), &store.Freeze{By: "ops", Reason: "incident 42", At: t0}, entry("fleet.freeze", "")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetFreeze(ctx(t), &store.Freeze{By: "ops2", Reason: "still", At: t0}, entry("fleet.freeze", "")); err != nil {
		t.Fatal(err)
	}
	f, err = s.GetFreeze(ctx(t))
	if err != nil || f == nil || f.By != "ops2" || f.Reason != "still" {
		t.Fatalf("frozen: %+v, %v", f, err)
	}
	if err := s.SetFreeze(ctx(t), nil, entry("fleet.unfreeze", "")); err != nil {
		t.Fatal(err)
	}
	if f, _ := s.GetFreeze(ctx(t)); f != nil {
		t.Fatalf("still frozen: %+v", f)
	}
	if headSeq(t, s) != before+3 {
		t.Fatal("freeze changes not audited")
	}
}

// rolloutFixture makes tenants t1..tn with an agent each, a release and a
// rollout over them (one target per tenant, wave = index / 2).
func rolloutFixture(t *testing.T, s store.Store, id string, n int) []store.AgentKey {
	t.Helper()
	if _, err := s.GetRelease(ctx(t), "2.0.0"); errors.Is(err, store.ErrNotFound) {
		if err := s.CreateRelease(ctx(t), store.Release{Version: "2.0.0", Name: "app", Envelope: []byte("e"), Digest: "d"}, entry("release.push", "")); err != nil {
			t.Fatal(err)
		}
	}
	var keys []store.AgentKey
	var targets []store.RolloutTarget
	for i := range n {
		name := id + "-t" + string(rune('a'+i))
		mustTenant(t, s, name)
		a := mustAgent(t, s, name, "a1")
		keys = append(keys, store.AgentKey{Tenant: a.Tenant, ID: a.ID})
		targets = append(targets, store.RolloutTarget{Tenant: name, Wave: i / 2, Position: i % 2, PreviousRelease: "1.0.0"})
	}
	r := store.Rollout{ID: id, Release: "2.0.0", Spec: store.RolloutSpec{Waves: []store.Wave{{Name: "canary", Count: 2}, {Name: "all", Percent: 100}}, Bake: time.Minute, MaxFailed: 1, Concurrency: 2}, CreatedBy: "ops"}
	if err := s.CreateRollout(ctx(t), r, targets, entry("rollout.start", "")); err != nil {
		t.Fatal(err)
	}
	return keys
}

func testRollouts(t *testing.T, s store.Store) {
	keys := rolloutFixture(t, s, "r1", 4)
	r, err := s.GetRollout(ctx(t), "r1")
	if err != nil || r.State != store.RolloutProgressing || r.Spec.Bake != time.Minute || len(r.Spec.Waves) != 2 || r.FinishedAt != nil {
		t.Fatalf("GetRollout: %+v, %v", r, err)
	}
	ts, err := s.RolloutTargets(ctx(t), "r1")
	if err != nil || len(ts) != 4 || ts[0].State != store.TargetPending || ts[2].Wave != 1 {
		t.Fatalf("RolloutTargets: %+v, %v", ts, err)
	}
	err = s.CreateRollout(ctx(t), store.Rollout{ID: "r2", Release: "nope"}, nil, entry("rollout.start", ""))
	wantErr(t, "rollout of an unknown release", err, store.ErrNotFound)

	now := time.Now()
	// Leases: one owner at a time, until it expires.
	if ok, err := s.AcquireRolloutLease(ctx(t), "r1", "cp-a", now, time.Minute); err != nil || !ok {
		t.Fatalf("cp-a lease: %v %v", ok, err)
	}
	if ok, _ := s.AcquireRolloutLease(ctx(t), "r1", "cp-b", now, time.Minute); ok {
		t.Fatal("cp-b took a held lease")
	}
	if ok, _ := s.AcquireRolloutLease(ctx(t), "r1", "cp-a", now.Add(30*time.Second), time.Minute); !ok {
		t.Fatal("cp-a could not renew its lease")
	}
	// Not the holder: no update, no dispatch.
	_, err = s.UpdateRollout(ctx(t), "r1", "cp-b", func(r *store.Rollout, _ []store.RolloutTarget) ([]store.RolloutTarget, []auditlog.Entry, error) {
		r.State = store.RolloutFailed
		return nil, nil, nil
	})
	wantErr(t, "update without the lease", err, store.ErrLeaseLost)

	// Dispatch creates the plan and records it on the target, once.
	build := func(k store.AgentKey, id string) func(uint64) (store.Plan, error) {
		return buildPlan(k, id, time.Now().Add(time.Hour))
	}
	before := headSeq(t, s)
	p, err := s.DispatchRolloutPlan(ctx(t), "r1", keys[0].Tenant, "cp-a", false, keys[0], build(keys[0], "r1-p1"), entry("plan.submit", keys[0].Tenant))
	if err != nil || p.Sequence != 1 {
		t.Fatalf("dispatch: %+v, %v", p, err)
	}
	_, err = s.DispatchRolloutPlan(ctx(t), "r1", keys[0].Tenant, "cp-a", false, keys[0], build(keys[0], "r1-p1b"), entry("plan.submit", keys[0].Tenant))
	wantErr(t, "second dispatch of the same target", err, store.ErrConflict)
	_, err = s.DispatchRolloutPlan(ctx(t), "r1", keys[1].Tenant, "cp-b", false, keys[1], build(keys[1], "r1-p2"), entry("plan.submit", keys[1].Tenant))
	wantErr(t, "dispatch without the lease", err, store.ErrLeaseLost)
	if headSeq(t, s) != before+1 {
		t.Fatalf("refused dispatches were audited or stored: head %d → %d", before, headSeq(t, s))
	}
	if ps, _ := s.PendingPlans(ctx(t), keys[1], time.Now()); len(ps) != 0 {
		t.Fatalf("a refused dispatch stored a plan: %+v", ps)
	}
	ts, _ = s.RolloutTargets(ctx(t), "r1")
	if ts[0].State != store.TargetDispatched || ts[0].PlanID != "r1-p1" {
		t.Fatalf("target after dispatch: %+v", ts[0])
	}

	// Update: target succeeded and the tenant's release moves with it.
	r, err = s.UpdateRollout(ctx(t), "r1", "cp-a", func(r *store.Rollout, ts []store.RolloutTarget) ([]store.RolloutTarget, []auditlog.Entry, error) {
		r.Reason, r.Message = "WaveInProgress", "wave canary: 1/2 succeeded"
		r.Gate = []byte(`{"x":1}`)
		ts[0].State, ts[0].SetRelease = store.TargetSucceeded, "2.0.0"
		return ts[:1], []auditlog.Entry{entry("rollout.target", ts[0].Tenant)}, nil
	})
	if err != nil || r.Reason != "WaveInProgress" || string(r.Gate) != `{"x":1}` {
		t.Fatalf("UpdateRollout: %+v, %v", r, err)
	}
	if tn, _ := s.GetTenant(ctx(t), keys[0].Tenant); tn.Release != "2.0.0" {
		t.Fatalf("tenant release = %q, want 2.0.0", tn.Release)
	}
	// Rollback dispatch only for a target that is rolling back.
	_, err = s.DispatchRolloutPlan(ctx(t), "r1", keys[0].Tenant, "cp-a", true, keys[0], build(keys[0], "r1-rb"), entry("plan.submit", keys[0].Tenant))
	wantErr(t, "rollback of a target not rolling back", err, store.ErrConflict)
	if _, err := s.UpdateRollout(ctx(t), "r1", "cp-a", func(r *store.Rollout, ts []store.RolloutTarget) ([]store.RolloutTarget, []auditlog.Entry, error) {
		ts[0].State = store.TargetRollingBack
		return ts[:1], nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DispatchRolloutPlan(ctx(t), "r1", keys[0].Tenant, "cp-a", true, keys[0], build(keys[0], "r1-rb"), entry("plan.submit", keys[0].Tenant)); err != nil {
		t.Fatal(err)
	}
	ts, _ = s.RolloutTargets(ctx(t), "r1")
	if ts[0].RollbackPlanID != "r1-rb" || ts[0].PlanID != "r1-p1" {
		t.Fatalf("after rollback dispatch: %+v", ts[0])
	}

	// Controls: recorded while running; a finished rollout refuses them
	// and is never leased again.
	if r, err := s.SetRolloutControl(ctx(t), "r1", store.ControlPause, entry("rollout.pause", "")); err != nil || r.Control != store.ControlPause {
		t.Fatalf("pause: %+v, %v", r, err)
	}
	r, err = s.UpdateRollout(ctx(t), "r1", "cp-a", func(r *store.Rollout, _ []store.RolloutTarget) ([]store.RolloutTarget, []auditlog.Entry, error) {
		r.State, r.Reason = store.RolloutComplete, "AllWavesDone"
		return nil, nil, nil
	})
	if err != nil || r.FinishedAt == nil {
		t.Fatalf("complete: %+v, %v", r, err)
	}
	_, err = s.SetRolloutControl(ctx(t), "r1", store.ControlAbort, entry("rollout.abort", ""))
	wantErr(t, "abort a finished rollout", err, store.ErrFinished)
	if ok, _ := s.AcquireRolloutLease(ctx(t), "r1", "cp-b", now.Add(time.Hour), time.Minute); ok {
		t.Fatal("a finished rollout was leased")
	}
	if act, _ := s.ListRollouts(ctx(t), true); len(act) != 0 {
		t.Fatalf("finished rollout listed as active: %+v", act)
	}
	if all, _ := s.ListRollouts(ctx(t), false); len(all) != 1 {
		t.Fatalf("ListRollouts: %d", len(all))
	}
	mustVerify(t, s)
}

// testRolloutLeaseRace: replicas racing for one lease; exactly one wins,
// and after it expires another takes over.
func testRolloutLeaseRace(t *testing.T, s store.Store) {
	rolloutFixture(t, s, "race", 2)
	now := time.Now()
	var (
		mu      sync.Mutex
		winners []string
		wg      sync.WaitGroup
	)
	for _, owner := range []string{"cp-1", "cp-2", "cp-3", "cp-4", "cp-5", "cp-6"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := s.AcquireRolloutLease(ctx(t), "race", owner, now, 10*time.Second)
			if err != nil {
				t.Errorf("%s: %v", owner, err)
			}
			if ok {
				mu.Lock()
				winners = append(winners, owner)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(winners) != 1 {
		t.Fatalf("lease winners = %v, want exactly one", winners)
	}
	other := "cp-1"
	if winners[0] == other {
		other = "cp-2"
	}
	if ok, _ := s.AcquireRolloutLease(ctx(t), "race", other, now.Add(5*time.Second), 10*time.Second); ok {
		t.Fatal("lease taken before it expired")
	}
	if ok, _ := s.AcquireRolloutLease(ctx(t), "race", other, now.Add(11*time.Second), 10*time.Second); !ok {
		t.Fatal("expired lease not handed over")
	}
	if err := s.ReleaseRolloutLease(ctx(t), "race", other); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.AcquireRolloutLease(ctx(t), "race", winners[0], now.Add(12*time.Second), 10*time.Second); !ok {
		t.Fatal("released lease not free")
	}
}
