// Package sign signs and verifies DSSE envelopes and the TUF-style trust
// root that says which ed25519 keys may sign what.
//
// The trust root lists keys and, per role (root, plans, releases), which of
// them may sign and how many must. It is versioned, expires, and is replaced
// only by a root signed by a threshold of the previous root keys and of its
// own. A client several versions behind follows the whole chain of
// rotations (VerifyRootChain), and, as in TUF, only the final root of the
// chain must be unexpired. Plans and releases are DSSE envelopes checked
// against a role of a verified root.
//
// Imported by the control plane, the agent and the installer; never by
// providers.
package sign
