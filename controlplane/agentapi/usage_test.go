package agentapi_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"attache.dev/attache/controlplane/store"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// sendUsage sends a usage batch and returns its message id.
func (s *session) sendUsage(t *testing.T, b *agentv1.UsageBatch) uint64 {
	t.Helper()
	s.id++
	if err := s.stream.Send(&agentv1.AgentMessage{Id: s.id, Body: &agentv1.AgentMessage_UsageBatch{UsageBatch: b}}); err != nil {
		t.Fatal(err)
	}
	return s.id
}

// usageAck waits for the ack of message ref and checks its usage sequence.
func (s *session) usageAck(t *testing.T, ref, seq uint64) {
	t.Helper()
	m := s.next(t)
	if a := m.GetAck(); a == nil || a.GetRef() != ref || a.GetUsageSequence() != seq {
		t.Fatalf("received %v, want ack of message %d for usage batch %d", m, ref, seq)
	}
}

func batch(seq uint64, tenant string, values ...float64) *agentv1.UsageBatch {
	b := &agentv1.UsageBatch{Sequence: seq}
	at := timestamppb.New(time.Date(2026, 11, 23, 10, 30, 0, 0, time.UTC))
	for _, v := range values {
		b.Records = append(b.Records, &agentv1.UsageRecord{Tenant: tenant, Meter: "local.requests", Value: v, At: at})
	}
	return b
}

// TestUsageBatchStoredOnceThenAcked: a batch is acknowledged with its
// sequence only once stored, and a batch re-sent after a lost ack (same
// sequence, even on a new session) is acknowledged again but counted once.
func TestUsageBatchStoredOnceThenAcked(t *testing.T) {
	c := startCP(t, options{})
	_, _, creds := c.agent(t, "acme", "a1")
	s := c.open(t, creds, &agentv1.Hello{AgentVersion: "test"})
	s.usageAck(t, s.sendUsage(t, batch(7, "acme", 1, 2, 3)), 7)
	s.usageAck(t, s.sendUsage(t, batch(8, "", 10)), 8) // no tenant: the session's
	s2 := c.open(t, creds, &agentv1.Hello{AgentVersion: "test"})
	s2.usageAck(t, s2.sendUsage(t, batch(7, "acme", 1, 2, 3)), 7)
	totals, err := c.store.UsageTotals(t.Context(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	if len(totals) != 1 || totals[0].Sum != 16 || totals[0].Count != 4 || totals[0].Meter != "local.requests" {
		t.Fatalf("totals %+v, want local.requests 16 over 4 records", totals)
	}
}

// TestUsageBatchRefused: a batch naming another tenant is refused and
// audited as cross-tenant; an invalid one is refused and audited; neither
// is stored.
func TestUsageBatchRefused(t *testing.T) {
	c := startCP(t, options{})
	c.agent(t, "globex", "g1")
	_, _, creds := c.agent(t, "acme", "a1")
	for _, tc := range []struct {
		name   string
		b      *agentv1.UsageBatch
		code   codes.Code
		action string
		msg    string
	}{
		{"other tenant", batch(1, "globex", 5), codes.PermissionDenied, "session.cross_tenant", `names tenant "globex"`},
		{"zero sequence", batch(0, "acme", 5), codes.InvalidArgument, "usage.refuse", "sequence must be above 0"},
		{"bad meter", &agentv1.UsageBatch{Sequence: 2, Records: []*agentv1.UsageRecord{{Tenant: "acme", Meter: "Bad Meter", Value: 1, At: timestamppb.Now()}}},
			codes.InvalidArgument, "usage.refuse", `record 0: meter "Bad Meter"`},
		{"no time", &agentv1.UsageBatch{Sequence: 3, Records: []*agentv1.UsageRecord{{Tenant: "acme", Meter: "m", Value: 1}}},
			codes.InvalidArgument, "usage.refuse", "records[0].at"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := c.open(t, creds, &agentv1.Hello{AgentVersion: "test"})
			s.sendUsage(t, tc.b)
			st := s.ended(t)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Fatalf("session ended with %v, want %v containing %q", st, tc.code, tc.msg)
			}
			if len(c.audits(t, tc.action)) == 0 {
				t.Fatalf("no %s audit record", tc.action)
			}
		})
	}
	for _, tenant := range []string{"acme", "globex"} {
		if totals, err := c.store.UsageTotals(t.Context(), tenant); err != nil || len(totals) != 0 {
			t.Fatalf("%s usage stored from refused batches: %+v %v", tenant, totals, err)
		}
	}
}

// TestHealthHistory: heartbeats record the agent's component states; a
// change of status becomes a health event, an unchanged heartbeat does not.
func TestHealthHistory(t *testing.T) {
	c := startCP(t, options{})
	k, _, creds := c.agent(t, "acme", "a1")
	s := c.open(t, creds, &agentv1.Hello{AgentVersion: "test"})
	beat := func(st agentv1.HealthStatus, msg string) {
		s.id++
		if err := s.stream.Send(&agentv1.AgentMessage{Id: s.id, Body: &agentv1.AgentMessage_Heartbeat{Heartbeat: &agentv1.Heartbeat{
			SentAt: timestamppb.Now(), Components: []*agentv1.ComponentHealth{{Name: "usage", Status: st, Message: msg}},
		}}}); err != nil {
			t.Fatal(err)
		}
	}
	beat(agentv1.HealthStatus_HEALTH_STATUS_HEALTHY, "ok")
	beat(agentv1.HealthStatus_HEALTH_STATUS_HEALTHY, "ok")
	beat(agentv1.HealthStatus_HEALTH_STATUS_DEGRADED, "back-pressure")
	var evs []store.HealthEvent
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		var err error
		if evs, err = c.store.HealthEvents(t.Context(), k, 10); err != nil {
			t.Fatal(err)
		}
		if len(evs) >= 2 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(evs) != 2 || evs[0].Status != "degraded" || evs[0].Message != "back-pressure" || evs[1].Status != "healthy" {
		t.Fatalf("health events %+v, want degraded then (older) healthy", evs)
	}
	// A spooled change sent after a disconnect keeps the time it happened;
	// a time in the future is not believed.
	then := time.Now().Add(-time.Hour).UTC().Truncate(time.Millisecond)
	for _, hb := range []*agentv1.Heartbeat{
		{SentAt: timestamppb.New(then), Components: []*agentv1.ComponentHealth{{Name: "spool", Status: agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY}}},
		{SentAt: timestamppb.New(time.Now().Add(time.Hour)), Components: []*agentv1.ComponentHealth{{Name: "future", Status: agentv1.HealthStatus_HEALTH_STATUS_HEALTHY}}},
	} {
		s.id++
		if err := s.stream.Send(&agentv1.AgentMessage{Id: s.id, Body: &agentv1.AgentMessage_Heartbeat{Heartbeat: hb}}); err != nil {
			t.Fatal(err)
		}
	}
	byName := map[string]store.HealthEvent{}
	for deadline := time.Now().Add(wait); time.Now().Before(deadline) && len(byName) < 2; time.Sleep(20 * time.Millisecond) {
		evs, err := c.store.HealthEvents(t.Context(), k, 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if e.Component == "spool" || e.Component == "future" {
				byName[e.Component] = e
			}
		}
	}
	if e := byName["spool"]; !e.At.Equal(then) {
		t.Errorf("spooled change recorded at %v, want %v", e.At, then)
	}
	if e := byName["future"]; e.At.After(time.Now()) || e.At.IsZero() {
		t.Errorf("future heartbeat recorded at %v", e.At)
	}
}

// TestHealthHistoryDrift: a component's drift reaches the health history
// (drift appearing and clearing are events, a new detail alone is not) and
// the agent's last health.
func TestHealthHistoryDrift(t *testing.T) {
	c := startCP(t, options{})
	k, _, creds := c.agent(t, "acme", "a1")
	s := c.open(t, creds, &agentv1.Hello{AgentVersion: "test"})
	beat := func(drift bool, detail string) {
		s.id++
		if err := s.stream.Send(&agentv1.AgentMessage{Id: s.id, Body: &agentv1.AgentMessage_Heartbeat{Heartbeat: &agentv1.Heartbeat{
			SentAt: timestamppb.Now(), Components: []*agentv1.ComponentHealth{{
				Name: "provider/kubernetes/app", Status: agentv1.HealthStatus_HEALTH_STATUS_HEALTHY, Message: "3/3 ready", Drift: drift, DriftDetail: detail,
			}},
		}}}); err != nil {
			t.Fatal(err)
		}
	}
	beat(false, "")
	beat(true, "replicas: plan 3, live 5")
	beat(true, "replicas: plan 3, live 4")
	beat(false, "")
	var evs []store.HealthEvent
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var err error
		if evs, err = c.store.HealthEvents(t.Context(), k, 10); err != nil {
			t.Fatal(err)
		}
		if len(evs) >= 3 {
			break
		}
	}
	if len(evs) != 3 || evs[0].Drift || evs[0].DriftDetail != "" ||
		!evs[1].Drift || evs[1].DriftDetail != "replicas: plan 3, live 5" || evs[1].Status != "healthy" || evs[1].Message != "3/3 ready" ||
		evs[2].Drift {
		t.Fatalf("health events %+v, want drift cleared, drift (replicas 5), no drift", evs)
	}

	beat(true, "image: plan v1, live v2")
	for deadline := time.Now().Add(wait); ; time.Sleep(20 * time.Millisecond) {
		a, err := c.store.GetAgent(t.Context(), k)
		if err != nil {
			t.Fatal(err)
		}
		h := string(a.Health)
		if strings.Contains(h, `"drift":true`) && strings.Contains(h, `"driftDetail":"image: plan v1, live v2"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent health %s, want the drift of the last heartbeat", h)
		}
	}
}
