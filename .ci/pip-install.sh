#!/usr/bin/env bash
# Installs Python packages into the python3 the tests call, whatever kind of
# Python that is: a pyenv or virtualenv one takes pip as it is; Debian's own
# may lack pip, and refuses system-wide installs (PEP 668) unless told.
#   .ci/pip-install.sh PACKAGE...
set -euo pipefail

if ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip
fi
pip=(python3 -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "$@" 2>/dev/null || "${pip[@]}" --break-system-packages "$@"
