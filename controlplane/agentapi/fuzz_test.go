package agentapi

import (
	"testing"

	"google.golang.org/protobuf/proto"

	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// FuzzAgentMessage decodes arbitrary wire bytes as the control plane does and
// checks the tenant binding: a message naming any tenant but the agent's own
// must be caught, whatever else it holds.
func FuzzAgentMessage(f *testing.F) {
	for _, m := range []*agentv1.AgentMessage{
		{Id: 1, Body: &agentv1.AgentMessage_Hello{Hello: &agentv1.Hello{AgentVersion: "1.0.0", CapabilityVersion: 1, Inventory: &agentv1.Inventory{Os: "linux"}}}},
		{Id: 2, Body: &agentv1.AgentMessage_Heartbeat{Heartbeat: &agentv1.Heartbeat{Components: []*agentv1.ComponentHealth{{Name: "svid", Status: agentv1.HealthStatus_HEALTH_STATUS_HEALTHY}}}}},
		{Id: 3, Body: &agentv1.AgentMessage_PlanStatus{PlanStatus: &agentv1.PlanStatus{PlanId: "p", Tenant: "acme", Steps: []*agentv1.StepStatus{{StepId: "s"}}}}},
		{Id: 4, Body: &agentv1.AgentMessage_PlanStatus{PlanStatus: &agentv1.PlanStatus{PlanId: "p", Tenant: "globex"}}},
		{Id: 5, Body: &agentv1.AgentMessage_UsageBatch{UsageBatch: &agentv1.UsageBatch{Sequence: 9, Records: []*agentv1.UsageRecord{{Tenant: "acme", Meter: "m", Value: 1}, {Tenant: "globex"}}}}},
	} {
		b, _ := proto.Marshal(m)
		f.Add(b)
	}
	f.Add([]byte{0x52, 0x02, 0x12, 0x00}) // plan_status with an empty tenant field
	f.Fuzz(func(t *testing.T, data []byte) {
		var m agentv1.AgentMessage
		if err := proto.Unmarshal(data, &m); err != nil {
			return
		}
		var named []string
		switch b := m.GetBody().(type) {
		case *agentv1.AgentMessage_PlanStatus:
			named = append(named, b.PlanStatus.GetTenant())
		case *agentv1.AgentMessage_UsageBatch:
			for _, r := range b.UsageBatch.GetRecords() {
				named = append(named, r.GetTenant())
			}
		}
		foreign := false
		for _, n := range named {
			if n != "" && n != "acme" {
				foreign = true
			}
		}
		got := foreignTenant(&m, "acme")
		if foreign != (got != "") || got == "acme" {
			t.Fatalf("foreignTenant = %q for tenants %q", got, named)
		}
		// Re-encoding what was decoded must decode to the same message.
		b, err := proto.Marshal(&m)
		if err != nil {
			t.Fatal(err)
		}
		var again agentv1.AgentMessage
		if err := proto.Unmarshal(b, &again); err != nil || !proto.Equal(&m, &again) {
			t.Fatalf("round trip changed the message: %v", err)
		}
	})
}
