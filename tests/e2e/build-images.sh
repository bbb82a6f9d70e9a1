#!/usr/bin/env bash
# Build the project's images on the local Docker engine (legacy builder) from a local base image.
#
# Usage: tests/e2e/build-images.sh [--base IMAGE] [--timings FILE] NAME=TAG[,TAG...] ...
#        tests/e2e/build-images.sh [--base IMAGE] --wheels-only NAME ...
#   NAME     an image directory under images/ (training, serving) holding a Dockerfile
#   TAG      image name(s) to tag the build with, e.g. ops-demo:training-3f2a1c
#   --base   BASE_IMAGE build arg (default ops-demo-base:bookworm, made by tests/e2e/base-image.sh)
#   --timings FILE  append "NAME<TAB>first TAG<TAB>seconds" per image
#   --wheels-only   only decide where pip installs from and fill the wheelhouses when needed;
#                   prints "PIP_SOURCE=index|wheelhouse" (pass it back in the environment of the
#                   build call). Do this before rendering the stack: the image tags hash the
#                   build context, wheels/ included.
# Env:   PIP_SOURCE=auto|index|wheelhouse (default auto). auto probes whether a container of the
#        base image reaches PyPI; when it does not (for example a TLS-intercepting egress whose CA
#        the image does not trust), the requirements are downloaded on the host into
#        images/NAME/wheels/ (cp311 manylinux x86_64 wheels only) and installed with PIP_NO_INDEX=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"

say() { echo "build-images: $*" >&2; }
die() { echo "build-images: error: $*" >&2; exit 1; }

base="ops-demo-base:bookworm"
timings=""
wheels_only=0
specs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --base) [ $# -ge 2 ] || die "--base needs a value"; base="$2"; shift 2 ;;
    --timings) [ $# -ge 2 ] || die "--timings needs a value"; timings="$2"; shift 2 ;;
    --wheels-only) wheels_only=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) die "unknown option '$1' (allowed: --base IMAGE, --timings FILE, --wheels-only)" ;;
    *=*) specs+=("$1"); shift ;;
    *) [ "$wheels_only" = 1 ] || die "argument '$1' is not allowed: expected NAME=TAG[,TAG...] with NAME a directory under images/"
       specs+=("$1=-"); shift ;;
  esac
done
[ "${#specs[@]}" -gt 0 ] || die "nothing to build: give NAME=TAG[,TAG...] (e.g. training=ops-demo:training-dev)"

pip_source="${PIP_SOURCE:-auto}"
case "$pip_source" in auto|index|wheelhouse) ;; *) die "PIP_SOURCE='$pip_source' is not allowed: auto, index or wheelhouse" ;; esac

# Validate everything before building anything.
ref_re='^[a-z0-9]([a-z0-9._/-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9._-]+)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$'
for spec in "${specs[@]}"; do
  name="${spec%%=*}"; tags="${spec#*=}"
  [ -n "$name" ] && [ -f "images/$name/Dockerfile" ] \
    || die "image '$name' (in '$spec') is not allowed: no images/$name/Dockerfile; allowed: $(cd images && ls -d */ 2>/dev/null | tr -d / | tr '\n' ' ')"
  [ -f "images/$name/requirements.txt" ] || die "images/$name/requirements.txt is missing"
  [ -n "$tags" ] || die "no tag given for image '$name' (in '$spec')"
  IFS=, read -r -a tag_list <<<"$tags"
  [ "$wheels_only" = 1 ] && continue
  for t in "${tag_list[@]}"; do
    [[ "$t" =~ $ref_re ]] || die "tag '$t' for image '$name' is not a valid image reference (lowercase name[:tag])"
  done
done
docker image inspect "$base" >/dev/null 2>&1 || die "base image '$base' does not exist; build it with tests/e2e/base-image.sh"

export DOCKER_BUILDKIT=0   # the engine here is 20.10 without buildx: the legacy builder

workdir="$(mktemp -d /var/tmp/ops-demo-build.XXXXXX)"
trap 'rm -rf "$workdir"' EXIT

if [ "$pip_source" = auto ]; then
  # Does pip inside a container of the base reach the index? (reads one index page, downloads nothing)
  probe_pkg="$(grep -m1 -oE '^[A-Za-z0-9_.-]+==' "images/${specs[0]%%=*}/requirements.txt" | tr -d =)"
  say "probing PyPI from a container of $base (pip index versions $probe_pkg)"
  if docker run --rm "$base" sh -c "python3 -m venv /tmp/v && timeout 60 /tmp/v/bin/pip index versions --retries 0 --timeout 15 '$probe_pkg'" \
      >"$workdir/probe.log" 2>&1; then
    pip_source=index
    say "PyPI is reachable from build containers: installing from the index"
  else
    pip_source=wheelhouse
    say "PyPI is not reachable from build containers ($(grep -m1 -oE 'CERTIFICATE_VERIFY_FAILED|Temporary failure in name resolution|Network is unreachable|timed out|No matching distribution' "$workdir/probe.log" || tail -n1 "$workdir/probe.log")): using a host-side wheelhouse"
  fi
fi

host_pip() {
  # the host's pip when it has one (pip download --platform needs no venv); else a throwaway venv
  if python3 -m pip --version >/dev/null 2>&1; then
    python3 -m pip --disable-pip-version-check "$@"
    return
  fi
  if [ ! -x "$workdir/pipvenv/bin/pip" ]; then
    python3 -m venv "$workdir/pipvenv" || die "python3 -m venv failed on the host (apt-get install python3-venv)"
  fi
  "$workdir/pipvenv/bin/pip" --disable-pip-version-check "$@"
}

platforms=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux2010_x86_64)
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done   # bookworm: glibc 2.36

build_args=(--build-arg "BASE_IMAGE=$base")
[ "$pip_source" = wheelhouse ] && build_args+=(--build-arg PIP_NO_INDEX=1)

for spec in "${specs[@]}"; do
  name="${spec%%=*}"; IFS=, read -r -a tag_list <<<"${spec#*=}"
  if [ "$pip_source" = wheelhouse ]; then
    start=$(date +%s)
    mkdir -p "images/$name/wheels"
    # Offline first: when the wheelhouse already resolves every requirement, download nothing
    # (and change nothing in the build context).
    if host_pip install -q --dry-run --ignore-installed --no-index --find-links "images/$name/wheels" \
        --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 "${platforms[@]}" \
        --target "$workdir/dry-$name" -r "images/$name/requirements.txt" >/dev/null 2>&1; then
      say "wheelhouse images/$name/wheels/ already complete"
    else
      say "downloading wheels for images/$name/requirements.txt into images/$name/wheels/ (cp311, manylinux x86_64)"
      if ! host_pip download -q --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
          "${platforms[@]}" -d "images/$name/wheels" -r "images/$name/requirements.txt" >"$workdir/pip-$name.log" 2>&1; then
        tail -n 20 "$workdir/pip-$name.log" >&2
        die "pip download of images/$name/requirements.txt failed (above)"
      fi
      say "wheelhouse for $name ready in $(( $(date +%s) - start ))s ($(ls "images/$name/wheels" | grep -c '\.whl$') wheels)"
    fi
  fi
  [ "$wheels_only" = 1 ] && continue
  tag_args=()
  for t in "${tag_list[@]}"; do tag_args+=(-t "$t"); done
  say "docker build images/$name -> ${tag_list[*]} (BASE_IMAGE=$base, pip from $pip_source)"
  start=$(date +%s)
  if ! docker build -q "${build_args[@]}" "${tag_args[@]}" "images/$name" >"$workdir/build-$name.log" 2>&1; then
    # -q hides the steps; build again verbosely (cached layers make it quick) to show the failing one
    docker build "${build_args[@]}" "${tag_args[@]}" "images/$name" 2>&1 | tail -n 40 >&2 || true
    die "docker build of images/$name failed (above)"
  fi
  secs=$(( $(date +%s) - start ))
  size="$(docker image inspect --format '{{.Size}}' "${tag_list[0]}")"
  say "built ${tag_list[*]} in ${secs}s ($(( size / 1024 / 1024 )) MiB)"
  [ -z "$timings" ] || printf '%s\t%s\t%s\n' "$name" "${tag_list[0]}" "$secs" >>"$timings"
done
[ "$wheels_only" = 1 ] && echo "PIP_SOURCE=$pip_source"
exit 0
