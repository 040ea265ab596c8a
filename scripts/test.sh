#!/usr/bin/env bash
# Runs the whole test suite, after scripts/setup.sh. Arguments are passed on to pytest.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

# Set by callers that have just run setup.sh themselves.
if [[ "${DICOMWEB_ASYNC_SETUP_DONE:-}" != 1 ]]; then
    bash scripts/setup.sh
fi
exec python3 -m pytest "$@"
