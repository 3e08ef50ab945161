#!/usr/bin/env bash
# Runs the Go tests: the packages matched by the arguments (RACE_PKGS in the
# Makefile) under the race detector, every other package without it, so no
# package runs twice. Patterns whose directory does not exist yet are dropped.
#
# Env: GO (default go), TEST_TIMEOUT (default 20m), TEST_FLAGS (extra flags).
set -euo pipefail
cd "$(dirname "$0")/.."

GO="${GO:-go}"
TEST_TIMEOUT="${TEST_TIMEOUT:-20m}"
read -r -a extra <<<"${TEST_FLAGS:-}"

race_patterns=()
for p in "$@"; do
	d="${p%/...}"
	if [ -d "$d" ]; then race_patterns+=("$p"); fi
done

mapfile -t all < <("$GO" list ./...)
race=()
if [ "${#race_patterns[@]}" -gt 0 ]; then
	mapfile -t race < <("$GO" list "${race_patterns[@]}")
fi
plain=()
for p in "${all[@]}"; do
	skip=""
	for r in "${race[@]+"${race[@]}"}"; do [ "$p" = "$r" ] && { skip=1; break; }; done
	[ -z "$skip" ] && plain+=("$p")
done

status=0
start=$SECONDS
echo "==> go test (${#plain[@]} packages)"
"$GO" test -count=1 -timeout "$TEST_TIMEOUT" "${extra[@]+"${extra[@]}"}" "${plain[@]}" || status=$?
if [ "${#race[@]}" -gt 0 ]; then
	echo "==> go test -race (${#race[@]} packages)"
	"$GO" test -race -count=1 -timeout "$TEST_TIMEOUT" "${extra[@]+"${extra[@]}"}" "${race[@]}" || status=$?
fi
echo "==> go tests took $((SECONDS - start))s"
exit "$status"
