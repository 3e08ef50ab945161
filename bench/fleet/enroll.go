package fleet

import (
	"context"

	"attache.dev/attache/agent/svid"
)

// Enroll enrolls one simulated agent with the agent's own code
// (svid.EnrollInMemory: key and CSR, the CA pinned before the token is sent,
// the same checks on the answer), keeping the identity in memory instead of
// writing a state directory per agent.
func Enroll(ctx context.Context, rawToken, hostname string) (*svid.State, error) {
	return svid.EnrollInMemory(ctx, rawToken, hostname)
}
