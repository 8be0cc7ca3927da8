#!/usr/bin/env bash
# bench/gpu-pack-small.sh BUILD TARBALL BIN... — a gpu-pack of only the named binaries, small
# enough for the device tool's 64 MiB carry: ../shared/tools/gpu-pack, then keep BIN..., re-bundle
# their libraries, strip debug info, drop the tokenizer-only fixtures, and tar.xz it.
#   bench/gpu-pack-small.sh build-gpu .gpu-tar/pack.tar.xz test_kernels kvf-bench
#   there: tar xJf .gpu-tar/pack.tar.xz && source .gpu-final/env.sh && ...
set -euo pipefail
build=$1 tarball=$2; shift 2
here=$(cd "$(dirname "$0")/.." && pwd)
tools="$here/../shared/tools"
tmp="$here/.gpu-full" dest="$here/.gpu-final"
"$tools/gpu-pack" "$build" "$tmp" >/dev/null
rm -rf "$dest"; mkdir -p "$dest/bin" "$dest/lib"
for b in "$@"; do cp "$tmp/bin/$b" "$dest/bin/"; done
cp "$tmp/env.sh" "$dest/"
cp -r "$tmp/fixtures" "$dest/fixtures"; rm -rf "$dest/fixtures/tok-llama2"
cp -P "$tmp"/lib/libkvf*.so* "$dest/lib/" 2>/dev/null || true
"$tools/bundle-libs" "$dest/lib" "$dest"/bin/* >/dev/null
strip --strip-debug "$dest"/bin/* "$dest"/lib/* 2>/dev/null || true
rm -rf "$tmp"
mkdir -p "$(dirname "$tarball")"
(cd "$here" && tar cJf "$tarball" .gpu-final)
du -sh "$tarball"
