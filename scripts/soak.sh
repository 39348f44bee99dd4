#!/usr/bin/env bash
# The long soak (tests/soak.rs): the daemon renewing without pause against Pebble and
# the API emulator for 30 minutes (or the minutes given), its RSS, open file
# descriptors, threads and runtime tasks printed at the start and the end.
# scripts/test.sh installs what it needs and runs a 3-minute soak; run that first.
set -euo pipefail
cd "$(dirname "$0")/.."
TLSWARD_SOAK_MINUTES="${1:-30}" cargo test --locked --test soak -- --nocapture 2>&1 | grep -E '^soak: |panicked|FAILED|test result'
