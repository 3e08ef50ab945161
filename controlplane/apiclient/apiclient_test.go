package apiclient_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/controlplane/httpapi/httpapitest"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/jointoken"
)

func TestClientAgainstServer(t *testing.T) {
	srv := httpapitest.New(t)
	ctx := context.Background()
	admin := apiclient.New(srv.URL+"/", srv.AdminToken, nil)

	if err := admin.Health(ctx); err != nil {
		t.Fatalf("Health: %v", err)
	}
	ten, err := admin.CreateTenant(ctx, apiclient.CreateTenantRequest{Name: "acme", DisplayName: "Acme", Labels: map[string]string{"tier": "silo"}})
	if err != nil || ten.Name != "acme" || ten.Labels["tier"] != "silo" {
		t.Fatalf("CreateTenant = %+v, %v", ten, err)
	}
	if got, err := admin.GetTenant(ctx, "acme"); err != nil || got.DisplayName != "Acme" {
		t.Fatalf("GetTenant = %+v, %v", got, err)
	}
	if ts, err := admin.ListTenants(ctx); err != nil || len(ts) != 1 {
		t.Fatalf("ListTenants = %+v, %v", ts, err)
	}

	jt, err := admin.CreateJoinToken(ctx, "acme", 30*time.Minute)
	if err != nil {
		t.Fatalf("CreateJoinToken: %v", err)
	}
	if tok, err := jointoken.Parse(jt.Token); err != nil || tok.ID != jt.ID || tok.Addr != httpapitest.AgentAddr {
		t.Fatalf("join token %+v: %v", tok, err)
	}
	if d := time.Until(jt.ExpiresAt); d < 29*time.Minute || d > 31*time.Minute {
		t.Fatalf("expires in %v, want 30m", d)
	}

	if as, err := admin.ListAgents(ctx, "acme"); err != nil || len(as) != 0 {
		t.Fatalf("ListAgents = %+v, %v", as, err)
	}
	if _, err := admin.GetAgent(ctx, "acme", "a/b"); !apiclient.IsStatus(err, http.StatusNotFound) {
		t.Fatalf("GetAgent(escaped id) = %v, want 404", err)
	}
	if _, err := admin.RevokeAgent(ctx, "acme", "nope"); !apiclient.IsStatus(err, http.StatusNotFound) {
		t.Fatalf("RevokeAgent = %v, want 404", err)
	}

	nt, err := admin.CreateAPIToken(ctx, "reviewer", "auditor")
	if err != nil || nt.Role != "auditor" || nt.Token == "" {
		t.Fatalf("CreateAPIToken = %+v, %v", nt, err)
	}
	if ts, err := admin.ListAPITokens(ctx); err != nil || len(ts) != 2 {
		t.Fatalf("ListAPITokens = %+v, %v", ts, err)
	}

	reviewer := apiclient.New(srv.URL, nt.Token, nil)
	page, err := reviewer.ListAudit(ctx, apiclient.AuditQuery{Limit: 1000})
	if err != nil {
		t.Fatalf("ListAudit: %v", err)
	}
	if p := auditlog.Verify(page.Records, 0, auditlog.GenesisHash, page.Head.Seq, page.Head.Hash); p != nil || page.Head.Seq == 0 {
		t.Fatalf("verify: %v (head %d)", p, page.Head.Seq)
	}
	if page, err := reviewer.ListAudit(ctx, apiclient.AuditQuery{After: 1, Limit: 1, Tenant: "acme"}); err != nil || len(page.Records) != 1 || page.Records[0].Tenant != "acme" {
		t.Fatalf("ListAudit(filtered) = %+v, %v", page, err)
	}

	// API errors come back typed, with the server's message and request ID.
	_, err = reviewer.CreateTenant(ctx, apiclient.CreateTenantRequest{Name: "globex"})
	var ae *apiclient.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusForbidden || ae.Message != "role auditor may not tenant.create" || ae.RequestID == "" {
		t.Fatalf("err = %#v", err)
	}
	if !strings.Contains(err.Error(), ae.RequestID) {
		t.Fatalf("Error() = %q lacks the request ID", err.Error())
	}
	if _, err := apiclient.New(srv.URL, "", nil).ListTenants(ctx); !apiclient.IsStatus(err, http.StatusUnauthorized) {
		t.Fatalf("no token: %v", err)
	}
}

func TestBadBaseURL(t *testing.T) {
	for _, u := range []string{"", "cp.example:7443", "ftp://x", "http://"} {
		if err := apiclient.New(u, "t", nil).Health(context.Background()); err == nil || !strings.Contains(err.Error(), "server URL") {
			t.Errorf("New(%q).Health() = %v, want a server URL error", u, err)
		}
	}
}

func TestPlans(t *testing.T) {
	srv := httpapitest.New(t)
	ctx := context.Background()
	admin := apiclient.New(srv.URL, srv.AdminToken, nil)
	if _, err := admin.CreateTenant(ctx, apiclient.CreateTenantRequest{Name: "acme"}); err != nil {
		t.Fatal(err)
	}
	yaml := "version: 1\nsteps: [{id: a, provider: local, action: noop, resource: x}]\n"

	// No agent yet: a typed 409 saying what to do.
	_, err := admin.SubmitPlan(ctx, apiclient.SubmitPlanRequest{Tenant: "acme", YAML: yaml})
	var ae *apiclient.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || !strings.Contains(ae.Message, "attache token create --tenant acme") {
		t.Fatalf("no agent: %v", err)
	}
	enroll(t, srv, "acme", "a1")

	p, err := admin.SubmitPlan(ctx, apiclient.SubmitPlanRequest{Tenant: "acme", YAML: yaml, DryRun: true})
	if err != nil || p.Agent != "a1" || p.Sequence != 1 || !p.DryRun || p.State != "pending" || len(p.Steps) != 1 {
		t.Fatalf("SubmitPlan = %+v, %v", p, err)
	}
	got, err := admin.GetPlan(ctx, p.ID)
	if err != nil || got.ID != p.ID || got.Steps[0].ID != "a" || got.Steps[0].State != "pending" {
		t.Fatalf("GetPlan = %+v, %v", got, err)
	}
	if _, err := admin.SubmitPlan(ctx, apiclient.SubmitPlanRequest{Tenant: "acme", Agent: "a1", YAML: yaml}); err != nil {
		t.Fatal(err)
	}
	ps, err := admin.ListPlans(ctx, apiclient.PlanQuery{Tenant: "acme", Agent: "a1", Limit: 1})
	if err != nil || len(ps) != 1 || ps[0].Sequence != 2 || ps[0].StepCount != 1 {
		t.Fatalf("ListPlans = %+v, %v", ps, err)
	}
	if ps, err := admin.ListPlans(ctx, apiclient.PlanQuery{}); err != nil || len(ps) != 2 {
		t.Fatalf("ListPlans(all) = %d, %v", len(ps), err)
	}
	if _, err := admin.GetPlan(ctx, "no/such"); !apiclient.IsStatus(err, http.StatusNotFound) {
		t.Fatalf("GetPlan(unknown) = %v", err)
	}
	if _, err := admin.SubmitPlan(ctx, apiclient.SubmitPlanRequest{Tenant: "acme", YAML: "version: 1\nsteps: [{id: a}]"}); !apiclient.IsStatus(err, http.StatusBadRequest) ||
		!strings.Contains(err.Error(), "provider is missing") {
		t.Fatalf("invalid plan: %v", err)
	}
}

// enroll enrolls agent id of tenant through the store, as enrollment does.
func enroll(t *testing.T, srv *httpapitest.Server, tenant, id string) {
	t.Helper()
	ctx := context.Background()
	jt, err := apiclient.New(srv.URL, srv.AdminToken, nil).CreateJoinToken(ctx, tenant, 0)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jointoken.Parse(jt.Token)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	sid := "spiffe://" + httpapitest.TrustDomain + "/tenant/" + tenant + "/agent/" + id
	if _, err := srv.Store.Enroll(ctx, tok.ID, tok.SecretHash(), now, store.Agent{
		Tenant: tenant, ID: id, SPIFFEID: sid, EnrolledAt: now, CertSerial: "01", CertExpiresAt: now.Add(time.Hour),
	}, auditlog.Entry{Time: now, Actor: sid, Role: "agent", Action: "agent.enroll", Tenant: tenant, Target: id, Outcome: auditlog.OutcomeSuccess}); err != nil {
		t.Fatalf("Enroll: %v", err)
	}
}
