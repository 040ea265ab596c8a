#!/usr/bin/env bash
# Runs the test suite at both ends of what pyproject.toml promises, each in a virtualenv of
# its own (.venv-lowest/ and .venv-newest/, git-ignored, made anew every time):
#   lowest: Python 3.10, the oldest supported, with the pins of .ci/lowest-versions.txt (the
#           declared lower bounds of the dependencies, which are checked against
#           pyproject.toml), then the tutorial walkthrough against the emulator;
#   newest: Python 3.13 with the newest versions the declared ranges allow.
# The Orthanc integration tests are left to the main run (scripts/test.sh): they are the
# slow part, and the emulator and loopback tests reach the same client code. Arguments are
# passed on to pytest. Interpreters are found with pyenv or as python3.X on PATH, unless
# DICOMWEB_ASYNC_PYTHON_OLDEST or DICOMWEB_ASYNC_PYTHON_NEWEST names one.
set -euo pipefail

readonly OLDEST=3.10
readonly NEWEST=3.13
readonly PINS=.ci/lowest-versions.txt

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# A PYTHONPATH set for the main interpreter would put another copy of the package, or other
# versions of its dependencies, ahead of each virtualenv's own.
unset PYTHONPATH

say() { printf 'check-versions.sh: %s\n' "$*" >&2; }

# shellcheck source=scripts/quietly.sh
source "$repo_root/scripts/quietly.sh"

# Prints the path of a Python $1 (e.g. 3.10) interpreter, or fails saying so. $2 is a path to
# try first (may be empty), $3 the variable it came from.
find_python() {
    local version="$1" override="$2" variable="$3" candidates=() prefix candidate
    local major="${version%%.*}" minor="${version#*.}"
    if [[ -n "$override" ]]; then
        candidates+=("$override")
    fi
    if command -v pyenv >/dev/null 2>&1 && prefix="$(pyenv prefix "$version" 2>/dev/null)"; then
        candidates+=("$prefix/bin/python$version")
    fi
    # pyenv's shims exist for versions that are not active, so each candidate is run.
    if candidate="$(command -v "python$version")"; then
        candidates+=("$candidate")
    fi
    for candidate in "${candidates[@]}"; do
        if "$candidate" -c "import sys; sys.exit(sys.version_info[:2] != ($major, $minor))" \
            2>/dev/null; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    say "no Python $version found (tried pyenv prefix $version and python$version on PATH);"
    say "install it (pyenv install $version) or name its interpreter in $variable"
    return 1
}

make_venv() {
    local python="$1" venv="$2"
    say "$venv: $("$python" --version) from $python"
    rm -rf "$venv"
    quietly "$python" -m venv "$venv"
}

# Fails unless every dependency of pyproject.toml (and of its extras but dev) is pinned in
# $PINS at exactly its lower bound. Run with the lowest virtualenv, which has packaging.
check_pins() {
    "$1" - "$PINS" <<'PY'
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli
    import tomli as tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
declared = list(project["dependencies"])
for extra, requirements in project.get("optional-dependencies", {}).items():
    if extra != "dev":
        declared += requirements

pins = {}
with open(sys.argv[1]) as f:
    for line in f:
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = {str(s) for s in req.specifier}

problems = []
for text in declared:
    req = Requirement(text)
    floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
    if not floors:
        problems.append(f"{req.name}: pyproject.toml declares no lower bound")
        continue
    pinned = pins.get(canonicalize_name(req.name), set())
    versions = [Version(p[2:]) for p in pinned if p.startswith("==")]
    if versions != [max(floors)]:
        problems.append(
            f"{req.name}: pyproject.toml's lower bound is {max(floors)}, "
            f"{sys.argv[1]} pins {', '.join(sorted(pinned)) or 'nothing'}"
        )
for problem in problems:
    print(f"check-versions.sh: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
}

# Runs pytest from virtualenv $1; exit status 5 (no tests collected) is a failure too.
run_tests() {
    local venv="$1" status=0
    shift
    "$venv/bin/python" -m pytest -p no:cacheprovider -m "not orthanc" "$@" || status=$?
    if [[ $status -eq 5 ]]; then
        say "$venv: pytest collected no tests; that is a failure"
    fi
    return "$status"
}

oldest="$(find_python "$OLDEST" "${DICOMWEB_ASYNC_PYTHON_OLDEST:-}" DICOMWEB_ASYNC_PYTHON_OLDEST)"
newest="$(find_python "$NEWEST" "${DICOMWEB_ASYNC_PYTHON_NEWEST:-}" DICOMWEB_ASYNC_PYTHON_NEWEST)"

say "lowest declared versions on Python $OLDEST"
make_venv "$oldest" .venv-lowest
# The pins must resolve together with the package's own ranges, hence one command.
quietly .venv-lowest/bin/python -m pip install -r "$PINS" .
check_pins .venv-lowest/bin/python
.venv-lowest/bin/python -m pip list --format=freeze 2>/dev/null |
    grep -iE '^(pydicom|httpx|httpcore|anyio|multipart|azure-identity|trio)==' | paste -sd ' ' >&2
run_tests .venv-lowest "$@"
say "tutorial walkthrough against the emulator (the main job) on the lowest versions"
quietly .venv-lowest/bin/python examples/tutorial.py

say "newest versions on Python $NEWEST"
make_venv "$newest" .venv-newest
quietly .venv-newest/bin/python -m pip install ".[dev]"
.venv-newest/bin/python -m pip list --format=freeze 2>/dev/null |
    grep -iE '^(pydicom|httpx|httpcore|anyio|multipart|azure-identity|trio)==' | paste -sd ' ' >&2
run_tests .venv-newest "$@"
say "both version runs passed"
