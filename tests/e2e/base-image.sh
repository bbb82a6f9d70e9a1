#!/usr/bin/env bash
# Build the local Debian bookworm base image the end-to-end tier builds both images on
# (no registry is reachable here, so no official python image): debootstrap --variant=minbase
# with python3, python3-venv and ca-certificates, `docker import`ed as ops-demo-base:bookworm
# plus ops-demo-base:bookworm-<hash of this script>. When that hash tag exists, nothing is done.
#
# Usage: tests/e2e/base-image.sh            (as root; the engine must be up: scripts/docker-engine)
# Env:   DEBIAN_MIRROR   override the mirror (default: the one apt uses, from /etc/apt/sources.list*)
# Prints the image name to use as BASE_IMAGE on its last line.
set -euo pipefail

repo_name="ops-demo-base"
suite="bookworm"
packages="python3,python3-venv,ca-certificates"

say() { echo "base-image: $*" >&2; }
die() { echo "base-image: error: $*" >&2; exit 1; }

script_hash="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)"
image="${repo_name}:${suite}"
hash_tag="${repo_name}:${suite}-${script_hash}"

if docker image inspect "$hash_tag" >/dev/null 2>&1; then
  docker tag "$hash_tag" "$image"
  say "cached: $hash_tag exists; tagged $image (no work)"
  echo "$image"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "debootstrap needs root (running as uid $(id -u))"
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] \
  || die "debootstrap is not installed (scripts/docker-engine installs it)"
export PATH="$PATH:/usr/sbin:/sbin"

find_mirror() {
  # First URI apt uses for Debian's main archive (not -security), deb822 or one-line format.
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      /^[[:space:]]*$/ { if (uris != "" && suites ~ ("(^| )" suite "( |$)")) { print uris; exit } uris=""; suites=""; next }
      /^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); split($0, a, " "); uris=a[1] }
      /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites=$0 }
      END { if (uris != "" && suites ~ ("(^| )" suite "( |$)")) print uris }
    ' "$f" | head -n1
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i+1) == suite) print $i }' "$f"
  done
}

mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror="$(find_mirror | grep -v -- '-security' | head -n1 || true)"
fi
[ -n "$mirror" ] || die "no Debian mirror for suite '$suite' found in /etc/apt/sources.list*; set DEBIAN_MIRROR=http://.../debian"
case "$mirror" in
  http://*|https://*|file:/*) ;;
  *) die "DEBIAN_MIRROR='$mirror' is not allowed: an http(s):// or file:/ URL of a Debian archive" ;;
esac

workdir="$(mktemp -d /var/tmp/ops-demo-base.XXXXXX)"
cleanup() {
  # debootstrap mounts these inside the target; a failed run can leave them mounted
  local m
  for m in dev/pts dev sys proc; do
    mountpoint -q "$workdir/rootfs/$m" 2>/dev/null && umount -l "$workdir/rootfs/$m" || true
  done
  rm -rf --one-file-system "$workdir"
}
trap cleanup EXIT

start=$(date +%s)
say "debootstrap --variant=minbase --include=$packages $suite from $mirror (into $workdir)"
if ! debootstrap --variant=minbase --include="$packages" "$suite" "$workdir/rootfs" "$mirror" \
    >"$workdir/debootstrap.log" 2>&1; then
  tail -n 30 "$workdir/debootstrap.log" >&2
  [ -f "$workdir/rootfs/debootstrap/debootstrap.log" ] && tail -n 30 "$workdir/rootfs/debootstrap/debootstrap.log" >&2
  die "debootstrap failed (log above)"
fi
rootfs="$workdir/rootfs"
# Slim it: package caches and lists, docs, man pages, locales other than C.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
       "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
# apt inside the image uses the same mirror
echo "deb $mirror $suite main" > "$rootfs/etc/apt/sources.list"
say "debootstrap done in $(( $(date +%s) - start ))s; importing"

tar -C "$rootfs" --numeric-owner --one-file-system -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --message "debootstrap $suite minbase + $packages ($mirror)" \
  - "$hash_tag" >/dev/null
docker tag "$hash_tag" "$image"
# Images from earlier versions of this script are stale: untag them (layers go with the last tag).
for old in $(docker image ls --format '{{.Repository}}:{{.Tag}}' "$repo_name" | grep -E "^${repo_name}:${suite}-[0-9a-f]{12}\$" | grep -vx "$hash_tag" || true); do
  say "removing stale $old"
  docker rmi "$old" >/dev/null || true
done
# Sanity: the things the Dockerfiles rely on.
docker run --rm --network none "$image" python3 -c 'import venv, ensurepip, ssl, sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || die "the imported image lacks python3.11 with venv/ensurepip/ssl"
size="$(docker image inspect --format '{{.Size}}' "$image")"
say "built $image = $hash_tag ($(( size / 1024 / 1024 )) MiB) in $(( $(date +%s) - start ))s"
echo "$image"
