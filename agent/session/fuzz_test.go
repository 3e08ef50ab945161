package session

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// FuzzControlMessage decodes arbitrary wire bytes as the agent does: whatever
// arrives, the heartbeat interval stays within bounds.
func FuzzControlMessage(f *testing.F) {
	for _, m := range []*agentv1.ControlMessage{
		{Body: &agentv1.ControlMessage_Welcome{Welcome: &agentv1.Welcome{SessionId: "s", Config: &agentv1.AgentConfig{HeartbeatIntervalSeconds: 15}}}},
		{Body: &agentv1.ControlMessage_Config{Config: &agentv1.AgentConfig{HeartbeatIntervalSeconds: 4294967295}}},
		{Body: &agentv1.ControlMessage_PlanOffer{PlanOffer: &agentv1.PlanOffer{PlanId: "p", Sequence: 1, Envelope: []byte("{}")}}},
		{Body: &agentv1.ControlMessage_Ack{Ack: &agentv1.Ack{Ref: 7}}},
	} {
		b, _ := proto.Marshal(m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var m agentv1.ControlMessage
		if err := proto.Unmarshal(data, &m); err != nil {
			return
		}
		cfg := m.GetConfig()
		if w := m.GetWelcome(); w != nil {
			cfg = w.GetConfig()
		}
		got := heartbeatInterval(defaultHeartbeat, cfg)
		if got < minHeartbeat || got > maxHeartbeat {
			t.Fatalf("heartbeat interval %s outside [%s, %s]", got, minHeartbeat, maxHeartbeat)
		}
	})
}

func TestHeartbeatInterval(t *testing.T) {
	for _, tc := range []struct {
		secs uint32
		want time.Duration
	}{{0, defaultHeartbeat}, {1, time.Second}, {30, 30 * time.Second}, {1 << 31, maxHeartbeat}} {
		if got := heartbeatInterval(defaultHeartbeat, &agentv1.AgentConfig{HeartbeatIntervalSeconds: tc.secs}); got != tc.want {
			t.Errorf("%ds: got %s, want %s", tc.secs, got, tc.want)
		}
	}
}
