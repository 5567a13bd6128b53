#!/usr/bin/env bash
# Build a real kube-apiserver (and fetch etcd) once, for opsmedic's Kubernetes contract tests.
#
# Where it sits: a developer/CI helper, not part of the installed package. tests/contract/ starts
# "$CACHE/bin/kube-apiserver" and "$CACHE/bin/etcd" on 127.0.0.1 and skips with a clear reason when they
# are absent. Everything comes from Debian's archive through apt, so it works with no other network:
#   * kube-apiserver from Debian's `kubernetes` source package (bookworm: 1.20.5+really1.20.2, the only
#     Debian release that ships the full upstream tree with vendor/; newer ones are stripped to kubectl),
#     compiled with Debian's Go toolchain (golang-1.19-go) extracted into the cache, not installed;
#   * etcd from Debian's `etcd-server` binary package, extracted into the cache, not installed (no
#     system service is started).
# No root is needed except to install `dpkg-dev` (dpkg-source) and `rsync` when they are missing.
#
# Idempotent: each step is skipped when its result exists. Usage:
#   scripts/build-kube-apiserver.sh          # build / fetch what is missing, print where things are
#   OPSMEDIC_CACHE=/some/dir scripts/build-kube-apiserver.sh
#   FORCE=1 scripts/build-kube-apiserver.sh  # rebuild from scratch
set -euo pipefail

CACHE="${OPSMEDIC_CACHE:-$HOME/.cache/opsmedic}/kube"
BIN="$CACHE/bin"
SUITE="${KUBE_DEBIAN_SUITE:-bookworm}"
# Pin the version the contract tests were written against; override to try another.
KUBE_SRC_VERSION="${KUBE_SRC_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}"
KUBE_GIT_VERSION="${KUBE_GIT_VERSION:-v1.20.2}"
GO_PKG="${GO_PKG:-golang-1.19-go}"

log() { printf '[build-kube-apiserver] %s\n' "$*" >&2; }

if [[ "${FORCE:-0}" == 1 ]]; then
  log "FORCE=1: removing $CACHE"
  rm -rf "$CACHE"
fi
mkdir -p "$BIN" "$CACHE/debs" "$CACHE/src" "$CACHE/apt"

# A binary built before the reflect2 fix below crashes on the first custom resource write: rebuild it.
REFLECT2_MARK="$CACHE/reflect2-1.0.2"
if [[ -x "$BIN/kube-apiserver" && -x "$BIN/etcd" && -f "$REFLECT2_MARK" ]]; then
  log "already built"
  printf 'kube-apiserver: %s\netcd: %s\n' "$BIN/kube-apiserver" "$BIN/etcd"
  exit 0
fi

# A private apt configuration with deb-src lines, so that `apt-get source` works without touching the
# machine's /etc/apt (most images ship binary lines only).
APT_DIR="$CACHE/apt"
mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
cat >"$APT_DIR/sources.list" <<EOF
deb http://deb.debian.org/debian $SUITE main
deb-src http://deb.debian.org/debian $SUITE main
deb http://deb.debian.org/debian-security $SUITE-security main
deb-src http://deb.debian.org/debian-security $SUITE-security main
EOF
APT_OPTS=(
  -o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache"
  -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root"
)
apt_updated=0
apt_update() {
  if [[ $apt_updated == 0 ]]; then
    log "apt-get update (private lists in $APT_DIR)"
    apt-get "${APT_OPTS[@]}" update -qq
    apt_updated=1
  fi
}

# extract_deb PKG DEST: download a binary package with apt and unpack it (no install, no scripts).
extract_deb() {
  local pkg="$1" dest="$2"
  apt_update
  (cd "$CACHE/debs" && apt-get "${APT_OPTS[@]}" download -qq "$pkg")
  local deb
  deb="$(ls -t "$CACHE/debs/${pkg}"_*.deb | head -n1)"
  mkdir -p "$dest"
  dpkg-deb -x "$deb" "$dest"
}

# ---------------------------------------------------------------------------------------------- etcd
if [[ ! -x "$BIN/etcd" ]]; then
  log "fetching Debian's etcd-server"
  extract_deb etcd-server "$CACHE/etcd-root"
  etcd_bin="$(find "$CACHE/etcd-root/usr" -type f -name etcd -perm -u+x | head -n1)"
  [[ -n "$etcd_bin" ]] || { log "etcd binary not found in etcd-server"; exit 1; }
  ln -sf "$etcd_bin" "$BIN/etcd"
  log "etcd: $("$BIN/etcd" --version 2>&1 | head -n1)"
fi

# ------------------------------------------------------------------------------------ kube-apiserver
if [[ ! -x "$BIN/kube-apiserver" || ! -f "$REFLECT2_MARK" ]]; then
  start=$(date +%s)
  # Upstream's build scripts need these two (Debian lists them in Build-Depends); installing them needs
  # root, everything else stays in the cache.
  command -v dpkg-source >/dev/null || { log "installing dpkg-dev (dpkg-source)"; apt-get install -y -qq dpkg-dev; }
  command -v rsync >/dev/null || { log "installing rsync (hack/lib/golang.sh places binaries with it)"
    apt-get install -y -qq rsync; }

  # Go toolchain: Debian's, unpacked into the cache so the machine's packages stay as they were.
  GOROOT_DIR="$(ls -d "$CACHE"/go-root/usr/lib/go-* 2>/dev/null | head -n1 || true)"
  if [[ -z "$GOROOT_DIR" ]]; then
    log "fetching Debian's Go toolchain ($GO_PKG and its sources)"
    extract_deb "$GO_PKG" "$CACHE/go-root"
    extract_deb "${GO_PKG%-go}-src" "$CACHE/go-root"
    GOROOT_DIR="$(ls -d "$CACHE"/go-root/usr/lib/go-* | head -n1)"
  fi
  export GOROOT="$GOROOT_DIR" PATH="$GOROOT_DIR/bin:$PATH"
  # Kubernetes 1.20 builds in GOPATH mode (its staging repos are symlinked into vendor/), exactly as
  # upstream's hack/lib/golang.sh and Debian's debian/rules do; module mode would want to edit go.mod.
  export GOPATH="$CACHE/gopath" GOCACHE="$CACHE/gocache" GO111MODULE=off GOPROXY=off CGO_ENABLED=0
  log "go: $(go version)"

  SRC="$(ls -d "$CACHE"/src/kubernetes-*/ 2>/dev/null | head -n1 || true)"
  if [[ -z "$SRC" ]]; then
    apt_update
    log "apt-get source kubernetes=$KUBE_SRC_VERSION (about 35 MB)"
    (cd "$CACHE/src" && apt-get "${APT_OPTS[@]}" source -qq --download-only "kubernetes=$KUBE_SRC_VERSION")
    # dpkg-source applies Debian's patches (security fixes included) on top of the upstream tree.
    (cd "$CACHE/src" && dpkg-source --no-check -x kubernetes_*.dsc >/dev/null)
    SRC="$(ls -d "$CACHE"/src/kubernetes-*/ | head -n1)"
  fi
  [[ -d "$SRC/vendor" ]] || { log "$SRC has no vendor/ tree: this source package cannot build offline"; exit 1; }

  # Kubernetes 1.20 vendors github.com/modern-go/reflect2 v1.0.1, whose map iteration breaks with Go >= 1.18
  # (the runtime's hiter grew): compiled with Debian's Go 1.19, kube-apiserver segfaults in json-iterator on
  # the first write of a custom resource (objectmeta.GetObjectMeta). v1.0.2 is the upstream fix; Debian's
  # golang-github-modern-go-reflect2-dev ships it, so its sources replace the vendored ones.
  R2="$SRC/vendor/github.com/modern-go/reflect2"
  if [[ ! -f "$R2/go_above_118.go" ]]; then
    log "replacing vendored reflect2 v1.0.1 with Debian's v1.0.2 (Go >= 1.18 map iteration fix)"
    extract_deb golang-github-modern-go-reflect2-dev "$CACHE/reflect2-root"
    rm -f "$R2"/*.go "$R2"/*.s
    cp "$CACHE"/reflect2-root/usr/share/gocode/src/github.com/modern-go/reflect2/*.{go,s} "$R2"/
  fi

  # Upstream's build (as debian/rules runs it): `make` first generates the code that the tarball does
  # not ship (OpenAPI definitions, deep-copy and conversion functions), then compiles. The version
  # stamps that /version reports come from a version file, since the tree is not a git checkout.
  minor="$(echo "$KUBE_GIT_VERSION" | cut -d. -f2)"
  cat >"$CACHE/version.env" <<EOF2
KUBE_GIT_VERSION='$KUBE_GIT_VERSION'
KUBE_GIT_MAJOR='1'
KUBE_GIT_MINOR='$minor'
KUBE_GIT_COMMIT='0000000000000000000000000000000000000000'
KUBE_GIT_TREE_STATE='archive'
EOF2
  log "compiling kube-apiserver from $SRC with make (code generation, then the build; ~10 min on 2 cores)"
  (cd "$SRC" && env HOME="$CACHE" KUBE_GIT_VERSION_FILE="$CACHE/version.env" KUBE_VERBOSE=1 \
    make WHAT=cmd/kube-apiserver)
  cp "$SRC/_output/local/bin/linux/amd64/kube-apiserver" "$BIN/kube-apiserver.tmp" 2>/dev/null \
    || cp "$SRC/_output/bin/kube-apiserver" "$BIN/kube-apiserver.tmp"
  mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
  touch "$REFLECT2_MARK"
  log "built in $(( $(date +%s) - start ))s: $("$BIN/kube-apiserver" --version)"
fi

printf 'kube-apiserver: %s\netcd: %s\n' "$BIN/kube-apiserver" "$BIN/etcd"
