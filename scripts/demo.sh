#!/usr/bin/env bash
# The local demo behind `make demo`: a control plane (SQLite) and one agent
# per tenant on this machine, each enrolled with a one-time join token; then
# signed plans that provision both tenants (directories, SQLite databases),
# migrate them, start the sample app v1, and upgrade it to v2, applied by
# the agents through the local provider plugin; then the audit log.
#
# Run `make build` first (make demo does). Adapt the flags in the variables
# below; nothing else in this file knows them.
#
# Env: DEMO_DIR (default ./demo, wiped at start), BIN (default ./bin),
#      DEMO_TIMEOUT (seconds to wait for each step, default 30),
#      DEMO_KEEP=1 leaves both processes running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${BIN:-./bin}"
D="${DEMO_DIR:-./demo}"
TIMEOUT="${DEMO_TIMEOUT:-30}"
TRUST_DOMAIN="attache.demo"
AGENT_ADDR="127.0.0.1:7440"
API_ADDR="127.0.0.1:7443"
TENANTS=(acme globex)

CP_FLAGS=(serve --data-dir "$D/controlplane" --trust-domain "$TRUST_DOMAIN"
	--agent-listen "$AGENT_ADDR" --api-listen "$API_ADDR")
# The ops API serves HTTPS with a certificate from the trust domain's CA.
CLI_FLAGS=(--server "https://$API_ADDR" --ca-file "$D/controlplane/ca.crt"
	--token-file "$D/controlplane/admin.token")

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }
cli() { "$BIN/attache" "${CLI_FLAGS[@]}" "$@"; }

# wait_for DESCRIPTION COMMAND...: retry COMMAND every 0.5s until it succeeds.
wait_for() {
	local what="$1"; shift
	local deadline=$((SECONDS + TIMEOUT))
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $deadline ] || die "timed out after ${TIMEOUT}s waiting for $what"
		check_alive
		sleep 0.5
	done
}

pids=()
check_alive() {
	local p
	for p in "${pids[@]+"${pids[@]}"}"; do
		kill -0 "$p" 2>/dev/null || die "a background process (pid $p) exited; see $D/*.log"
	done
}
cleanup() {
	local rc=$?
	local p
	for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]+"${pids[@]}"}"; do wait "$p" 2>/dev/null || true; done
	# The sample apps the plans started outlive their agents by design (an
	# agent restart must not stop the vendor's app); the demo stops them.
	[ -n "${VENDOR_BIN:-}" ] && pkill -f "^$VENDOR_BIN/sampleapp" 2>/dev/null || true
	if [ $rc -ne 0 ]; then
		for f in "$D"/*.log; do [ -f "$f" ] && { echo "--- $f (last 20 lines)" >&2; tail -n 20 "$f" >&2; }; done
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for b in attache-controlplane attache attache-agent attache-provider-local sampleapp; do
	[ -x "$BIN/$b" ] || die "$BIN/$b not found; run 'make build'"
done

case "$D" in ""|/|.|..) die "refusing to use DEMO_DIR=$D" ;; esac
step "Fresh demo directory $D"
rm -rf "$D"
mkdir -p "$D"

step "Start the control plane (agents on $AGENT_ADDR, API on $API_ADDR, trust domain $TRUST_DOMAIN)"
"$BIN/attache-controlplane" "${CP_FLAGS[@]}" >"$D/controlplane.log" 2>&1 &
pids+=($!)
echo "pid $!, log $D/controlplane.log"
wait_for "the control plane API" cli tenant list
echo "control plane is up; admin token in $D/controlplane/admin.token"

# The vendor app's binaries, the only programs plans may start (bin_dir).
mkdir -p "$D/vendor-bin"
cp "$BIN/sampleapp" "$D/vendor-bin/"
VENDOR_BIN="$(cd "$D/vendor-bin" && pwd)"
DABS="$(cd "$D" && pwd)"

# Each tenant: its own agent, local provider root and app ports (v1, v2).
declare -A PORT1=([acme]=18081 [globex]=18091) PORT2=([acme]=18082 [globex]=18092)
for t in "${TENANTS[@]}"; do
	step "Tenant $t: create it and a one-time join token"
	cli tenant create "$t"
	TOKEN="$(cli token create --tenant "$t")"
	[ -n "$TOKEN" ] || die "empty join token"
	echo "${TOKEN:0:24}…"

	step "Tenant $t: start its agent with the local provider pinned by sha256"
	mkdir -p "$D/agent-$t"
	"$BIN/attache-agent" provider pin --name local "$BIN/attache-provider-local" \
		--config "{\"root\":\"$DABS/local-$t\",\"bin_dir\":\"$VENDOR_BIN\"}" >"$D/agent-$t.yaml"
	chmod 600 "$D/agent-$t.yaml"
	sed 's/^/    /' "$D/agent-$t.yaml"
	# The demo submits ad hoc plans, which agents refuse unless told to
	# accept them (production agents run only plans from a signed release).
	"$BIN/attache-agent" run --state-dir "$D/agent-$t/state" --config "$D/agent-$t.yaml" --token "$TOKEN" \
		--usage-interval 2s --allow-unreleased-plans >"$D/agent-$t.log" 2>&1 &
	pids+=($!)
	echo "pid $!, log $D/agent-$t.log"
done

step "Wait for both agents to show as connected"
agents_connected() { [ "$(cli agent list 2>/dev/null | grep -cw connected)" -ge ${#TENANTS[@]} ]; }
wait_for "the agents to connect" agents_connected
cli agent list

render() { sed -e "s/__PORT__/${PORT1[$2]}/g" -e "s/__PORT2__/${PORT2[$2]}/g" "examples/plans/$1.yaml" >"$D/$1-$2.yaml"; }

for t in "${TENANTS[@]}"; do
	render install "$t"
	step "Tenant $t: dry run of the install plan (each provider's diff, nothing changes)"
	cli plan submit --tenant "$t" --dry-run --wait --timeout "${TIMEOUT}s" "$D/install-$t.yaml"
	step "Tenant $t: install plan — directories, SQLite database migrated, app v1 (signed, verified, applied)"
	cli plan submit --tenant "$t" --wait --timeout "${TIMEOUT}s" "$D/install-$t.yaml"
	curl -fsS "http://127.0.0.1:${PORT1[$t]}/" || die "app v1 of $t does not answer"
done

for t in "${TENANTS[@]}"; do
	render upgrade "$t"
	step "Tenant $t: upgrade plan — one more migration, app v2 started, health-checked, switched"
	cli plan submit --tenant "$t" --wait --timeout "${TIMEOUT}s" "$D/upgrade-$t.yaml"
	curl -fsS "http://127.0.0.1:${PORT2[$t]}/" || die "app v2 of $t does not answer"
done

step "Release v3: signed with the release key (held by the vendor's CI, not the control plane) and pushed"
cli release sign --key "$D/controlplane/release.key" --out "$D/sampleapp-v3.signed.json" examples/releases/sampleapp-v3.yaml
cli release push "$D/sampleapp-v3.signed.json"
cli release show v3

step "Roll v3 out in two waves (canary first), each gated on health for its bake time"
cli tenant set acme --label ring=canary >/dev/null
cli tenant set globex --label ring=main >/dev/null
ROLLOUT="$(cli -o json rollout start --release v3 --tenants acme,globex --waves canary:1,100% --bake 3s --max-failed 0 | sed -n 's/^  "id": *"\([^"]*\)".*/\1/p' | head -n1)"
[ -n "$ROLLOUT" ] || die "rollout did not start"
cli rollout status "$ROLLOUT" --watch

step "Turn a feature flag on for acme: delivered as a plan re-rendering acme's release"
cli flag set --tenant acme checkout_v2=true
cli flag list --tenant acme

step "Every plan and its status"
cli plan list
last="$(cli -o json plan list --tenant acme --limit 1 | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' | head -n1)"
[ -n "$last" ] && cli plan show "$last"

step "Fleet health (unhealthy and silent agents first) and acme's usage, spooled by its agent and stored once per batch"
cli health
has_usage() { cli usage show --tenant acme --format csv 2>/dev/null | grep -q 'local.storage_bytes'; }
wait_for "acme's usage to arrive" has_usage
cli usage show --tenant acme

step "The audit log (hash-chained; verified below)"
cli audit log
cli audit verify

if [ "${DEMO_KEEP:-}" = 1 ]; then
	step "Running; Ctrl-C stops both processes"
	wait
fi

step "Demo complete; stopping the agents, their apps and the control plane"
