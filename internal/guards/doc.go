// Package guards holds repository-wide tests that keep the house in order;
// it has no code of its own and nothing imports it.
//
//   - deps_test.go: dependency rules, checked with `go list`: providers import
//     nothing from agent/, controlplane/ or internal/; the agent binary links
//     no database driver and no cloud SDK; internal/ imports nothing from
//     agent/ or controlplane/.
//   - pkgdoc_test.go: every package has a doc comment ("Package <name> …",
//     or "Command …" for a main package); generated code is exempt.
//   - generated_test.go: every .proto under protocol/attache has its
//     generated Go under protocol/gen, and, when buf and the pinned protoc
//     plugins are on PATH, regenerating into a temp dir reproduces
//     protocol/gen byte for byte. Without buf the byte comparison is skipped,
//     except in CI (CI=true), where it fails. `make test` puts the pinned tools
//     on PATH and also runs `make check-generate`.
package guards
