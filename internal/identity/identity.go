// Package identity is Attaché's SPIFFE identity scheme: the IDs agents and the
// control plane hold, certificate signing requests, and an X.509-SVID source
// that can be swapped at run time so renewals never drop a connection.
//
// Imported by the control plane, the agent and the installer; built on
// go-spiffe v2.
package identity

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// namePattern is what tenant names and agent IDs may look like: a DNS label.
var namePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidName reports whether s may be a tenant name or agent ID.
func ValidName(s string) bool { return namePattern.MatchString(s) }

// ControlPlaneID is the SPIFFE ID the control plane presents to agents.
func ControlPlaneID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "controlplane")
}

// AgentID is spiffe://<td>/tenant/<tenant>/agent/<agent>.
func AgentID(td spiffeid.TrustDomain, tenant, agent string) (spiffeid.ID, error) {
	if !ValidName(tenant) {
		return spiffeid.ID{}, fmt.Errorf("tenant %q is not a valid name (lowercase DNS label)", tenant)
	}
	if !ValidName(agent) {
		return spiffeid.ID{}, fmt.Errorf("agent id %q is not a valid name (lowercase DNS label)", agent)
	}
	return spiffeid.FromSegments(td, "tenant", tenant, "agent", agent)
}

// ErrNotAgent is returned by ParseAgentID for IDs outside the agent scheme.
var ErrNotAgent = errors.New("not an agent SPIFFE ID")

// ParseAgentID returns the tenant and agent ID of an agent SPIFFE ID in td.
func ParseAgentID(td spiffeid.TrustDomain, id spiffeid.ID) (tenant, agent string, err error) {
	if id.TrustDomain() != td {
		return "", "", fmt.Errorf("%w: %s is in trust domain %q, not %q", ErrNotAgent, id, id.TrustDomain().Name(), td.Name())
	}
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "tenant" || parts[2] != "agent" || !ValidName(parts[1]) || !ValidName(parts[3]) {
		return "", "", fmt.Errorf("%w: %s", ErrNotAgent, id)
	}
	return parts[1], parts[3], nil
}
