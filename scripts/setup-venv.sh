#!/usr/bin/env bash
# Create (or refresh) the Python virtualenv used by the end-to-end tests in
# tests/py.  Re-running is cheap: the install step is skipped when a stamp
# file inside the venv records the exact same requirement list.
#
#   OPENTRAIL_VENV   venv location (default: $HOME/.cache/opentrail-venv)
#   PYTHON           interpreter used to create the venv (default: python3)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
requirements="${repo_root}/tests/py/requirements.txt"
venv="${OPENTRAIL_VENV:-$HOME/.cache/opentrail-venv}"
python="${PYTHON:-python3}"
stamp="${venv}/.opentrail-requirements.stamp"

if [[ ! -f "${requirements}" ]]; then
    echo "setup-venv: missing ${requirements}" >&2
    exit 1
fi

# (Re)create the venv when it is absent or its interpreter is broken.
if [[ ! -x "${venv}/bin/python" ]] || ! "${venv}/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "setup-venv: creating virtualenv at ${venv}" >&2
    rm -rf "${venv}"
    mkdir -p "$(dirname "${venv}")"
    "${python}" -m venv "${venv}"
    rm -f "${stamp}"
fi

# Install only when the requirement list differs from what was installed
# last time (or the stamp is missing, e.g. after an interrupted install).
if [[ -f "${stamp}" ]] && cmp -s "${requirements}" "${stamp}"; then
    echo "setup-venv: requirements already installed" >&2
else
    echo "setup-venv: installing requirements into ${venv}" >&2
    rm -f "${stamp}"
    "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade -r "${requirements}"
    # Sanity check: the aws CLI v1 entry point must exist next to python.
    "${venv}/bin/aws" --version >&2
    cp "${requirements}" "${stamp}"
fi

echo "${venv}"
