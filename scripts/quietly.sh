# Sourced by the scripts beside it. The caller defines say(), which prefixes its messages.

# Runs a chatty command silently, but shows everything it printed if it fails.
quietly() {
    local log status=0
    log="$(mktemp)"
    "$@" >"$log" 2>&1 || status=$?
    if [[ $status -ne 0 ]]; then
        cat "$log" >&2
        say "failed (exit $status): $*"
    fi
    rm -f "$log"
    return "$status"
}
