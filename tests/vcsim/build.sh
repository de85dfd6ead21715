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

hash="$(cat "$here"/*.go | sha256sum | cut -c1-16)-$(go version | sha256sum | cut -c1-8)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/vmdk-snap"
bin="$cache/vcsim-$hash"
if [ ! -x "$bin" ]; then
    mkdir -p "$cache"
    echo "building the simulator ($hash)" >&2
    (cd "$here" && GO111MODULE=off GOPATH="$gopath" GOFLAGS= go build -o "$bin.tmp" .)
    mv "$bin.tmp" "$bin"
fi
echo "$bin"
