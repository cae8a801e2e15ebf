# shellcheck shell=bash
# The services skiff's tests need, made ready. Source this file (scripts/test does), then
# call the functions:
#
#   ensure_docker       a Docker Engine answering on its socket (installed and started if need be)
#   build_test_image    the registry-free busybox image skiff-busybox:test (see ../tests/image/Dockerfile)
#   ensure_chromium     Debian's chromium and chromium-driver, for the dashboard's browser tests
#   ensure_azurite      Azurite's blob service (npm azurite@3.35.0) on a free loopback port,
#                       exported as SKIFF_TEST_AZURITE; stop_azurite stops the one it started
#
# Each says what it does and fails loudly (non-zero, with the reason) rather than leaving a
# half-ready service behind for the tests to trip over. The docker CLI is fine here; only
# skiff's runtime itself must talk to the engine's API directly.

SKIFF_TEST_IMAGE="${SKIFF_TEST_IMAGE:-skiff-busybox:test}"
# Where the engine's own output goes when this script starts it.
SKIFF_DOCKERD_LOG="${SKIFF_DOCKERD_LOG:-${TMPDIR:-/tmp}/skiff-dockerd.log}"
_SKIFF_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_skiff_say() { printf 'services: %s\n' "$*" >&2; }
_skiff_fail() {
    printf 'services: ERROR: %s\n' "$*" >&2
    return 1
}

# Runs a command as root: directly when we are root, else through sudo when it is there.
_skiff_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        _skiff_fail "need root (or sudo) to run: $*"
    fi
}

# Installs Debian packages (none given: nothing to do), saying which and why it failed.
_skiff_apt_install() {
    [ "$#" -gt 0 ] || return 0
    command -v apt-get >/dev/null 2>&1 ||
        _skiff_fail "missing $* and there is no apt-get to install them; install them by hand" || return 1
    _skiff_say "installing $* with apt-get"
    _skiff_as_root apt-get update -q || _skiff_fail "apt-get update failed" || return 1
    _skiff_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" ||
        _skiff_fail "apt-get install $* failed" || return 1
}

_skiff_docker_answers() {
    command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1
}

# Installs Debian's docker.io and busybox-static when the engine or the busybox binary
# is missing, starts dockerd when none answers, and waits up to 60 s for it.
ensure_docker() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    [ -x /bin/busybox ] || missing+=(busybox-static)
    _skiff_apt_install "${missing[@]}" || return 1

    if _skiff_docker_answers; then
        _skiff_say "docker engine answers ($(docker version --format '{{.Server.Version}}, API {{.Server.APIVersion}}' 2>/dev/null))"
        return 0
    fi

    # An engine may be starting already (a socket without answers yet): give it a
    # moment before starting a second one, which would fight it over the socket.
    if pgrep -x dockerd >/dev/null 2>&1; then
        _skiff_say "dockerd is running but does not answer yet; waiting for it"
    else
        # vfs: works on any filesystem (overlay inside containers often does not).
        # No bridge, iptables or masquerading: this machine may not allow them, and tests
        # use the host network (callbacks to 127.0.0.1) or none.
        _skiff_say "starting dockerd (its log: $SKIFF_DOCKERD_LOG)"
        mkdir -p "$(dirname "$SKIFF_DOCKERD_LOG")" || _skiff_fail "cannot create the folder of $SKIFF_DOCKERD_LOG" || return 1
        # setsid: the engine must outlive this script and not receive its terminal's signals.
        _skiff_as_root setsid dockerd --storage-driver=vfs --bridge=none --iptables=false --ip-masq=false \
            >>"$SKIFF_DOCKERD_LOG" 2>&1 </dev/null &
        disown 2>/dev/null || true
    fi

    local waited=0
    until _skiff_docker_answers; do
        if [ "$waited" -ge 60 ]; then
            _skiff_say "last lines of $SKIFF_DOCKERD_LOG:"
            tail -n 20 "$SKIFF_DOCKERD_LOG" >&2 2>/dev/null || true
            _skiff_fail "the docker engine did not answer within 60 s"
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    _skiff_say "docker engine answers after ${waited}s ($(docker version --format '{{.Server.Version}}, API {{.Server.APIVersion}}' 2>/dev/null))"
}

# Builds $SKIFF_TEST_IMAGE from ../tests/image/Dockerfile and the host's /bin/busybox, with no
# registry. Skipped when the image exists and was built from the same busybox (its
# checksum is kept in the image's label skiff.busybox-sha256).
build_test_image() {
    [ -x /bin/busybox ] || _skiff_fail "/bin/busybox is missing; install busybox-static (ensure_docker does)" || return 1
    [ -f "$_SKIFF_REPO_ROOT/tests/image/Dockerfile" ] || _skiff_fail "$_SKIFF_REPO_ROOT/tests/image/Dockerfile is missing" || return 1
    local sum have
    sum="$(sha256sum /bin/busybox | cut -d' ' -f1)" || _skiff_fail "cannot checksum /bin/busybox" || return 1
    have="$(docker image inspect --format '{{ index .Config.Labels "skiff.busybox-sha256" }}' "$SKIFF_TEST_IMAGE" 2>/dev/null || true)"
    if [ "$have" = "$sum" ]; then
        _skiff_say "$SKIFF_TEST_IMAGE is current (busybox sha256 ${sum:0:12})"
        return 0
    fi

    local context
    context="$(mktemp -d "${TMPDIR:-/tmp}/skiff-image.XXXXXX")" || _skiff_fail "cannot make a build folder" || return 1
    # -L: /bin may be a link into /usr; the image needs the file itself.
    cp -L /bin/busybox "$context/busybox" && cp "$_SKIFF_REPO_ROOT/tests/image/Dockerfile" "$context/Dockerfile" ||
        { rm -rf "$context"; _skiff_fail "cannot fill the build folder $context"; return 1; }
    _skiff_say "building $SKIFF_TEST_IMAGE from $_SKIFF_REPO_ROOT/tests/image/Dockerfile (busybox sha256 ${sum:0:12})"
    # The classic builder: it needs no buildx plugin and its RUN step needs no network.
    if ! DOCKER_BUILDKIT=0 docker build --quiet --label "skiff.busybox-sha256=$sum" -t "$SKIFF_TEST_IMAGE" "$context" >&2; then
        rm -rf "$context"
        _skiff_fail "docker build of $SKIFF_TEST_IMAGE failed"
        return 1
    fi
    rm -rf "$context"
    _skiff_say "built $SKIFF_TEST_IMAGE"
}

# Azurite, pinned: 3.36+ need Node 21, and this machine has Node 20.
SKIFF_AZURITE_VERSION="${SKIFF_AZURITE_VERSION:-3.35.0}"
SKIFF_AZURITE_PREFIX="${SKIFF_AZURITE_PREFIX:-$HOME/.cache/skiff/azurite}"
SKIFF_AZURITE_LOG="${SKIFF_AZURITE_LOG:-${TMPDIR:-/tmp}/skiff-azurite.log}"

_skiff_port_answers() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Installs azurite@$SKIFF_AZURITE_VERSION from the npm registry into $SKIFF_AZURITE_PREFIX
# when it is missing (or another version), then starts its blob service in memory on a
# free loopback port, unless SKIFF_TEST_AZURITE already names one that answers. Exports
# SKIFF_TEST_AZURITE=http://127.0.0.1:PORT and SKIFF_AZURITE_BIN (tests that need their own
# Azurite, with --location, start it from there).
ensure_azurite() {
    command -v npm >/dev/null 2>&1 || _skiff_fail "npm is missing; install Node.js 20 (e.g. apt-get install nodejs npm)" || return 1
    local installed="" manifest="$SKIFF_AZURITE_PREFIX/node_modules/azurite/package.json"
    # Never `x="$(cmd | head)"` on a file that may be absent: under the caller's
    # `set -e -o pipefail` a failing sed ends the whole script without a word.
    if [ -f "$manifest" ]; then
        installed="$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$manifest" 2>/dev/null || true)"
        installed="${installed%%$'\n'*}"
    fi
    if [ "$installed" != "$SKIFF_AZURITE_VERSION" ]; then
        _skiff_say "installing azurite@$SKIFF_AZURITE_VERSION into $SKIFF_AZURITE_PREFIX"
        mkdir -p "$SKIFF_AZURITE_PREFIX" || _skiff_fail "cannot create $SKIFF_AZURITE_PREFIX" || return 1
        npm install --no-audit --no-fund --prefix "$SKIFF_AZURITE_PREFIX" "azurite@$SKIFF_AZURITE_VERSION" >&2 ||
            _skiff_fail "npm install azurite@$SKIFF_AZURITE_VERSION failed" || return 1
    fi
    export SKIFF_AZURITE_BIN="$SKIFF_AZURITE_PREFIX/node_modules/.bin/azurite-blob"
    [ -x "$SKIFF_AZURITE_BIN" ] || _skiff_fail "$SKIFF_AZURITE_BIN is missing after the install" || return 1

    if [ -n "${SKIFF_TEST_AZURITE:-}" ] && _skiff_port_answers "${SKIFF_TEST_AZURITE##*:}"; then
        _skiff_say "azurite answers at $SKIFF_TEST_AZURITE"
        return 0
    fi
    local port
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')" ||
        _skiff_fail "cannot find a free port" || return 1
    _skiff_say "starting azurite-blob on 127.0.0.1:$port (its log: $SKIFF_AZURITE_LOG)"
    # --disableTelemetry: otherwise it tries to reach the internet.
    setsid "$SKIFF_AZURITE_BIN" --blobHost 127.0.0.1 --blobPort "$port" --inMemoryPersistence \
        --skipApiVersionCheck --disableTelemetry >>"$SKIFF_AZURITE_LOG" 2>&1 </dev/null &
    _SKIFF_AZURITE_PID=$!
    local waited=0
    until _skiff_port_answers "$port"; do
        if [ "$waited" -ge 60 ] || ! kill -0 "$_SKIFF_AZURITE_PID" 2>/dev/null; then
            tail -n 20 "$SKIFF_AZURITE_LOG" >&2 2>/dev/null || true
            _skiff_fail "azurite did not answer on port $port"
            return 1
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    export SKIFF_TEST_AZURITE="http://127.0.0.1:$port"
    _skiff_say "azurite answers at $SKIFF_TEST_AZURITE"
}

# Stops the Azurite that ensure_azurite started (none other).
stop_azurite() {
    if [ -n "${_SKIFF_AZURITE_PID:-}" ]; then
        kill "$_SKIFF_AZURITE_PID" 2>/dev/null || true
        wait "$_SKIFF_AZURITE_PID" 2>/dev/null || true
        unset _SKIFF_AZURITE_PID
    fi
}

# Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver), for
# tests/dashboard.rs, which starts its own chromedriver on a free loopback port. Installed
# when either is missing; then both must answer --version (a browser that cannot start says
# so here, not as a test timeout).
ensure_chromium() {
    local missing=()
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
    _skiff_apt_install "${missing[@]}" || return 1
    local browser driver
    browser="$(/usr/bin/chromium --headless=new --no-sandbox --version 2>/dev/null)" ||
        _skiff_fail "/usr/bin/chromium does not start (try: /usr/bin/chromium --headless=new --no-sandbox --version)" ||
        return 1
    driver="$(/usr/bin/chromedriver --version 2>/dev/null)" ||
        _skiff_fail "/usr/bin/chromedriver does not start (try: /usr/bin/chromedriver --version)" || return 1
    _skiff_say "chromium ready (${browser}; ${driver%% (*})"
}
