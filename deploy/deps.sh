#!/usr/bin/env bash
# deploy/deps.sh — install exactly the Debian packages kvfleet needs that are missing.
# As root it runs apt-get; otherwise it prints the command to run. Safe to run twice.
set -euo pipefail
pkgs=(build-essential cmake pkg-config libzmq3-dev libczmq-dev libmsgpack-dev libcriterion-dev
      libjansson-dev libpcre2-dev libsqlite3-dev libicu-dev
      clang libclang-rt-14-dev)  # clang + libFuzzer runtime: the bounded fuzz tests
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: missing Debian packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "deps: run as root:  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
