#!/usr/bin/env bash
# Installs what Ferry's tests need, then builds every target and runs every test.
# This is the README's test command and what CI runs (.ci/run). Tests that need a tool are
# #[ignore = "needs …"] (a plain `cargo test` lists them as ignored); here they run too
# (--include-ignored), and a missing tool fails its test with the install step.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
step() { printf '\n==> %s\n' "$*"; }

step "System packages"
need=()
command -v qemu-system-arm >/dev/null || need+=(qemu-system-arm)
command -v python3 >/dev/null || need+=(python3)
command -v size >/dev/null || need+=(binutils)
command -v strace >/dev/null || need+=(strace)  # agent/tests/sync.rs: the store syncs with fdatasync
# tests/powercut: a FUSE filesystem (as root it mounts through /dev/fuse; otherwise via fusermount3)
command -v fusermount3 >/dev/null || need+=(fuse3)
export PATH="$PATH:/usr/sbin"  # mosquitto lives in /usr/sbin
command -v mosquitto >/dev/null || need+=(mosquitto)
# ferry-bridge tests: a private PostgreSQL cluster (initdb lives in /usr/lib/postgresql/NN/bin).
# TLS tests make their certificates in-process (rcgen), so no openssl CLI is needed.
command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
# Dashboard test: a real headless Chromium driven over WebDriver (tests/src/browser.rs).
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
# Gateway builds: Debian's cross compilers (and their C libraries) for arm64 and armhf, qemu-user
# to run those agents (tests/tests/arm.rs), systemd-analyze to verify the units (package.rs).
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v arm-linux-gnueabihf-gcc >/dev/null || need+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v systemd-analyze >/dev/null || need+=(systemd)
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
qemu-system-arm --version | head -1

step "Rust targets"
rustup target add thumbv7m-none-eabi thumbv7em-none-eabihf thumbv6m-none-eabi \
  aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf

step "Formatting and lints"
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -q -- -D warnings

step "no_std crates on every thumb target"
for t in thumbv7m-none-eabi thumbv7em-none-eabihf thumbv6m-none-eabi; do
  cargo build --locked -q -p ferry-wire -p ferry-firmware --target "$t"
  echo "ferry-wire, ferry-firmware: $t ok"
done

step "Firmware images (flash = text + data, static RAM = data + bss)"
for b in lm3s6965 stm32f407-disco stm32f407-disco/bootloader; do
  (cd "firmware/boards/$b" && cargo build --locked --release -q)
done
# The STM32F407 image with its updater (built with the same test key as below; not run on hardware).
(cd firmware/boards/stm32f407-disco &&
  FERRY_UPDATE_KEY=d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a \
    cargo build --locked --release -q --target-dir target/with-updater)
size firmware/boards/lm3s6965/target/thumbv7m-none-eabi/release/ferry-board-lm3s6965 \
  firmware/boards/stm32f407-disco/target/thumbv7em-none-eabihf/release/ferry-stm32f407-disco \
  firmware/boards/stm32f407-disco/target/with-updater/thumbv7em-none-eabihf/release/ferry-stm32f407-disco \
  firmware/boards/stm32f407-disco/bootloader/target/thumbv7em-none-eabihf/release/ferry-stm32f407-bootloader
# micro:bit v1 (nRF51822): the application and its bootloader. The update key here is RFC 8032's
# first test key, for the sizes only (images for devices carry the vendor's key: its README).
(cd firmware/boards/microbit &&
  FERRY_UPDATE_KEY=d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a \
    cargo build --locked --release -q)
size firmware/boards/microbit/target/thumbv6m-none-eabi/release/ferry-board-microbit \
  firmware/boards/microbit/target/thumbv6m-none-eabi/release/ferry-bootloader-microbit

step "Debian packages ferry and ferry-bridge for amd64, arm64, armhf (target/debian/)"
bash tests/package.sh

step "Tests (including those that need the tools above)"
cargo test --locked --workspace -- --include-ignored

step "Fuzzing every outside input (30 s per target; tests/fuzz/README.md)"
tests/fuzz/run.sh
