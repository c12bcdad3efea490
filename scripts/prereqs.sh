# Sourced by the scripts in this folder: installs what faena needs on a fresh
# machine, and nothing that is already there.
#   - the wasm32-wasip2 Rust target (plugins are built for it)
#   - Debian's chromium (the browser capability and its tests)
#   - openapi-spec-validator from PyPI (the test suite validates /openapi.json)
#   - schemathesis from PyPI, in target/test-venv (the test suite fuzzes the API)

ensure_prereqs() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "== installing the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
  fi
  if ! command -v chromium >/dev/null 2>&1; then
    echo "== installing chromium"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
  fi
  if [ "${1:-}" = "--test" ] && ! python3 -c 'import openapi_spec_validator' 2>/dev/null; then
    echo "== installing openapi-spec-validator"
    python3 -m pip install -q --disable-pip-version-check openapi-spec-validator
  fi
  if [ "${1:-}" = "--test" ] && ! target/test-venv/bin/schemathesis --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "== installing schemathesis $SCHEMATHESIS_VERSION into target/test-venv"
    python3 -m venv target/test-venv
    target/test-venv/bin/pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  fi
}

SCHEMATHESIS_VERSION=4.32.5
