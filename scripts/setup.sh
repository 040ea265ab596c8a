#!/usr/bin/env bash
# Prepares a machine for development and CI: the Debian packages of Orthanc and its DICOMweb
# plugin (the integration tests start their own private server from them), and this package,
# editable, with its dev extras. Safe to run again: installed pieces are left as they are.
set -euo pipefail

readonly ORTHANC_BINARY=/usr/sbin/Orthanc
readonly DICOMWEB_PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
readonly POLICY_RC=/usr/sbin/policy-rc.d

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

say() { printf 'setup.sh: %s\n' "$*" >&2; }

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        say "root is needed to run: $*"
        exit 1
    fi
}

# shellcheck source=scripts/quietly.sh
source "$repo_root/scripts/quietly.sh"

remove_policy_rc() {
    as_root rm -f "$POLICY_RC"
}

install_orthanc() {
    if [[ -x "$ORTHANC_BINARY" && -f "$DICOMWEB_PLUGIN" ]]; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "Orthanc and its DICOMweb plugin are missing and apt-get is not available;"
        say "install them yourself (packages orthanc and orthanc-dicomweb)"
        exit 1
    fi
    say "installing the Debian packages orthanc and orthanc-dicomweb"
    # Without this the packages would start a system-wide Orthanc on ports 8042 and 4242.
    # An existing policy belongs to the machine's owner and is left alone.
    if [[ ! -e "$POLICY_RC" ]]; then
        trap remove_policy_rc EXIT
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$POLICY_RC" >/dev/null
        as_root chmod 755 "$POLICY_RC"
    fi
    quietly as_root env DEBIAN_FRONTEND=noninteractive apt-get -q update
    quietly as_root env DEBIAN_FRONTEND=noninteractive apt-get -q install -y \
        --no-install-recommends orthanc orthanc-dicomweb
    if [[ ! -x "$ORTHANC_BINARY" || ! -f "$DICOMWEB_PLUGIN" ]]; then
        say "the packages are installed, but $ORTHANC_BINARY or $DICOMWEB_PLUGIN is still missing"
        exit 1
    fi
}

install_package() {
    export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
    # Debian's own Python refuses pip installs outside a virtualenv (PEP 668).
    if python3 - <<'PY'
import os, sys, sysconfig
in_venv = sys.prefix != sys.base_prefix
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if not in_venv and os.path.exists(marker) else 1)
PY
    then
        say "python3 is externally managed; installing into it anyway (use a virtualenv to avoid)"
        export PIP_BREAK_SYSTEM_PACKAGES=1
    fi
    python3 -m pip install -q -e ".[dev]"
}

install_orthanc
install_package
