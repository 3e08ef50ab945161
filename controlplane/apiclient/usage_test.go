package apiclient_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/controlplane/httpapi/httpapitest"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/jointoken"
)

func TestUsageAndHealth(t *testing.T) {
	srv := httpapitest.New(t)
	ctx := context.Background()
	c := apiclient.New(srv.URL, srv.AdminToken, nil)
	if _, err := c.CreateTenant(ctx, apiclient.CreateTenantRequest{Name: "acme"}); err != nil {
		t.Fatal(err)
	}
	jt, err := c.CreateJoinToken(ctx, "acme", 0)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := jointoken.Parse(jt.Token)
	now := time.Now().UTC()
	if _, err := srv.Store.Enroll(ctx, tok.ID, tok.SecretHash(), now, store.Agent{Tenant: "acme", ID: "a1",
		SPIFFEID: "spiffe://attache.test/tenant/acme/agent/a1", CertSerial: "01", CertExpiresAt: now.Add(time.Hour)},
		auditlog.Entry{Actor: "agent", Role: "agent", Action: "agent.enroll", Tenant: "acme", Outcome: auditlog.OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}
	k := store.AgentKey{Tenant: "acme", ID: "a1"}
	hour := now.Truncate(time.Hour).Add(-3 * time.Hour)
	if _, err := srv.Store.IngestUsage(ctx, k, 1, []store.UsageRecord{
		{Meter: "api.requests", Value: 2, At: hour}, {Meter: "disk.bytes", Value: 9, At: hour},
	}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Store.RecordHealth(ctx, k, now, []store.ComponentState{{Name: "agent", Status: "healthy"}}); err != nil {
		t.Fatal(err)
	}

	l, err := c.Usage(ctx, apiclient.UsageQuery{Tenant: "acme", Meter: "api.requests", From: hour.Add(-time.Hour), To: hour.Add(time.Hour)})
	if err != nil || len(l.Hours) != 1 || l.Hours[0].Sum != 2 || !l.From.Equal(hour.Add(-time.Hour)) || !l.To.Equal(hour.Add(time.Hour)) {
		t.Fatalf("Usage = %+v, %v", l, err)
	}
	if l, err = c.Usage(ctx, apiclient.UsageQuery{Tenant: "acme"}); err != nil || len(l.Hours) != 2 {
		t.Fatalf("Usage (default window) = %+v, %v", l, err)
	}
	if _, err := c.Usage(ctx, apiclient.UsageQuery{}); !apiclient.IsStatus(err, http.StatusBadRequest) {
		t.Fatalf("Usage without a tenant = %v, want 400", err)
	}
	h, err := c.FleetHealth(ctx, "acme")
	if err != nil || len(h.Agents) != 1 || h.Agents[0].State != "silent" || h.Counts["silent"] != 1 {
		t.Fatalf("FleetHealth = %+v, %v", h, err)
	}
	ev, err := c.AgentHealthEvents(ctx, "acme", "a1", 10)
	if err != nil || len(ev.Events) != 1 || ev.Events[0].Component != "agent" || ev.Events[0].Status != "healthy" {
		t.Fatalf("AgentHealthEvents = %+v, %v", ev, err)
	}
	if _, err := c.AgentHealthEvents(ctx, "acme", "a/b", 0); !apiclient.IsStatus(err, http.StatusNotFound) {
		t.Fatalf("AgentHealthEvents(escaped id) = %v, want 404", err)
	}
}
