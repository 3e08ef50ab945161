#!/usr/bin/env bash
# The local demo behind `make demo`: a control plane and one agent on this
# machine, the agent enrolled with a one-time join token, shown connected.
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
TENANT="acme"

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
	if [ $rc -ne 0 ]; then
		for f in "$D"/*.log; do [ -f "$f" ] && { echo "--- $f (last 20 lines)" >&2; tail -n 20 "$f" >&2; }; done
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for b in attache-controlplane attache attache-agent; do
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

step "Create tenant $TENANT"
cli tenant create "$TENANT"

step "Create a one-time join token for $TENANT"
TOKEN="$(cli token create --tenant "$TENANT")"
[ -n "$TOKEN" ] || die "empty join token"
echo "${TOKEN:0:24}…"

step "Start the agent (it dials out; it enrolls with the token and gets its SVID)"
"$BIN/attache-agent" run --state-dir "$D/agent" --token "$TOKEN" >"$D/agent.log" 2>&1 &
pids+=($!)
echo "pid $!, log $D/agent.log"

step "Wait for the agent to show as connected"
agent_connected() { cli agent list 2>/dev/null | grep -qw connected; }
wait_for "the agent to connect" agent_connected
cli agent list

if [ "${DEMO_KEEP:-}" = 1 ]; then
	step "Running; Ctrl-C stops both processes"
	wait
fi

step "Demo complete; stopping the agent and the control plane"
