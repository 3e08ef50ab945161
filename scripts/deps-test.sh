#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine. Idempotent and quiet
# when everything is already present. Called by `make deps-test`.
#
# A PostgreSQL server (testenv/pgtest runs initdb/pg_ctl from
# /usr/lib/postgresql/*/bin in a temp dir; no service is used).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_install() {
	# Try without refreshing the package lists first; refresh only if that fails.
	if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/tmp/attache-apt.log 2>&1; then
		echo "deps-test: apt-get install $* failed; running apt-get update and retrying" >&2
		$SUDO apt-get update -qq
		$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
	fi
}

has_candidate() {
	local c
	c="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')"
	[ -n "$c" ] && [ "$c" != "(none)" ]
}

# --- PostgreSQL ---------------------------------------------------------------
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
	command -v apt-get >/dev/null || { echo "deps-test: no initdb under /usr/lib/postgresql and no apt-get; install PostgreSQL 15+ by hand" >&2; exit 1; }
	pkg=postgresql
	if has_candidate postgresql-15; then pkg=postgresql-15; fi
	echo "deps-test: installing $pkg"
	apt_install "$pkg"
	compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || { echo "deps-test: $pkg installed but no /usr/lib/postgresql/*/bin/initdb" >&2; exit 1; }
fi

# --- Kubernetes test cluster ------------------------------------------------------
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, built
# from the Go module proxy into a versioned cache outside the repo (testenv/kubetest
# finds them there). Only the first run on a machine pays for the build.
if ! command -v setpriv >/dev/null; then
	command -v apt-get >/dev/null || { echo "deps-test: setpriv (util-linux) is missing" >&2; exit 1; }
	apt_install util-linux
fi
"$(dirname "${BASH_SOURCE[0]}")/k8s-binaries.sh" >/dev/null
