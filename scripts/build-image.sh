#!/usr/bin/env bash
# Builds the dhcpmanager container image without a Docker engine (and without pulling any base
# image from a registry) into an image archive: `docker load`, `podman load` and
# `ctr -n k8s.io images import` all take it.
#
#   scripts/build-image.sh [--debug] [--bin-dir DIR] [--tag REF] [--output FILE] [--format docker|oci]
#   scripts/build-image.sh --pause [--tag REF] [--output FILE]
#
# 1. The base: a bookworm root filesystem from Debian's packages (mmdebstrap --variant=minbase),
#    committed as a local image; its tarball is cached under $CACHE keyed by its recipe, so a
#    rerun skips it.
# 2. The binaries, built outside the image: `cargo build --release -p dhcpmanager-operator
#    -p dhcpmanager-apiserver` (--debug: the debug build the test suite already made, stripped
#    of debug info; --bin-dir: binaries you built yourself).
# 3. deploy/Dockerfile's `prebuilt` stage on that base (buildah bud --pull=never): the same
#    `runtime` stage that `docker build` uses (user 65532, directories, labels, entrypoint).
#
# --pause builds instead the pod sandbox image (deploy/pause/pause.c, static) that the test
# node's containerd uses as its sandbox_image.
#
# Defaults: --tag localhost/dhcpmanager:dev, --output target/image/<name>-<tag>.tar,
# --format docker (docker-archive; oci = OCI image layout archive, named by its tag only).
# Needs root (buildah with the vfs driver and chroot isolation), mmdebstrap, buildah, gcc.
# Environment: DHCPMANAGER_IMAGE_CACHE (default $HOME/.cache/dhcpmanager/image), DEBIAN_MIRROR.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CACHE=${DHCPMANAGER_IMAGE_CACHE:-$HOME/.cache/dhcpmanager/image}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# What the base holds beyond minbase. The Dockerfile's runtime stage installs ca-certificates
# itself as well (a no-op here, but the same recipe as for `docker build`).
BASE_PACKAGES=(ca-certificates)
# Like the official Debian images: no docs, man pages or locales, no apt caches in the layer.
BASE_DPKG_OPTS=(
  'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright'
  'path-exclude=/usr/share/locale/*' 'path-exclude=/usr/share/info/*' 'path-exclude=/usr/share/lintian/*'
)

log() { printf '[build-image] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

profile=release bin_dir='' tag='' output='' format=docker pause=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --debug) profile=debug ;;
    --bin-dir) bin_dir=${2:?}; shift ;;
    --tag) tag=${2:?}; shift ;;
    --output) output=${2:?}; shift ;;
    --format) format=${2:?}; shift ;;
    --pause) pause=1 ;;
    -h | --help) usage ;;
    *) die "unknown argument '$1'" ;;
  esac
  shift
done
[[ $format == docker || $format == oci ]] || die "--format is docker or oci, not '$format'"
[[ $(id -u) == 0 ]] || die "run as root (buildah's vfs storage and chroot isolation)"
for tool in buildah mmdebstrap gcc; do
  command -v "$tool" >/dev/null || die "$tool is missing: run scripts/install-deps.sh"
done

# One storage of our own (vfs: no overlay mounts needed, works inside containers too), so the
# machine's default containers storage is never touched.
STORAGE=$CACHE/storage
BUILDAH=(buildah --root "$STORAGE/root" --runroot "$STORAGE/run" --storage-driver vfs)
mkdir -p "$CACHE" "$STORAGE"
# buildah would otherwise create /etc/cni/net.d (its CNI lock) even with --network host.
printf '[network]\nnetwork_config_dir = "%s"\n' "$STORAGE/cni" >"$STORAGE/containers.conf"
export CONTAINERS_CONF=$STORAGE/containers.conf
printf '[storage]\ndriver = "vfs"\ngraphroot = "%s"\nrunroot = "%s"\n' "$STORAGE/root" "$STORAGE/run" >"$STORAGE/storage.conf"
export CONTAINERS_STORAGE_CONF=$STORAGE/storage.conf
# Two builds at once would share that storage: one at a time.
exec 8>"$CACHE/.lock"
flock 8

started=$(date +%s)
timed() { log "$1 done in $(($(date +%s) - started)) s"; }

archive() { # IMAGE OUTPUT
  local dest
  rm -f "$2"
  mkdir -p "$(dirname "$2")"
  if [[ $format == docker ]]; then dest="docker-archive:$2:$1"; else dest="oci-archive:$2:${1##*:}"; fi
  "${BUILDAH[@]}" push --quiet "$1" "$dest" >/dev/null
  log "wrote $2 ($(du -h "$2" | cut -f1), $format archive of $1)"
}

if [[ $pause == 1 ]]; then
  tag=${tag:-localhost/dhcpmanager-pause:1}
  output=${output:-$ROOT/target/image/pause.tar}
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  gcc -static -Os -s -o "$work/pause" deploy/pause/pause.c
  ctr=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" copy --quiet "$ctr" "$work/pause" /pause >/dev/null
  "${BUILDAH[@]}" config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
  "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$tag" >/dev/null
  archive "$tag" "$output"
  "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
  timed "pause image"
  exit 0
fi

# --- 1. the base ---------------------------------------------------------------------------------
recipe="$SUITE minbase merged-usr-hook ${BASE_PACKAGES[*]} ${BASE_DPKG_OPTS[*]} $MIRROR $(mmdebstrap --version)"
key=$(printf '%s' "$recipe" | sha256sum | cut -c1-16)
base_tar=$CACHE/base-$SUITE-$key.tar
base_image=localhost/dhcpmanager-base:$SUITE-$key
if [[ ! -s $base_tar ]]; then
  log "making the $SUITE base from Debian packages (mmdebstrap, cached as $base_tar)"
  dpkg_args=()
  for opt in "${BASE_DPKG_OPTS[@]}"; do dpkg_args+=(--dpkgopt="$opt"); done
  # The official images' apt settings (docker-clean): apt in a later layer (the Dockerfile's
  # apt-get) leaves no package cache behind either.
  # merged-usr hook: /usr merged by symlinks as debootstrap does, instead of the usrmerge
  # package, which drags perl (~45 MB) into the image.
  mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include="$(IFS=,; echo "${BASE_PACKAGES[*]}")" "${dpkg_args[@]}" \
    --customize-hook='printf "%s\n" "DPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true\"; };" "APT::Update::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true\"; };" "Dir::Cache::pkgcache \"\";" "Dir::Cache::srcpkgcache \"\";" >"$1/etc/apt/apt.conf.d/docker-clean"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/debconf/*-old "$1"/var/log/*' \
    "$SUITE" "$base_tar.part" "$MIRROR" >"$CACHE/mmdebstrap.log" 2>&1 ||
    { tail -30 "$CACHE/mmdebstrap.log" >&2; rm -f "$base_tar.part"; die "mmdebstrap failed (log: $CACHE/mmdebstrap.log)"; }
  mv "$base_tar.part" "$base_tar"
  timed "base tarball"
fi
if ! "${BUILDAH[@]}" inspect --type image "$base_image" >/dev/null 2>&1; then
  log "committing $base_tar as $base_image"
  ctr=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" add --quiet "$ctr" "$base_tar" / >/dev/null
  "${BUILDAH[@]}" config --cmd '["bash"]' --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$base_image" >/dev/null
  timed "base image"
fi

# --- 2. the binaries -----------------------------------------------------------------------------
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
if [[ -z $bin_dir ]]; then
  target=${CARGO_TARGET_DIR:-$ROOT/target}
  if [[ $profile == release ]]; then
    log "cargo build --release (operator and apiserver)"
    cargo build --release --locked -p dhcpmanager-operator -p dhcpmanager-apiserver
    bin_dir=$target/release
  else
    bin_dir=$target/debug
    for b in dhcpmanager-operator dhcpmanager-apiserver; do
      [[ -x $bin_dir/$b ]] || die "$bin_dir/$b is missing: cargo build -p ${b#dhcpmanager-} first"
    done
  fi
  timed "binaries"
fi
for b in dhcpmanager-operator dhcpmanager-apiserver; do
  [[ -x $bin_dir/$b ]] || die "$bin_dir/$b is missing"
  # Debug info stays out of the image (the debug build's line tables are most of its size).
  strip --strip-debug -o "$context/$b" "$bin_dir/$b"
  chmod 0755 "$context/$b"
done

# --- 3. the Dockerfile's runtime stage -----------------------------------------------------------
tag=${tag:-localhost/dhcpmanager:dev}
name=${tag##*/}
output=${output:-$ROOT/target/image/${name%%:*}-${name##*:}.tar}
# Every test binary that runs the image asks for it: skip the build when nothing it is made of
# changed (binaries, Dockerfile, base, name, format) and the archive is still there.
inputs=$( (cd "$context" && sha256sum dhcpmanager-operator dhcpmanager-apiserver)
  sha256sum "$ROOT/deploy/Dockerfile" | cut -d' ' -f1
  echo "$base_image $tag $format")
if [[ -s $output && -f $output.inputs && $(cat "$output.inputs") == "$inputs" ]]; then
  log "$output is up to date"
  exit 0
fi
rm -f "$output.inputs"
log "buildah bud --target prebuilt (deploy/Dockerfile) -> $tag"
# --layers: the runtime stage (apt-get, useradd) is cached in our storage until the base or the
# Dockerfile changes; only the COPY of the binaries is redone.
"${BUILDAH[@]}" bud --quiet --layers --pull=never --isolation chroot --network host \
  --build-arg RUNTIME_BASE="$base_image" --target prebuilt \
  -f "$ROOT/deploy/Dockerfile" -t "$tag" "$context" >/dev/null
archive "$tag" "$output"
echo "$inputs" >"$output.inputs"
# Earlier builds' images lose their tag to this one: drop them (and their layers) from the cache.
"${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
timed "image"
