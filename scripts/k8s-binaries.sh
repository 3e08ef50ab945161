#!/usr/bin/env bash
# Builds the binaries of the test Kubernetes cluster (testenv/kubetest) from the
# Go module proxy — etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok — into a cache directory keyed by their versions, and
# prints that directory. Only the first run on a machine pays for the build
# (about 15 minutes on 2 cores); later runs find the stamp file and return.
#
# No Docker and no downloads outside the Go module proxy: kubernetes is built
# from its Go module in a throwaway module whose go.mod maps every staging
# module (k8s.io/api => ./staging/src/k8s.io/api, ...) to its published
# version, and etcd's server is built in the same module at the version
# kubernetes requires. kwok's stage configs (fake nodes become Ready, Pods run)
# are copied from its module.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
GO="${GO:-go}"
CACHE="${ATTACHE_K8S_CACHE:-$HOME/.cache/attache/k8s}"
DIR="$CACHE/$K8S_VERSION-kwok$KWOK_VERSION"
STAMP="$DIR/.complete"

if [ -f "$STAMP" ]; then
	echo "$DIR"
	exit 0
fi

log() { echo "k8s-binaries: $*" >&2; }

# Proxy downloads occasionally stall at 0 bytes: bound each with a timeout and retry.
retry() {
	local n
	for n in 1 2 3 4; do
		if timeout 900 "$@"; then return 0; fi
		log "attempt $n of '$*' failed; retrying"
		sleep $((n * 5))
	done
	return 1
}

all_built() {
	local b
	for b in "$@"; do [ -x "$DIR/$b" ] || return 1; done
}

mkdir -p "$DIR"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# ---- kubernetes + etcd ---------------------------------------------------------
# Skipped when an earlier, interrupted run already built all four.
if ! all_built etcd kube-apiserver kube-controller-manager kube-scheduler; then
	log "building kubernetes $K8S_VERSION (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) into $DIR"
	mkdir -p "$work/k8s"
	cd "$work/k8s"
	gomod="$(retry "$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
	[ -f "$gomod" ] || { log "could not download k8s.io/kubernetes@$K8S_VERSION's go.mod"; exit 1; }
	staging_version="v0.${K8S_VERSION#v1.}"
	etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2; exit}' "$gomod")"
	[ -n "$etcd_version" ] || { log "k8s.io/kubernetes@$K8S_VERSION does not require go.etcd.io/etcd/server/v3"; exit 1; }
	{
		echo "module attache.dev/k8sbuild"
		echo
		echo "go 1.26.0"
		echo
		echo "require k8s.io/kubernetes $K8S_VERSION"
		echo
		echo "replace ("
		grep -E '^[[:space:]]*k8s\.io/[^ ]+ => \./staging/' "$gomod" | awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}'
		echo ")"
	} > go.mod
	printf '%s\n' '//go:build tools' '' 'package k8sbuild' '' 'import (' \
		'	_ "go.etcd.io/etcd/server/v3"' \
		'	_ "k8s.io/kubernetes/cmd/kube-apiserver"' \
		'	_ "k8s.io/kubernetes/cmd/kube-controller-manager"' \
		'	_ "k8s.io/kubernetes/cmd/kube-scheduler"' ')' > tools.go
	retry "$GO" get "k8s.io/kubernetes@$K8S_VERSION" "go.etcd.io/etcd/server/v3@$etcd_version" >&2
	retry "$GO" mod tidy >&2
	vpkg=k8s.io/component-base/version
	minor="${K8S_VERSION#v1.}"
	minor="${minor%%.*}"
	ldflags="-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"
	for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
		log "go build $cmd"
		CGO_ENABLED=0 retry "$GO" build -trimpath -ldflags "$ldflags" -o "$DIR/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
		mv "$DIR/$cmd.tmp" "$DIR/$cmd"
	done
	log "go build etcd $etcd_version"
	CGO_ENABLED=0 retry "$GO" build -trimpath -ldflags "-s -w" -o "$DIR/etcd.tmp" go.etcd.io/etcd/server/v3
	mv "$DIR/etcd.tmp" "$DIR/etcd"
fi

# ---- kwok ----------------------------------------------------------------------
log "building kwok $KWOK_VERSION"
mkdir -p "$work/kwok"
cd "$work/kwok"
cat > go.mod <<'EOF'
module attache.dev/kwokbuild

go 1.26.0
EOF
retry "$GO" get "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >&2
CGO_ENABLED=0 retry "$GO" build -trimpath -ldflags "-s -w" -o "$DIR/kwok.tmp" sigs.k8s.io/kwok/cmd/kwok
mv "$DIR/kwok.tmp" "$DIR/kwok"
kwokdir="$(retry "$GO" mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
[ -d "$kwokdir/kustomize/stage" ] || { log "kwok module has no kustomize/stage directory"; exit 1; }
rm -rf "$DIR/stage"
mkdir -p "$DIR/stage"
cp -r "$kwokdir/kustomize/stage/." "$DIR/stage/"
chmod -R u+w "$DIR/stage"

etcd_version="${etcd_version:-$("$DIR/etcd" --version 2>/dev/null | awk '/etcd Version/ {print $3}')}"
printf 'kubernetes %s\netcd %s\nkwok %s\n' "$K8S_VERSION" "$etcd_version" "$KWOK_VERSION" > "$STAMP.tmp"
mv "$STAMP.tmp" "$STAMP"
log "done"
echo "$DIR"
