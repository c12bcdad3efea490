# Sourced by the scripts in this folder: installs what faena needs on a fresh
# machine, and nothing that is already there.
#   - the wasm32-wasip2 Rust target (plugins are built for it)
#   - Debian's chromium (the browser capability and its tests)
#   - openapi-spec-validator from PyPI (the test suite validates /openapi.json)
#   - schemathesis from PyPI, in target/test-venv (the test suite fuzzes the API)
#   - componentize-py from PyPI, in target/test-venv (tests and benchmarks build
#     Python plugins)
#   - openapi-python-client from PyPI, in target/test-venv, and the npm packages of
#     examples/clients/typescript and tests/asyncapi (the suite generates clients from
#     /openapi.json and runs them, and validates /asyncapi.json)

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
  if [ "${1:-}" = "--test" ] && ! target/test-venv/bin/openapi-python-client --version 2>/dev/null | grep -q "$OPENAPI_PYTHON_CLIENT_VERSION"; then
    echo "== installing openapi-python-client $OPENAPI_PYTHON_CLIENT_VERSION into target/test-venv"
    [ -x target/test-venv/bin/pip ] || python3 -m venv target/test-venv
    target/test-venv/bin/pip install -q --disable-pip-version-check "openapi-python-client==$OPENAPI_PYTHON_CLIENT_VERSION"
  fi
  if [ "${1:-}" = "--test" ] || [ "${1:-}" = "--bench" ]; then ensure_componentize_py; fi
  if [ "${1:-}" = "--test" ]; then
    if ! command -v npm >/dev/null 2>&1; then
      echo "== installing nodejs and npm"
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
    fi
    local dir
    for dir in examples/clients/typescript tests/asyncapi; do
      # Installed from the lock file, again whenever the lock file changes.
      if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.package-lock.json.installed" 2>/dev/null; then
        echo "== installing the npm packages of $dir"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
        cp "$dir/package-lock.json" "$dir/node_modules/.package-lock.json.installed"
      fi
    done
  fi
}

# componentize-py builds the Python plugins of the tests and benchmarks.
ensure_componentize_py() {
  if ! target/test-venv/bin/componentize-py --version 2>/dev/null | grep -q "$COMPONENTIZE_PY_VERSION"; then
    echo "== installing componentize-py $COMPONENTIZE_PY_VERSION into target/test-venv"
    [ -x target/test-venv/bin/pip ] || python3 -m venv target/test-venv
    target/test-venv/bin/pip install -q --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
  fi
}

SCHEMATHESIS_VERSION=4.32.5
OPENAPI_PYTHON_CLIENT_VERSION=0.29.1
# The pin of the Python SDK (faena plugin new and build read it there too).
COMPONENTIZE_PY_VERSION=$(sed -n 's/^componentize-py==//p' plugins/sdk-python/requirements.txt)
