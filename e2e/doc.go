// Package e2e holds Attaché's end-to-end tests: each one starts the real
// attache-controlplane and attache-agent binaries (built once per run by
// e2e/harness), drives them with the real `attache` CLI, and checks what an
// operator, a customer or a reviewer would see. It has no code of its own.
//
// Run them with `go test ./e2e/...`; they need setpriv (util-linux), and
// TestPostgresStore needs PostgreSQL (see testenv/pgtest).
package e2e
