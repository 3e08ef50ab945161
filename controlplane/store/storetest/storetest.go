// Package storetest is the conformance suite for store.Store: every engine
// must pass Run. It uses only the Store interface, plus the DB method the
// store offers to tests, to tamper with the audit trail behind the store's
// back.
//
// Only tests import storetest.
package storetest

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
)

// Run runs the suite. open must return a store on a fresh, empty database
// each time it is called, and close it when t ends.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"Tenants", testTenants},
		{"JoinTokens", testJoinTokens},
		{"Enroll", testEnroll},
		{"EnrollDuplicateAgent", testEnrollDuplicateAgent},
		{"EnrollRace", testEnrollRace},
		{"Agents", testAgents},
		{"RevokeAgent", testRevokeAgent},
		{"UpdateAgentCert", testUpdateAgentCert},
		{"RecordHeartbeats", testRecordHeartbeats},
		{"RecordSession", testRecordSession},
		{"APITokens", testAPITokens},
		{"AppendAudit", testAppendAudit},
		{"ListAudit", testListAudit},
		{"AuditConcurrentAppends", testAuditConcurrent},
		{"Plans", testPlans},
		{"PlanSequenceRace", testPlanSequenceRace},
		{"PlanReports", testPlanReports},
		{"PlansCreatedSince", testPlansCreatedSince},
		{"UpdatePlanEnvelope", testUpdatePlanEnvelope},
		{"Usage", testUsage},
		{"UsageExact", testUsageExact},
		{"UsageValidation", testUsageValidation},
		{"UsageRace", testUsageRace},
		{"RecordHealth", testRecordHealth},
		{"RecordHealthValidation", testRecordHealthValidation},
		{"RecordHealthDrift", testRecordHealthDrift},
		{"Exports", testExports},
		{"TenantAttributes", testTenantAttributes},
		{"Releases", testReleases},
		{"Freeze", testFreeze},
		{"Rollouts", testRollouts},
		{"RolloutLeaseRace", testRolloutLeaseRace},
		{"AuditTamper", func(t *testing.T, _ store.Store) { testAuditTamper(t, open) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			if e := s.Engine(); e != store.EngineSQLite && e != store.EnginePostgres {
				t.Fatalf("Engine() = %q", e)
			}
			tt.fn(t, s)
		})
	}
}

// t0 has nanoseconds, which the store truncates to microseconds.
var t0 = time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.UTC)

func micro(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

func ctx(t *testing.T) context.Context { return t.Context() }

func entry(action, tenant string) auditlog.Entry {
	return auditlog.Entry{
		Time: t0, Actor: "ops@example.com", Role: "admin", Action: action, Tenant: tenant,
		Target: tenant, RequestID: "req-" + action, Outcome: auditlog.OutcomeSuccess, Source: "192.0.2.1:443",
		Detail: json.RawMessage(`{"k": "v"}`),
	}
}

func hash(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

func headSeq(t *testing.T, s store.Store) uint64 {
	t.Helper()
	seq, _, err := s.AuditHead(ctx(t))
	if err != nil {
		t.Fatalf("AuditHead: %v", err)
	}
	return seq
}

// allAudit reads the whole trail page by page.
func allAudit(t *testing.T, s store.Store) []auditlog.Record {
	t.Helper()
	var all []auditlog.Record
	var after uint64
	for {
		page, err := s.ListAudit(ctx(t), store.AuditFilter{AfterSeq: after, Limit: 7})
		if err != nil {
			t.Fatalf("ListAudit: %v", err)
		}
		if len(page) == 0 {
			return all
		}
		all = append(all, page...)
		after = page[len(page)-1].Seq
	}
}

func verify(t *testing.T, s store.Store) *auditlog.Problem {
	t.Helper()
	rs := allAudit(t, s)
	seq, h, err := s.AuditHead(ctx(t))
	if err != nil {
		t.Fatalf("AuditHead: %v", err)
	}
	return auditlog.Verify(rs, 0, auditlog.GenesisHash, seq, h)
}

func mustVerify(t *testing.T, s store.Store) {
	t.Helper()
	if p := verify(t, s); p != nil {
		t.Fatalf("audit chain broken: %v", p)
	}
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	switch {
	case want == nil && err != nil:
		t.Fatalf("%s: unexpected error %v", what, err)
	case want != nil && !errors.Is(err, want):
		t.Fatalf("%s: error %v, want %v", what, err, want)
	}
}

func mustTenant(t *testing.T, s store.Store, name string) {
	t.Helper()
	if err := s.CreateTenant(ctx(t), store.Tenant{Name: name, CreatedAt: t0}, entry("tenant.create", name)); err != nil {
		t.Fatalf("CreateTenant %s: %v", name, err)
	}
}

func mustToken(t *testing.T, s store.Store, tenant, id string, expires time.Time) {
	t.Helper()
	tok := store.JoinToken{ID: id, Tenant: tenant, SecretHash: hash(id), CreatedBy: "ops", CreatedAt: t0, ExpiresAt: expires}
	if err := s.CreateJoinToken(ctx(t), tok, entry("jointoken.create", tenant)); err != nil {
		t.Fatalf("CreateJoinToken %s: %v", id, err)
	}
}

func newAgent(tenant, id string) store.Agent {
	return store.Agent{
		Tenant: tenant, ID: id,
		SPIFFEID:          "spiffe://example.org/tenant/" + tenant + "/agent/" + id,
		Hostname:          id + ".internal",
		Version:           "1.2.3",
		CapabilityVersion: 7,
		Inventory:         []byte(`{"components":[]}`),
		CertSerial:        "01",
		CertExpiresAt:     t0.Add(time.Hour),
	}
}

// mustAgent creates tenant's agent id through a join token.
func mustAgent(t *testing.T, s store.Store, tenant, id string) store.Agent {
	t.Helper()
	mustToken(t, s, tenant, "tok-"+tenant+"-"+id, t0.Add(time.Hour))
	a, err := s.Enroll(ctx(t), "tok-"+tenant+"-"+id, hash("tok-"+tenant+"-"+id), t0, newAgent(tenant, id), entry("agent.enroll", tenant))
	if err != nil {
		t.Fatalf("Enroll %s/%s: %v", tenant, id, err)
	}
	return a
}

func testTenants(t *testing.T, s store.Store) {
	in := store.Tenant{Name: "acme", DisplayName: "ACME Corp", Labels: map[string]string{"tier": "silo", "region": "eu"}, CreatedAt: t0}
	if err := s.CreateTenant(ctx(t), in, entry("tenant.create", "acme")); err != nil {
		t.Fatal(err)
	}
	mustTenant(t, s, "beta")
	got, err := s.GetTenant(ctx(t), "acme")
	if err != nil {
		t.Fatal(err)
	}
	want := in
	want.CreatedAt = micro(t0)
	want.Tier = "pool" // the default tier
	if !reflect.DeepEqual(got, want) {
		t.Errorf("GetTenant = %+v, want %+v", got, want)
	}
	list, err := s.ListTenants(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "acme" || list[1].Name != "beta" || list[1].Labels != nil {
		t.Errorf("ListTenants = %+v", list)
	}
	_, err = s.GetTenant(ctx(t), "nope")
	wantErr(t, "GetTenant(nope)", err, store.ErrNotFound)

	// A failed mutation appends nothing.
	before := headSeq(t, s)
	err = s.CreateTenant(ctx(t), store.Tenant{Name: "acme"}, entry("tenant.create", "acme"))
	wantErr(t, "CreateTenant(duplicate)", err, store.ErrAlreadyExists)
	if after := headSeq(t, s); after != before {
		t.Errorf("failed CreateTenant appended audit records: head %d -> %d", before, after)
	}
	// Zero CreatedAt gets now.
	if err := s.CreateTenant(ctx(t), store.Tenant{Name: "gamma"}, entry("tenant.create", "gamma")); err != nil {
		t.Fatal(err)
	}
	if g, _ := s.GetTenant(ctx(t), "gamma"); time.Since(g.CreatedAt) > time.Minute {
		t.Errorf("CreatedAt = %v, want about now", g.CreatedAt)
	}
	rs := allAudit(t, s)
	if len(rs) != 3 || rs[0].Action != "tenant.create" || rs[0].Tenant != "acme" {
		t.Errorf("audit = %+v", rs)
	}
	mustVerify(t, s)
}

func testJoinTokens(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	tok := store.JoinToken{ID: "jt1", Tenant: "acme", SecretHash: hash("s"), CreatedBy: "ops", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	tests := []struct {
		name string
		tok  store.JoinToken
		want error
	}{
		{"ok", tok, nil},
		{"duplicate", tok, store.ErrAlreadyExists},
		{"unknown tenant", store.JoinToken{ID: "jt2", Tenant: "nope", SecretHash: hash("s"), ExpiresAt: t0}, store.ErrNotFound},
	}
	for _, tt := range tests {
		before := headSeq(t, s)
		err := s.CreateJoinToken(ctx(t), tt.tok, entry("jointoken.create", tt.tok.Tenant))
		wantErr(t, tt.name, err, tt.want)
		wantAppended := uint64(0)
		if tt.want == nil {
			wantAppended = 1
		}
		if got := headSeq(t, s) - before; got != wantAppended {
			t.Errorf("%s: %d audit records appended, want %d", tt.name, got, wantAppended)
		}
	}
	got, err := s.GetJoinToken(ctx(t), "jt1")
	if err != nil {
		t.Fatal(err)
	}
	want := tok
	want.CreatedAt, want.ExpiresAt = micro(tok.CreatedAt), micro(tok.ExpiresAt)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("GetJoinToken = %+v, want %+v", got, want)
	}
	_, err = s.GetJoinToken(ctx(t), "nope")
	wantErr(t, "GetJoinToken(nope)", err, store.ErrNotFound)
}

func testEnroll(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustTenant(t, s, "beta")
	exp := t0.Add(time.Hour)
	mustToken(t, s, "acme", "good", exp)
	mustToken(t, s, "acme", "expiring", exp)
	mustToken(t, s, "acme", "other-tenant", exp)
	mustToken(t, s, "acme", "wrong-secret", exp)

	tests := []struct {
		name    string
		token   string
		secret  []byte
		now     time.Time
		agent   store.Agent
		want    error
		consume bool // the token ends up used
	}{
		{"unknown token", "nope", hash("nope"), t0, newAgent("acme", "a0"), store.ErrNotFound, false},
		{"wrong secret", "wrong-secret", hash("guess"), t0, newAgent("acme", "a0"), store.ErrNotFound, false},
		{"tenant mismatch", "other-tenant", hash("other-tenant"), t0, newAgent("beta", "a0"), store.ErrNotFound, false},
		{"expired (at expiry)", "expiring", hash("expiring"), exp, newAgent("acme", "a0"), store.ErrTokenExpired, false},
		{"expired (after)", "expiring", hash("expiring"), exp.Add(time.Second), newAgent("acme", "a0"), store.ErrTokenExpired, false},
		{"ok", "good", hash("good"), t0, newAgent("acme", "a1"), nil, true},
		{"used", "good", hash("good"), t0, newAgent("acme", "a2"), store.ErrTokenUsed, true},
		{"ok just before expiry", "expiring", hash("expiring"), exp.Add(-time.Microsecond), newAgent("acme", "a3"), nil, true},
	}
	for _, tt := range tests {
		before := headSeq(t, s)
		got, err := s.Enroll(ctx(t), tt.token, tt.secret, tt.now, tt.agent, entry("agent.enroll", tt.agent.Tenant))
		wantErr(t, tt.name, err, tt.want)
		appended := headSeq(t, s) - before
		if tt.want != nil {
			if appended != 0 {
				t.Errorf("%s: failed Enroll appended %d audit records", tt.name, appended)
			}
			if _, err := s.GetAgent(ctx(t), store.AgentKey{Tenant: tt.agent.Tenant, ID: tt.agent.ID}); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("%s: failed Enroll left an agent (err %v)", tt.name, err)
			}
		} else {
			if appended != 1 {
				t.Errorf("%s: Enroll appended %d audit records, want 1", tt.name, appended)
			}
			want := tt.agent
			want.EnrolledAt, want.CertExpiresAt = micro(tt.now), micro(want.CertExpiresAt)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s: Enroll = %+v\nwant %+v", tt.name, got, want)
			}
			if stored, err := s.GetAgent(ctx(t), store.AgentKey{Tenant: want.Tenant, ID: want.ID}); err != nil || !reflect.DeepEqual(stored, want) {
				t.Errorf("%s: GetAgent = %+v, %v\nwant %+v", tt.name, stored, err, want)
			}
		}
		if tok, err := s.GetJoinToken(ctx(t), tt.token); err == nil && (tok.UsedAt != nil) != tt.consume {
			t.Errorf("%s: token used = %v, want %v", tt.name, tok.UsedAt != nil, tt.consume)
		}
	}
	tok, err := s.GetJoinToken(ctx(t), "good")
	if err != nil {
		t.Fatal(err)
	}
	if tok.UsedAt == nil || !tok.UsedAt.Equal(micro(t0)) || tok.UsedBy != "a1" {
		t.Errorf("consumed token: UsedAt %v UsedBy %q", tok.UsedAt, tok.UsedBy)
	}
	mustVerify(t, s)
}

func testEnrollDuplicateAgent(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustAgent(t, s, "acme", "a1")
	mustToken(t, s, "acme", "again", t0.Add(time.Hour))
	before := headSeq(t, s)
	_, err := s.Enroll(ctx(t), "again", hash("again"), t0, newAgent("acme", "a1"), entry("agent.enroll", "acme"))
	wantErr(t, "Enroll(existing agent)", err, store.ErrAlreadyExists)
	dupSPIFFE := newAgent("acme", "a2")
	dupSPIFFE.SPIFFEID = newAgent("acme", "a1").SPIFFEID
	_, err = s.Enroll(ctx(t), "again", hash("again"), t0, dupSPIFFE, entry("agent.enroll", "acme"))
	wantErr(t, "Enroll(existing SPIFFE ID)", err, store.ErrAlreadyExists)
	if headSeq(t, s) != before {
		t.Error("failed Enroll appended an audit record")
	}
	// Nothing was consumed: the token still works.
	if _, err := s.Enroll(ctx(t), "again", hash("again"), t0, newAgent("acme", "a2"), entry("agent.enroll", "acme")); err != nil {
		t.Fatalf("Enroll after failed attempts: %v", err)
	}
}

func testEnrollRace(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustToken(t, s, "acme", "once", t0.Add(time.Hour))
	before := headSeq(t, s)
	const n = 8
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		errs  = make([]error, n)
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[i] = s.Enroll(context.Background(), "once", hash("once"), t0, newAgent("acme", fmt.Sprintf("racer-%d", i)), entry("agent.enroll", "acme"))
		}()
	}
	close(start)
	wg.Wait()
	wins := 0
	for i, err := range errs {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, store.ErrTokenUsed):
			t.Errorf("racer %d: %v, want ErrTokenUsed", i, err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d enrollments succeeded with one token, want 1", wins)
	}
	agents, err := s.ListAgents(ctx(t), store.AgentFilter{Tenant: "acme"})
	if err != nil || len(agents) != 1 {
		t.Fatalf("ListAgents = %d agents, %v; want 1", len(agents), err)
	}
	if got := headSeq(t, s) - before; got != 1 {
		t.Errorf("%d audit records appended, want 1", got)
	}
	mustVerify(t, s)
}

func testAgents(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustTenant(t, s, "beta")
	a1 := mustAgent(t, s, "acme", "a1")
	mustAgent(t, s, "acme", "a2")
	mustAgent(t, s, "beta", "a1") // same ID, other tenant
	got, err := s.GetAgent(ctx(t), store.AgentKey{Tenant: "acme", ID: "a1"})
	if err != nil || !reflect.DeepEqual(got, a1) {
		t.Errorf("GetAgent = %+v, %v; want %+v", got, err, a1)
	}
	tests := []struct {
		filter store.AgentFilter
		want   []string
	}{
		{store.AgentFilter{}, []string{"acme/a1", "acme/a2", "beta/a1"}},
		{store.AgentFilter{Tenant: "acme"}, []string{"acme/a1", "acme/a2"}},
		{store.AgentFilter{Tenant: "beta"}, []string{"beta/a1"}},
		{store.AgentFilter{Tenant: "nope"}, nil},
	}
	for _, tt := range tests {
		as, err := s.ListAgents(ctx(t), tt.filter)
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, a := range as {
			keys = append(keys, a.Tenant+"/"+a.ID)
		}
		if !reflect.DeepEqual(keys, tt.want) {
			t.Errorf("ListAgents(%+v) = %v, want %v", tt.filter, keys, tt.want)
		}
	}
	_, err = s.GetAgent(ctx(t), store.AgentKey{Tenant: "beta", ID: "a2"})
	wantErr(t, "GetAgent(unknown)", err, store.ErrNotFound)
}

func testRevokeAgent(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustAgent(t, s, "acme", "a1")
	mustAgent(t, s, "acme", "a2")
	mustAgent(t, s, "acme", "a3")
	k1 := store.AgentKey{Tenant: "acme", ID: "a1"}
	r1 := t0.Add(time.Minute)

	before := headSeq(t, s)
	a, err := s.RevokeAgent(ctx(t), k1, "ops", r1, entry("agent.revoke", "acme"))
	if err != nil {
		t.Fatal(err)
	}
	if a.RevokedAt == nil || !a.RevokedAt.Equal(micro(r1)) || a.RevokedBy != "ops" {
		t.Errorf("RevokeAgent: RevokedAt %v RevokedBy %q", a.RevokedAt, a.RevokedBy)
	}
	// Idempotent: the first revocation stays.
	a, err = s.RevokeAgent(ctx(t), k1, "someone-else", r1.Add(time.Hour), entry("agent.revoke", "acme"))
	if err != nil {
		t.Fatal(err)
	}
	if !a.RevokedAt.Equal(micro(r1)) || a.RevokedBy != "ops" {
		t.Errorf("second RevokeAgent changed it: RevokedAt %v RevokedBy %q", a.RevokedAt, a.RevokedBy)
	}
	if got := headSeq(t, s) - before; got != 2 {
		t.Errorf("%d audit records, want 2", got)
	}
	_, err = s.RevokeAgent(ctx(t), store.AgentKey{Tenant: "acme", ID: "nope"}, "ops", r1, entry("agent.revoke", "acme"))
	wantErr(t, "RevokeAgent(unknown)", err, store.ErrNotFound)
	if got := headSeq(t, s) - before; got != 2 {
		t.Errorf("failed RevokeAgent appended an audit record")
	}

	r2 := r1.Add(10 * time.Second)
	if _, err := s.RevokeAgent(ctx(t), store.AgentKey{Tenant: "acme", ID: "a2"}, "ops", r2, entry("agent.revoke", "acme")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		since time.Time
		want  []string
	}{
		{time.Time{}, []string{"a1", "a2"}},
		{r1.Add(-time.Second), []string{"a1", "a2"}},
		{micro(r1), []string{"a1", "a2"}}, // inclusive
		{r1.Add(time.Microsecond), []string{"a2"}},
		{micro(r2), []string{"a2"}},
		{r2.Add(time.Second), nil},
	}
	for _, tt := range tests {
		ks, err := s.RevokedSince(ctx(t), tt.since)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, k := range ks {
			ids = append(ids, k.ID)
		}
		if !reflect.DeepEqual(ids, tt.want) {
			t.Errorf("RevokedSince(%v) = %v, want %v", tt.since, ids, tt.want)
		}
	}
	mustVerify(t, s)
}

func testUpdateAgentCert(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustAgent(t, s, "acme", "a1")
	mustAgent(t, s, "acme", "gone")
	k := store.AgentKey{Tenant: "acme", ID: "a1"}
	exp := t0.Add(48 * time.Hour)
	if err := s.UpdateAgentCert(ctx(t), k, "0abc", exp); err != nil {
		t.Fatal(err)
	}
	a, _ := s.GetAgent(ctx(t), k)
	if a.CertSerial != "0abc" || !a.CertExpiresAt.Equal(micro(exp)) {
		t.Errorf("after UpdateAgentCert: serial %q expires %v", a.CertSerial, a.CertExpiresAt)
	}
	wantErr(t, "UpdateAgentCert(unknown)", s.UpdateAgentCert(ctx(t), store.AgentKey{Tenant: "acme", ID: "nope"}, "1", exp), store.ErrNotFound)
	gone := store.AgentKey{Tenant: "acme", ID: "gone"}
	if _, err := s.RevokeAgent(ctx(t), gone, "ops", t0, entry("agent.revoke", "acme")); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "UpdateAgentCert(revoked)", s.UpdateAgentCert(ctx(t), gone, "1", exp), store.ErrRevoked)
}

func testRecordHeartbeats(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustAgent(t, s, "acme", "a1")
	mustAgent(t, s, "acme", "a2")
	k1, k2 := store.AgentKey{Tenant: "acme", ID: "a1"}, store.AgentKey{Tenant: "acme", ID: "a2"}
	h1, h2 := []byte(`[{"component":"db","status":"ok"}]`), []byte(`[{"component":"db","status":"degraded"}]`)
	at := t0.Add(time.Minute)

	wantErr(t, "RecordHeartbeats(nil)", s.RecordHeartbeats(ctx(t), nil), nil)
	steps := []struct {
		name   string
		batch  []store.Heartbeat
		seen   map[store.AgentKey]time.Time
		health map[store.AgentKey][]byte
	}{
		{
			name: "first",
			batch: []store.Heartbeat{
				{AgentKey: k1, At: at, Health: h1},
				{AgentKey: k2, At: at},
				{AgentKey: store.AgentKey{Tenant: "acme", ID: "unknown"}, At: at}, // ignored
			},
			seen:   map[store.AgentKey]time.Time{k1: at, k2: at},
			health: map[store.AgentKey][]byte{k1: h1, k2: nil},
		},
		{
			name:   "nil health keeps the previous value",
			batch:  []store.Heartbeat{{AgentKey: k1, At: at.Add(time.Second)}},
			seen:   map[store.AgentKey]time.Time{k1: at.Add(time.Second), k2: at},
			health: map[store.AgentKey][]byte{k1: h1, k2: nil},
		},
		{
			name: "same agent twice in a batch: the last wins",
			batch: []store.Heartbeat{
				{AgentKey: k2, At: at.Add(2 * time.Second), Health: h1},
				{AgentKey: k2, At: at.Add(3 * time.Second), Health: h2},
				{AgentKey: k1, At: at.Add(2 * time.Second), Health: h2},
				{AgentKey: k1, At: at.Add(3 * time.Second)},
			},
			seen:   map[store.AgentKey]time.Time{k1: at.Add(3 * time.Second), k2: at.Add(3 * time.Second)},
			health: map[store.AgentKey][]byte{k1: h2, k2: h2},
		},
	}
	for _, st := range steps {
		if err := s.RecordHeartbeats(ctx(t), st.batch); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		for k, want := range st.seen {
			a, err := s.GetAgent(ctx(t), k)
			if err != nil {
				t.Fatal(err)
			}
			if a.LastSeenAt == nil || !a.LastSeenAt.Equal(micro(want)) {
				t.Errorf("%s: %v LastSeenAt = %v, want %v", st.name, k, a.LastSeenAt, micro(want))
			}
			if string(a.Health) != string(st.health[k]) {
				t.Errorf("%s: %v Health = %s, want %s", st.name, k, a.Health, st.health[k])
			}
		}
	}

	// A big batch in one call.
	var batch []store.Heartbeat
	for i := range 3000 {
		k := k1
		if i%2 == 1 {
			k = k2
		}
		batch = append(batch, store.Heartbeat{AgentKey: k, At: at.Add(time.Duration(i) * time.Millisecond)})
	}
	if err := s.RecordHeartbeats(ctx(t), batch); err != nil {
		t.Fatal(err)
	}
	a, _ := s.GetAgent(ctx(t), k2)
	if !a.LastSeenAt.Equal(micro(at.Add(2999 * time.Millisecond))) {
		t.Errorf("after big batch LastSeenAt = %v", a.LastSeenAt)
	}
}

func testRecordSession(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustAgent(t, s, "acme", "a1")
	mustAgent(t, s, "acme", "gone")
	k := store.AgentKey{Tenant: "acme", ID: "a1"}
	inv := []byte(`{"components":[{"name":"api","version":"2.0.0"}]}`)
	at := t0.Add(time.Hour)

	type want struct {
		connected bool
		session   string
		seen      time.Time
	}
	steps := []struct {
		name string
		u    store.SessionUpdate
		err  error
		want want
	}{
		{"open s1", store.SessionUpdate{AgentKey: k, SessionID: "s1", Connected: true, At: at, Version: "2.0.0", CapabilityVersion: 9, Inventory: inv}, nil, want{true, "s1", at}},
		{"open s2 replaces s1", store.SessionUpdate{AgentKey: k, SessionID: "s2", Connected: true, At: at.Add(time.Second), Version: "2.0.0", CapabilityVersion: 9, Inventory: inv}, nil, want{true, "s2", at.Add(time.Second)}},
		{"stale close of s1 is ignored", store.SessionUpdate{AgentKey: k, SessionID: "s1", Connected: false, At: at.Add(2 * time.Second)}, nil, want{true, "s2", at.Add(time.Second)}},
		{"close s2", store.SessionUpdate{AgentKey: k, SessionID: "s2", Connected: false, At: at.Add(3 * time.Second)}, nil, want{false, "s2", at.Add(3 * time.Second)}},
		{"unknown agent changes nothing", store.SessionUpdate{AgentKey: store.AgentKey{Tenant: "acme", ID: "nope"}, SessionID: "x", Connected: true, At: at}, nil, want{false, "s2", at.Add(3 * time.Second)}},
	}
	for _, st := range steps {
		wantErr(t, st.name, s.RecordSessions(ctx(t), []store.SessionUpdate{st.u}), st.err)
		a, err := s.GetAgent(ctx(t), k)
		if err != nil {
			t.Fatal(err)
		}
		if a.Connected != st.want.connected || a.SessionID != st.want.session || a.LastSeenAt == nil || !a.LastSeenAt.Equal(micro(st.want.seen)) {
			t.Errorf("%s: connected %v session %q seen %v; want %+v", st.name, a.Connected, a.SessionID, a.LastSeenAt, st.want)
		}
		if a.Version != "2.0.0" || a.CapabilityVersion != 9 || string(a.Inventory) != string(inv) {
			t.Errorf("%s: version %q capability %d inventory %s", st.name, a.Version, a.CapabilityVersion, a.Inventory)
		}
	}
	gone := store.AgentKey{Tenant: "acme", ID: "gone"}
	if _, err := s.RevokeAgent(ctx(t), gone, "ops", t0, entry("agent.revoke", "acme")); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordSessions(ctx(t), []store.SessionUpdate{{AgentKey: gone, SessionID: "x", Connected: true, At: at}}); err != nil {
		t.Fatal(err)
	}
	if a, _ := s.GetAgent(ctx(t), gone); a.Connected || a.SessionID == "x" {
		t.Errorf("a revoked agent's session was recorded open: %+v", a)
	}

	// One batch, applied in order: open, close, reopen of the same agent.
	batch := []store.SessionUpdate{
		{AgentKey: k, SessionID: "s3", Connected: true, At: at.Add(4 * time.Second), Version: "2.0.0", CapabilityVersion: 9},
		{AgentKey: k, SessionID: "s3", Connected: false, At: at.Add(5 * time.Second)},
		{AgentKey: k, SessionID: "s4", Connected: true, At: at.Add(6 * time.Second), Version: "2.0.0", CapabilityVersion: 9},
	}
	if err := s.RecordSessions(ctx(t), batch); err != nil {
		t.Fatal(err)
	}
	if a, _ := s.GetAgent(ctx(t), k); !a.Connected || a.SessionID != "s4" || !a.LastSeenAt.Equal(micro(at.Add(6*time.Second))) {
		t.Errorf("after an ordered batch: connected %v session %q seen %v, want s4 open", a.Connected, a.SessionID, a.LastSeenAt)
	}
}

func testAPITokens(t *testing.T, s store.Store) {
	revoked := t0.Add(time.Minute)
	toks := []store.APIToken{
		{ID: "t1", Name: "bootstrap", Role: store.RoleAdmin, SecretHash: hash("t1"), CreatedBy: "system", CreatedAt: t0},
		{ID: "t2", Name: "ci", Role: store.RoleOperator, SecretHash: hash("t2"), CreatedBy: "t1", CreatedAt: t0.Add(time.Second)},
		{ID: "t3", Name: "old", Role: store.RoleAuditor, SecretHash: hash("t3"), CreatedBy: "t1", CreatedAt: t0.Add(2 * time.Second), RevokedAt: &revoked},
	}
	before := headSeq(t, s)
	// Without an audit entry (bootstrap) and with one.
	if err := s.CreateAPIToken(ctx(t), toks[0], nil); err != nil {
		t.Fatal(err)
	}
	if got := headSeq(t, s); got != before {
		t.Errorf("CreateAPIToken without entry appended a record")
	}
	for _, tok := range toks[1:] {
		e := entry("apitoken.create", "")
		if err := s.CreateAPIToken(ctx(t), tok, &e); err != nil {
			t.Fatal(err)
		}
	}
	if got := headSeq(t, s) - before; got != 2 {
		t.Errorf("%d audit records, want 2", got)
	}
	e := entry("apitoken.create", "")
	dupID := toks[1]
	dupID.SecretHash = hash("other")
	wantErr(t, "CreateAPIToken(duplicate ID)", s.CreateAPIToken(ctx(t), dupID, &e), store.ErrAlreadyExists)
	dupHash := toks[1]
	dupHash.ID = "t9"
	wantErr(t, "CreateAPIToken(duplicate secret)", s.CreateAPIToken(ctx(t), dupHash, &e), store.ErrAlreadyExists)
	if got := headSeq(t, s) - before; got != 2 {
		t.Errorf("failed CreateAPIToken appended audit records")
	}
	bad := store.APIToken{ID: "t8", Role: "root", SecretHash: hash("t8")}
	if err := s.CreateAPIToken(ctx(t), bad, &e); err == nil {
		t.Errorf("CreateAPIToken with an unknown role succeeded")
	}

	got, err := s.APITokenByHash(ctx(t), hash("t2"))
	want := toks[1]
	want.CreatedAt = micro(want.CreatedAt)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("APITokenByHash = %+v, %v; want %+v", got, err, want)
	}
	_, err = s.APITokenByHash(ctx(t), hash("t3"))
	wantErr(t, "APITokenByHash(revoked)", err, store.ErrNotFound)
	_, err = s.APITokenByHash(ctx(t), hash("nope"))
	wantErr(t, "APITokenByHash(unknown)", err, store.ErrNotFound)

	list, err := s.ListAPITokens(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 || list[0].ID != "t1" || list[2].RevokedAt == nil || !list[2].RevokedAt.Equal(micro(revoked)) {
		t.Errorf("ListAPITokens = %+v", list)
	}
}

func testAppendAudit(t *testing.T, s store.Store) {
	seq, h, err := s.AuditHead(ctx(t))
	if err != nil || seq != 0 || string(h) != string(auditlog.GenesisHash) {
		t.Fatalf("empty AuditHead = %d, %x, %v; want 0 and the genesis hash", seq, h, err)
	}
	e := entry("api.denied", "acme")
	e.Outcome = auditlog.OutcomeDenied
	r1, err := s.AppendAudit(ctx(t), e)
	if err != nil {
		t.Fatal(err)
	}
	if r1.Seq != 1 || string(r1.PrevHash) != string(auditlog.GenesisHash) || !r1.Time.Equal(micro(t0)) {
		t.Errorf("first record: seq %d prev %x time %v", r1.Seq, r1.PrevHash, r1.Time)
	}
	noTime := entry("api.denied", "")
	noTime.Time, noTime.Detail = time.Time{}, nil
	r2, err := s.AppendAudit(ctx(t), noTime)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Seq != 2 || string(r2.PrevHash) != string(r1.Hash) || time.Since(r2.Time) > time.Minute || r2.Time != micro(r2.Time) {
		t.Errorf("second record: seq %d time %v", r2.Seq, r2.Time)
	}
	seq, h, _ = s.AuditHead(ctx(t))
	if seq != 2 || string(h) != string(r2.Hash) {
		t.Errorf("AuditHead = %d %x, want 2 %x", seq, h, r2.Hash)
	}
	// What is read back is what was sealed, field for field.
	rs := allAudit(t, s)
	if len(rs) != 2 {
		t.Fatalf("ListAudit: %d records", len(rs))
	}
	for i, want := range []auditlog.Record{r1, r2} {
		if !reflect.DeepEqual(rs[i], want) {
			t.Errorf("record %d read back as %+v\nappended as %+v", i+1, rs[i], want)
		}
	}
	mustVerify(t, s)
}

func testListAudit(t *testing.T, s store.Store) {
	for i := range 25 {
		tenant := "acme"
		if i%5 == 0 {
			tenant = "beta"
		}
		e := entry(fmt.Sprintf("action.%d", i), tenant)
		e.Time = t0.Add(time.Duration(i) * time.Nanosecond * 1001)
		if _, err := s.AppendAudit(ctx(t), e); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		f     store.AuditFilter
		first uint64
		n     int
	}{
		{store.AuditFilter{}, 1, 25},
		{store.AuditFilter{Limit: 10}, 1, 10},
		{store.AuditFilter{AfterSeq: 20}, 21, 5},
		{store.AuditFilter{AfterSeq: 25}, 0, 0},
		{store.AuditFilter{Tenant: "beta"}, 1, 5},
		{store.AuditFilter{Tenant: "beta", AfterSeq: 1, Limit: 2}, 6, 2},
		{store.AuditFilter{Tenant: "nope"}, 0, 0},
	}
	for _, tt := range tests {
		rs, err := s.ListAudit(ctx(t), tt.f)
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != tt.n || (tt.n > 0 && rs[0].Seq != tt.first) {
			t.Errorf("ListAudit(%+v): %d records starting at %v, want %d from %d", tt.f, len(rs), rs, tt.n, tt.first)
			continue
		}
		for i := 1; i < len(rs); i++ {
			if rs[i].Seq <= rs[i-1].Seq {
				t.Errorf("ListAudit(%+v) out of order", tt.f)
			}
		}
	}
	mustVerify(t, s)
}

func testAuditConcurrent(t *testing.T, s store.Store) {
	const workers, each = 4, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if _, err := s.AppendAudit(context.Background(), entry(fmt.Sprintf("w%d.%d", w, i), "acme")); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if seq := headSeq(t, s); seq != workers*each {
		t.Errorf("head %d, want %d", seq, workers*each)
	}
	mustVerify(t, s)
}

// testAuditTamper alters the trail with SQL behind the store's back and
// checks that Verify names the record at fault.
func testAuditTamper(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name    string
		sql     []string
		wantSeq uint64
	}{
		{"alter", []string{`UPDATE audit_log SET actor = 'mallory' WHERE seq = 4`}, 4},
		{"alter time", []string{`UPDATE audit_log SET time = (SELECT time FROM audit_log WHERE seq = 1) WHERE seq = 5`}, 5},
		{"delete", []string{`DELETE FROM audit_log WHERE seq = 3`}, 3},
		{"swap", []string{
			`UPDATE audit_log SET seq = 100 WHERE seq = 5`,
			`UPDATE audit_log SET seq = 5 WHERE seq = 6`,
			`UPDATE audit_log SET seq = 6 WHERE seq = 100`,
		}, 5},
		{"truncate", []string{`DELETE FROM audit_log WHERE seq >= 7`}, 7},
		{"alter the last record", []string{`UPDATE audit_log SET actor = 'mallory' WHERE seq = 8`}, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			raw, ok := s.(interface{ DB() *sql.DB })
			if !ok {
				t.Fatalf("%T has no DB() *sql.DB method for tests", s)
			}
			for i := range 8 {
				e := entry(fmt.Sprintf("a.%d", i+1), "acme")
				e.Time = t0.Add(time.Duration(i) * time.Second)
				if _, err := s.AppendAudit(ctx(t), e); err != nil {
					t.Fatal(err)
				}
			}
			mustVerify(t, s)
			for _, q := range tt.sql {
				if _, err := raw.DB().ExecContext(ctx(t), q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			p := verify(t, s)
			if p == nil {
				t.Fatal("Verify found nothing wrong")
			}
			if p.Seq != tt.wantSeq {
				t.Errorf("Verify blames record %d (%s), want %d", p.Seq, p.Reason, tt.wantSeq)
			}
		})
	}
}
