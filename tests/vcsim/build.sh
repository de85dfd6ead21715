#!/usr/bin/env bash
# Build the vcsim test bed offline from Debian's golang-go and
# golang-github-vmware-govmomi-dev (GOPATH mode), installing them when
# missing. The binary is cached under ~/.cache/vmdk-snap, keyed by a hash of
# the Go sources, so it is rebuilt only when they change. Prints its path.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
gopath=/usr/share/gocode

if ! command -v go >/dev/null 2>&1 || [ ! -d "$gopath/src/github.com/vmware/govmomi/simulator" ]; then
    echo "installing golang-go and golang-github-vmware-govmomi-dev" >&2
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then sudo_cmd=sudo; fi
    $sudo_cmd apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq golang-go golang-github-vmware-govmomi-dev >&2
fi

# One change to govmomi's own code, made at build time and never copied into
# this repository: its WaitForUpdatesEx looks for updates every 250 ms, a
# literal. The build replaces that literal with a call of our
# overlay/update_interval.go (added to govmomi's package), whose interval the
# control API sets (/_ctl/timing "update_ms"; the default stays 250 ms), through
# `go build -overlay` on a copy in the cache. Fails loudly if the line moved.
# (`go vet` reads files itself and does not see the added file.)
simdir="$gopath/src/github.com/vmware/govmomi/simulator"
collector="$simdir/property_collector.go"
tick_from='time.NewTicker(250 * time.Millisecond)'
tick_to='time.NewTicker(UpdateInterval())'

# make_overlay DIR: the overlay (the changed copy and our added file) in DIR.
make_overlay() {
    if [ "$(grep -cF "$tick_from" "$collector")" != 1 ]; then
        echo "build.sh: '$tick_from' is not once in $collector: update the overlay" >&2
        exit 1
    fi
    sed "s/$(printf '%s' "$tick_from" | sed 's/[.*]/\\&/g')/$tick_to/" "$collector" >"$1/property_collector.go"
    printf '{"Replace": {"%s": "%s", "%s": "%s"}}\n' \
        "$collector" "$1/property_collector.go" \
        "$simdir/zz_vmdk_snap_update_interval.go" "$here/overlay/update_interval.go" \
        >"$1/overlay.json"
}

cache="${XDG_CACHE_HOME:-$HOME/.cache}/vmdk-snap"
hash="$(cat "$here"/*.go "$here"/overlay/*.go "$here/build.sh" | sha256sum | cut -c1-16)-$(go version | sha256sum | cut -c1-8)"
bin="$cache/vcsim-$hash"
if [ ! -x "$bin" ]; then
    echo "building the simulator ($hash)" >&2
    mkdir -p "$cache"
    overlay="$(mktemp -d "$cache/overlay.XXXXXX")"
    trap 'rm -rf "$overlay"' EXIT
    make_overlay "$overlay"
    (cd "$here" && GO111MODULE=off GOPATH="$gopath" GOFLAGS= go build -overlay "$overlay/overlay.json" -o "$bin.tmp" .)
    mv "$bin.tmp" "$bin"
fi
echo "$bin"
