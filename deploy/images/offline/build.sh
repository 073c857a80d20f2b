#!/usr/bin/env bash
# Builds the images the mesh needs from pinned Debian packages and PyPI, under names of their
# own, for a machine that reaches the package registries but no container registry:
#
#   deploy/images/offline/build.sh [--force]
#
#   mesh-offline/python    bookworm's python3.11 on a minbase root filesystem (the Dockerfile's base)
#   mesh-offline/uv        /uv and /uvx from PyPI's uv wheel, laid out like the official uv image
#   mesh-offline/postgres  \
#   mesh-offline/rabbitmq   > bookworm's servers behind the official images' interface, as far as
#   mesh-offline/redis     /  compose.yaml and deploy/k8s use it
#
# Versions come from pins.txt beside this script. A Debian image is a root filesystem that
# mmdebstrap makes from the pinned packages, `docker import`ed as <name>-rootfs:<inputs hash>
# and finished by the Dockerfile in its folder (user, entrypoint, metadata). Every image carries
# the hash of its inputs in the label mesh.offline.inputs, and one whose inputs have not changed
# is kept, so a second run takes seconds; --force rebuilds them all. Last, .dev/images.env names
# the images (NAME=value lines, read by make and by compose as an env file).
#
# Needs: mmdebstrap (run as root, or with user namespaces), python3 with pip, git, and a Docker
# engine. DOCKER picks the client: by default Debian's /usr/bin/docker, whose builds use BuildKit.
# Nothing is downloaded inside a build: packages come through mmdebstrap, the uv wheel through
# pip, both set up as on the host.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(git -C "$HERE" rev-parse --show-toplevel)"
PINS="$HERE/pins.txt"
STATE="$ROOT/.dev/images"  # git-ignored: build logs and the downloaded wheel
ENV_FILE="$ROOT/.dev/images.env"
DOCKER="${DOCKER:-/usr/bin/docker}"
PYTHON="${PYTHON:-python3}"  # runs pip download
export DOCKER_BUILDKIT=1

PREFIX=mesh-offline
SUITE=bookworm
INPUTS_LABEL=mesh.offline.inputs
UV_PLATFORM=musllinux_1_1_x86_64  # statically linked: runs on any x86_64 Linux
PATH_DEFAULT=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# bookworm's init-system-helpers otherwise pulls in usrmerge, and with it all of perl.
MERGED_USR_HOOKS=/usr/share/mmdebstrap/hooks/merged-usr

# Per image: the pinned package whose upstream version names the tag, the tag's suffix, the
# variable of .dev/images.env, and the OCI title and description.
declare -A TAG_PACKAGE=([python]=python3.11 [uv]=uv [postgres]=postgresql-15
    [rabbitmq]=rabbitmq-server [redis]=redis-server)
declare -A TAG_SUFFIX=([python]=-$SUITE [uv]="" [postgres]=-$SUITE [rabbitmq]=-$SUITE
    [redis]=-$SUITE)
declare -A ENV_NAME=([python]=PYTHON_IMAGE [uv]=UV_IMAGE [postgres]=POSTGRES_IMAGE
    [rabbitmq]=RABBITMQ_IMAGE [redis]=REDIS_IMAGE)
declare -A TITLE=([python]="mesh python" [uv]="mesh uv" [postgres]="mesh postgres"
    [rabbitmq]="mesh rabbitmq" [redis]="mesh redis")
declare -A DESCRIPTION=(
    [python]="Debian $SUITE python3.11 on a minbase root filesystem: the base of the mesh's images"
    [uv]="uv and uvx from PyPI's static uv wheel, laid out like the official uv image"
    [postgres]="Debian $SUITE PostgreSQL with the official postgres image's interface as the mesh uses it"
    [rabbitmq]="Debian $SUITE RabbitMQ with the management plugin and the official image's interface as the mesh uses it"
    [redis]="Debian $SUITE redis-server behaving like the official redis image"
)

DEBIAN_IMAGES=(python postgres rabbitmq redis)
FORCE=0
WORK=""

say() { echo "==> $*" >&2; }
die() {
    echo "build.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

parse_args() {
    while (($#)); do
        case "$1" in
            --force) FORCE=1 ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown argument $1 (see --help)" ;;
        esac
        shift
    done
}

require_tools() {
    local tool
    for tool in mmdebstrap git sha256sum flock "$PYTHON"; do
        command -v "$tool" >/dev/null || die "$tool is not installed"
    done
    [[ -x "$DOCKER" ]] || die "no Docker client at $DOCKER (set DOCKER)"
    "$DOCKER" info >/dev/null 2>&1 || die "the Docker engine does not answer $DOCKER"
}

# ---- pins -------------------------------------------------------------------------------------

# The pins.txt fields after IMAGE and SOURCE of one image's lines: "PACKAGE VERSION [SHA256]".
pins_of() {
    local image="$1" source="$2"
    awk -v image="$image" -v source="$source" \
        '!/^[[:space:]]*(#|$)/ && $1 == image && $2 == source { print $3, $4, $5 }' "$PINS"
}

pin_version() {
    local image="$1" package="$2" version
    version="$(pins_of "$image" debian; pins_of "$image" pypi)"
    version="$(awk -v p="$package" '$1 == p { print $2 }' <<<"$version")"
    [[ -n "$version" ]] || die "pins.txt has no version of $package for $image"
    echo "$version"
}

# The apt requests of a Debian image, its own pins and those of `all`: "pkg=version,...".
debian_includes() {
    { pins_of all debian; pins_of "$1" debian; } | awk '{ printf "%s%s=%s", sep, $1, $2; sep = "," }'
}

# 1:25.2.3+dfsg-1+deb12u4 -> 25.2.3: a version that a tag can hold and a reader recognises.
upstream_version() {
    local version="${1#*:}"
    [[ "$version" == *-* ]] && version="${version%-*}"
    echo "${version%%[+~]*}"
}

image_ref() {
    local name="$1" version
    version="$(pin_version "$name" "${TAG_PACKAGE[$name]}")"
    echo "$PREFIX/$name:$(upstream_version "$version")${TAG_SUFFIX[$name]}"
}

# ---- labels -----------------------------------------------------------------------------------

# The repository's address, without any credentials an https remote may carry; the project's
# name where there is no remote.
source_url() {
    local url
    url="$(git -C "$ROOT" remote get-url origin 2>/dev/null || true)"
    if [[ -z "$url" ]]; then
        echo "mesh"
    else
        sed -E 's#^([a-z+]+://)[^/@]*@#\1#' <<<"$url"
    fi
}

# "KEY=VALUE" lines: the OCI annotations of one image and the hash of its inputs. `created`,
# `revision` and `source` tell when, from which commit and from which clone the image was made;
# being outside the inputs' hash, they stay as they were while an image is kept (so two clones
# on one machine do not rebuild each other's images).
labels_of() {
    local name="$1" version="$2" inputs="$3"
    printf '%s\n' \
        "org.opencontainers.image.source=$(source_url)" \
        "org.opencontainers.image.revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
        "org.opencontainers.image.version=$version" \
        "org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        "org.opencontainers.image.title=${TITLE[$name]}" \
        "org.opencontainers.image.description=${DESCRIPTION[$name]}" \
        "$INPUTS_LABEL=$inputs"
}

# The labels of an image but those that tell where and when it was made: part of its inputs.
stable_labels() {
    labels_of "$@" | grep -Ev '^org\.opencontainers\.image\.(created|revision|source)=|^mesh\.offline\.'
}

sha256() { sha256sum | cut -d' ' -f1; }

# Whether REF exists and was made from inputs with this hash.
is_current() {
    local ref="$1" inputs="$2" found
    ((FORCE)) && return 1
    found="$("$DOCKER" image inspect --format "{{ index .Config.Labels \"$INPUTS_LABEL\" }}" \
        "$ref" 2>/dev/null || true)"
    [[ "$found" == "$inputs" ]]
}

# Every file of a build context, by content and mode: part of the inputs.
context_digest() {
    (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0r stat -c '%a %n' \
        && find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum)
}

# ---- Debian root filesystems ------------------------------------------------------------------

# The host's apt sources if they are for this suite (its mirror and proxy setup then apply),
# else nothing: mmdebstrap's default, which adds the -updates and -security suites itself.
debian_sources() {
    local file=/etc/apt/sources.list.d/debian.sources
    if [[ -n "${DEBIAN_SOURCES:-}" ]]; then
        echo "$DEBIAN_SOURCES"
    elif [[ -r "$file" ]] && grep -Eq "^Suites:.*\b$SUITE\b" "$file"; then
        echo "$file"
    fi
}

# mmdebstrap's options for one image, one per line; they are part of its inputs.
mmdebstrap_options() {
    local name="$1"
    # The hook's $1 is mmdebstrap's: the root filesystem, when the hook runs.
    # shellcheck disable=SC2016
    printf '%s\n' \
        --variant=minbase \
        "--include=$(debian_includes "$name")" \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/lintian/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --dpkgopt='path-exclude=/usr/share/i18n/*' \
        --customize-hook='rm -rf "$1"/var/log/apt/* "$1"/var/log/dpkg.log "$1"/var/cache/debconf/*-old' \
        "--hook-dir=$MERGED_USR_HOOKS"
}

rootfs_inputs() {
    local name="$1" hook="$HERE/$1/rootfs-hook.sh"
    echo "$SUITE"
    mmdebstrap_options "$name"
    if [[ -f "$hook" ]]; then
        cat "$hook"
    fi
}

# mmdebstrap's log says why it failed; a pin the mirror no longer has gets a clear answer.
explain_mmdebstrap_failure() {
    local what="$1" log="$2" package version images
    if grep -Eq "Version '[^']+' for '[^']+' was not found" "$log"; then
        while IFS=$'\t' read -r version package; do
            images="$(awk -v p="$package" '$2 == "debian" && $3 == p { print $1 }' "$PINS" | xargs)"
            cat >&2 <<EOF
build.sh: the Debian mirror no longer has $package $version, pinned for $images in
    $PINS
  Put the current version there, the "Candidate:" of
    apt-get update && apt-cache policy $package
EOF
        done < <(sed -nE "s/.*Version '([^']+)' for '([^']+)' was not found.*/\1\t\2/p" "$log")
        exit 1
    fi
    tail -n 30 "$log" >&2
    die "mmdebstrap failed for $what (full log: $log)"
}

# Whether the mirror still has every pinned version these images need, checked at once by apt
# in simulation (seconds), rather than one image at a time after minutes of building.
check_debian_pins() {
    local log="$STATE/logs/pins.log" name
    local -a includes=() sources
    for name; do
        includes+=("$(debian_includes "$name")")
    done
    ((${#includes[@]})) || return 0
    say "checking the Debian pins of: $*"
    mapfile -t sources < <(debian_sources)
    if ! (IFS=,; mmdebstrap --simulate --variant=minbase "--hook-dir=$MERGED_USR_HOOKS" \
        "--include=${includes[*]}" "$SUITE" /dev/null "${sources[@]}") >"$log" 2>&1; then
        explain_mmdebstrap_failure "the pin check" "$log"
    fi
}

# The image's root filesystem, made unless one from the same inputs exists; prints its ref.
ensure_rootfs() {
    local name="$1" inputs="$2" ref log="$STATE/logs/$1-rootfs.log"
    local version label
    local -a options changes sources
    ref="$PREFIX/$name-rootfs:${inputs:0:12}"
    if ! ((FORCE)) && "$DOCKER" image inspect "$ref" >/dev/null 2>&1; then
        echo "$ref"
        return
    fi
    say "$name: root filesystem from $(debian_includes "$name")"
    mapfile -t options < <(mmdebstrap_options "$name")
    if [[ -f "$HERE/$name/rootfs-hook.sh" ]]; then
        options+=("--customize-hook=$HERE/$name/rootfs-hook.sh")
    fi
    mapfile -t sources < <(debian_sources)
    version="$(pin_version "$name" "${TAG_PACKAGE[$name]}")"
    changes=(--change "ENV PATH=$PATH_DEFAULT")
    while IFS= read -r label; do
        changes+=(--change "LABEL ${label%%=*}=\"${label#*=}\"")
    done < <(labels_of "$name" "$version" "$inputs")
    # Straight from mmdebstrap's tar stream into the engine: no tarball on disk.
    if ! mmdebstrap "${options[@]}" "$SUITE" - "${sources[@]}" 2>"$log" \
        | "$DOCKER" import "${changes[@]}" - "$ref" >/dev/null; then
        explain_mmdebstrap_failure "$name" "$log"
    fi
    echo "$ref"
}

# Root filesystems that no longer match their pins: untagged (the layers stay as long as an
# image uses them).
prune_rootfs() {
    local name="$1" keep="$2" ref
    while IFS= read -r ref; do
        [[ "$ref" == "$keep" ]] || "$DOCKER" rmi "$ref" >/dev/null
    done < <("$DOCKER" images --format '{{.Repository}}:{{.Tag}}' "$PREFIX/$name-rootfs")
}

# ---- images -----------------------------------------------------------------------------------

# docker build with the OCI labels; the build's output goes to a log, shown if it fails.
docker_build() {
    local name="$1" ref="$2" version="$3" inputs="$4"
    shift 4
    local log="$STATE/logs/$name.log" label previous
    local -a labels=()
    while IFS= read -r label; do
        labels+=(--label "$label")
    done < <(labels_of "$name" "$version" "$inputs")
    previous="$("$DOCKER" image inspect --format '{{.Id}}' "$ref" 2>/dev/null || true)"
    if ! "$DOCKER" build --progress=plain "${labels[@]}" --tag "$ref" "$@" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "building $ref failed (full log: $log)"
    fi
    # The image this one replaces, unless a container or another tag still uses it.
    if [[ -n "$previous" && "$previous" != "$("$DOCKER" image inspect --format '{{.Id}}' "$ref")" ]]; then
        "$DOCKER" rmi "$previous" >/dev/null 2>&1 || true
    fi
}

# Build args of a Debian image's Dockerfile besides ROOTFS.
build_args() {
    case "$1" in
        postgres) echo "--build-arg=PG_MAJOR=${TAG_PACKAGE[postgres]#postgresql-}" ;;
    esac
}

rootfs_ref() {
    echo "$PREFIX/$1-rootfs:$(rootfs_inputs "$1" | sha256 | cut -c1-12)"
}

# The hash of everything a Debian image is made from: its root filesystem's inputs, its build
# context and build arguments, and its stable labels.
debian_image_inputs() {
    local name="$1" version
    version="$(pin_version "$name" "${TAG_PACKAGE[$name]}")"
    {
        rootfs_inputs "$name" | sha256
        context_digest "$HERE/$name"
        build_args "$name"
        stable_labels "$name" "$version" ""
    } | sha256
}

# Whether this run makes the image's root filesystem (its pins are then checked first).
needs_rootfs() {
    local name="$1"
    ! is_current "$(image_ref "$name")" "$(debian_image_inputs "$name")" \
        && { ((FORCE)) || ! "$DOCKER" image inspect "$(rootfs_ref "$name")" >/dev/null 2>&1; }
}

build_debian_image() {
    local name="$1" ref version inputs rootfs
    local -a args
    ref="$(image_ref "$name")"
    version="$(pin_version "$name" "${TAG_PACKAGE[$name]}")"
    mapfile -t args < <(build_args "$name")
    inputs="$(debian_image_inputs "$name")"
    if is_current "$ref" "$inputs"; then
        say "$ref: up to date"
        return
    fi
    rootfs="$(ensure_rootfs "$name" "$(rootfs_inputs "$name" | sha256)")"
    say "$ref: building"
    docker_build "$name" "$ref" "$version" "$inputs" \
        --build-arg "ROOTFS=$rootfs" "${args[@]}" "$HERE/$name"
    prune_rootfs "$name" "$rootfs"
}

# The pinned uv wheel, downloaded once into .dev/images/ and checked against its sha256.
uv_wheel() {
    local version="$1" sha="$2" dir="$STATE/wheels" wheel log="$STATE/logs/uv-wheel.log"
    wheel="$dir/uv-$version-py3-none-$UV_PLATFORM.whl"
    if [[ ! -f "$wheel" ]] || [[ "$(sha256 <"$wheel")" != "$sha" ]]; then
        say "uv: downloading uv==$version ($UV_PLATFORM) from PyPI"
        rm -f "$wheel"
        printf 'uv==%s --hash=sha256:%s\n' "$version" "$sha" >"$WORK/uv-requirements.txt"
        # --require-hashes: pip itself refuses a file with another digest.
        if ! "$PYTHON" -m pip download --no-deps --only-binary=:all: --platform "$UV_PLATFORM" \
            --require-hashes -r "$WORK/uv-requirements.txt" -d "$dir" >"$log" 2>&1; then
            tail -n 20 "$log" >&2
            die "pip could not download uv==$version (full log: $log)"
        fi
    fi
    [[ -f "$wheel" ]] || die "pip did not download $wheel"
    [[ "$(sha256 <"$wheel")" == "$sha" ]] || die "$wheel does not have the sha256 pinned in $PINS"
    echo "$wheel"
}

build_uv_image() {
    local ref version sha inputs wheel context="$WORK/uv"
    ref="$(image_ref uv)"
    read -r _ version sha < <(pins_of uv pypi) || die "pins.txt has no uv line"
    [[ -n "$sha" ]] || die "pins.txt: the uv line needs the wheel's sha256"
    inputs="$({ echo "$version $sha $UV_PLATFORM"; context_digest "$HERE/uv"
        stable_labels uv "$version" ""; } | sha256)"
    if is_current "$ref" "$inputs"; then
        say "$ref: up to date"
        return
    fi
    wheel="$(uv_wheel "$version" "$sha")"
    mkdir -p "$context"
    "$PYTHON" - "$wheel" "$context" <<'PY'
import pathlib, sys, zipfile

wheel, context = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as archive:
    for name in ("uv", "uvx"):
        member = next(m for m in archive.namelist() if m.endswith(f".data/scripts/{name}"))
        (context / name).write_bytes(archive.read(member))
        (context / name).chmod(0o755)
PY
    say "$ref: building"
    docker_build uv "$ref" "$version" "$inputs" --file "$HERE/uv/Dockerfile" "$context"
}

# ---- the env file -----------------------------------------------------------------------------

write_env_file() {
    local name tmp="$ENV_FILE.tmp"
    {
        echo "# Written by deploy/images/offline/build.sh: images made from pinned packages."
        for name in python uv postgres rabbitmq redis; do
            echo "${ENV_NAME[$name]}=$(image_ref "$name")"
        done
    } >"$tmp"
    mv "$tmp" "$ENV_FILE"
    say "wrote ${ENV_FILE#"$ROOT"/}"
}

main() {
    parse_args "$@"
    require_tools
    [[ -r "$PINS" ]] || die "no pin file at $PINS"
    mkdir -p "$STATE/logs"
    # One run at a time (make targets and test sessions may start it together): the second
    # waits, then finds the images made.
    exec 9>"$STATE/build.lock"
    if ! flock --nonblock 9; then
        say "waiting for another build.sh run to finish"
        flock 9
    fi
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
    local name
    local -a pending=()
    for name in "${DEBIAN_IMAGES[@]}"; do
        if needs_rootfs "$name"; then
            pending+=("$name")
        fi
    done
    check_debian_pins "${pending[@]}"
    # One after the other: the machine has two cores, and each build uses them.
    build_debian_image python
    build_uv_image
    build_debian_image postgres
    build_debian_image rabbitmq
    build_debian_image redis
    write_env_file
    "$DOCKER" images --filter "reference=$PREFIX/*" \
        --format 'table {{.Repository}}:{{.Tag}}\t{{.Size}}' | grep -v -- '-rootfs:' >&2
}

main "$@"
