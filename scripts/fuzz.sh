#!/usr/bin/env bash
# Runs every Fuzz* function in the module for FUZZTIME (default 5s) each.
# `go test -fuzz` takes one package and one target at a time, so the targets
# are discovered first with `go test -list '^Fuzz' ./...`.
#
# New crashers are written to the package's testdata/fuzz/ and fail the run;
# commit them so they become regression cases.
set -euo pipefail
cd "$(dirname "$0")/.."

GO="${GO:-go}"
FUZZTIME="${FUZZTIME:-5s}"

listing="$("$GO" test -list '^Fuzz' ./...)" || { echo "$listing" >&2; echo "fuzz: go test -list failed" >&2; exit 1; }

# The listing prints a package's target names, then "ok  <pkg>  <time>".
mapfile -t targets < <(awk '
	/^Fuzz/ { names[n++] = $1; next }
	/^ok[ \t]/ { for (i = 0; i < n; i++) print $2 " " names[i]; n = 0 }
' <<<"$listing")

if [ "${#targets[@]}" -eq 0 ]; then
	echo "==> fuzz: no Fuzz* targets"
	exit 0
fi

echo "==> fuzz: ${#targets[@]} targets, ${FUZZTIME} each"
for t in "${targets[@]}"; do
	pkg="${t% *}"
	fn="${t#* }"
	echo "--- $pkg $fn"
	"$GO" test -run '^$' -fuzz "^${fn}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime 2s "$pkg"
done
