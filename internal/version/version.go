// Package version holds the build version and the agent capability version.
//
// Imported by the control plane, the agent and the installer.
package version

// Version is the build version, set at link time with
// -ldflags "-X attache.dev/attache/internal/version.Version=…".
var Version = "0.0.0-dev"

// CapabilityVersion says what an agent understands. The agent sends it in its
// Hello; the control plane never sends an agent a message above its version.
//
// History:
//
//	1 (2026-11-23): hello, heartbeat, plan status, usage batches, plan offers,
//	                acks, config, SVID renewal.
const CapabilityVersion uint32 = 1
