// Package bench holds the benchmarks that need the whole stack rather than
// one package: a control plane and agents talking over real mTLS.
//
//   - plans_test.go: submit-to-applied latency of a no-op plan through an
//     in-process control plane (controlplane/server, SQLite in a temporary
//     directory) and the real attache-agent binary running the real
//     attache-provider-local plugin (go test -bench . ./bench/).
//   - bench/fleet and bench/cmd/attache-loadgen: the fleet benchmark, one
//     attache-controlplane process and thousands of simulated agents.
//
// See docs/BENCHMARKS.md for the figures. Nothing imports package bench.
package bench
