#!/usr/bin/env bash
# The main job: set up, then walk the DICOMweb tutorial (store, retrieve, search, delete)
# against a local Orthanc that the walkthrough starts and stops itself. Arguments are
# passed on to examples/tutorial.py (e.g. --url https://.../v2 --token ...).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

if [[ "${DICOMWEB_ASYNC_SETUP_DONE:-}" != 1 ]]; then
    bash scripts/setup.sh
fi
exec python3 examples/tutorial.py "$@"
