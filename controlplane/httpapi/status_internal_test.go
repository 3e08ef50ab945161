package httpapi

import (
	"testing"
	"time"

	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/store"
)

func TestAgentStatus(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(d time.Duration) *time.Time { t := now.Add(-d); return &t }
	window := ConnectedWindow(15 * time.Second)
	for _, tc := range []struct {
		name string
		a    store.Agent
		want string
	}{
		{"never", store.Agent{}, apiv1.AgentNeverConnected},
		{"fresh", store.Agent{Connected: true, LastSeenAt: at(10 * time.Second)}, apiv1.AgentConnected},
		{"edge", store.Agent{Connected: true, LastSeenAt: at(window)}, apiv1.AgentConnected},
		{"stale", store.Agent{Connected: true, LastSeenAt: at(window + time.Second)}, apiv1.AgentDisconnected},
		{"closed", store.Agent{Connected: false, LastSeenAt: at(time.Second)}, apiv1.AgentDisconnected},
		{"connected no heartbeat yet", store.Agent{Connected: true}, apiv1.AgentDisconnected},
		{"revoked wins", store.Agent{Connected: true, LastSeenAt: at(time.Second), RevokedAt: at(0)}, apiv1.AgentRevoked},
	} {
		if got := agentStatus(tc.a, now, window); got != tc.want {
			t.Errorf("%s: status = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestConnectedWindowFollowsHeartbeat(t *testing.T) {
	for _, tc := range []struct{ heartbeat, want time.Duration }{
		{0, 45 * time.Second},
		{time.Second, 30 * time.Second},
		{15 * time.Second, 45 * time.Second},
		{5 * time.Minute, 15 * time.Minute},
	} {
		if got := ConnectedWindow(tc.heartbeat); got != tc.want {
			t.Errorf("heartbeat %s: window %s, want %s", tc.heartbeat, got, tc.want)
		}
	}
	// An agent that heartbeats every 5 minutes and was seen 4 minutes ago is
	// connected; a fixed window shorter than the interval would call it gone.
	now := time.Now()
	seen := now.Add(-4 * time.Minute)
	if got := agentStatus(store.Agent{Connected: true, LastSeenAt: &seen}, now, ConnectedWindow(5*time.Minute)); got != apiv1.AgentConnected {
		t.Fatalf("status %q, want connected", got)
	}
}

func TestParseAPIToken(t *testing.T) {
	tok, stored := newAPIToken("ci", store.RoleOperator, "system", time.Now())
	id, secret, ok := parseAPIToken(tok)
	if !ok || id != stored.ID || string(hashSecret(secret)) != string(stored.SecretHash) {
		t.Fatalf("round trip failed: %q", tok)
	}
	for _, bad := range []string{"", "attache-api-v1", "attache-api-v1..", "attache-api-v2." + stored.ID + "." + secret,
		"attache-api-v1.xyz." + secret, "attache-api-v1." + stored.ID + ".short", tok + ".extra"} {
		if _, _, ok := parseAPIToken(bad); ok {
			t.Errorf("parseAPIToken(%q) ok", bad)
		}
	}
}
