#!/usr/bin/env bash
# Builds the Debian packages `ferry` (the agent and CLI, without the demo) and `ferry-bridge` for
# amd64, arm64 and armhf into target/debian/, with cargo-deb (installed if missing) and Debian's
# cross compilers (.cargo/config.toml names them; tests/run-all.sh installs them).
# The package tests (tests/tests/package.rs, tests/tests/arm.rs) check and install what this builds.
# Usage: tests/package.sh [amd64] [arm64] [armhf]   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/debian
mkdir -p "$out"
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb --version 3.8.0
# Packages carry stripped binaries (--strip): no debug info to build in the first place.
export CARGO_PROFILE_RELEASE_DEBUG=false
targets=()
for a in "${@:-amd64 arm64 armhf}"; do
  for one in $a; do
    case "$one" in
      amd64) targets+=(x86_64-unknown-linux-gnu) ;;
      arm64) targets+=(aarch64-unknown-linux-gnu) ;;
      armhf) targets+=(armv7-unknown-linux-gnueabihf) ;;
      *) echo "tests/package.sh: unknown architecture '$one' (amd64, arm64 or armhf)" >&2; exit 2 ;;
    esac
  done
done
for t in "${targets[@]}"; do
  case "$t" in
    aarch64-*) cc=aarch64-linux-gnu-gcc pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;;
    armv7-*) cc=arm-linux-gnueabihf-gcc pkgs="gcc-arm-linux-gnueabihf libc6-dev-armhf-cross" ;;
    *) cc=cc pkgs=gcc ;;
  esac
  if ! command -v "$cc" >/dev/null; then
    echo "tests/package.sh: $t needs the cross compiler $cc: apt-get install $pkgs" \
      "(tests/run-all.sh installs it), and: rustup target add $t" >&2
    exit 1
  fi
  rustup target list --installed | grep -qx "$t" || rustup target add "$t"
  cargo build --locked --release -q --target "$t" -p ferry-agent --no-default-features --bin ferry
  cargo build --locked --release -q --target "$t" -p ferry-cloud-bridge --bin ferry-bridge
  cargo deb --locked --no-build --strip --target "$t" -p ferry-agent -o "$out"
  cargo deb --locked --no-build --strip --target "$t" -p ferry-cloud-bridge -o "$out"
done
ls -l "$out"/*.deb
