#!/bin/sh
# Install the trustfleet agent on a Raspberry Pi (or any Linux with systemd).
#
#   sudo sh tools/install-pi.sh --credentials pi-0042.json \
#       --broker mqtts://mqtt.acme.example:8883 --factory-root root.cose --bundle factory.cose
#
# It creates the `trustfleet` system user, a venv in /opt/trustfleet with the
# package, /etc/trustfleet (agent.toml, the MQTT password, the factory trust),
# the state directory /var/lib/trustfleet, the systemd unit, then runs
# `trustfleet-agent init` as the service user and enables the service.
# Running it again changes nothing that is already right. --root DIR (or
# TRUSTFLEET_INSTALL_ROOT=DIR) installs into DIR instead of / (tests). The procedure and what must stay
# secret: docs/provisioning.md. `install-pi.sh --help` lists every option.
set -eu
umask 077

PROG=install-pi.sh
# The real folder (pwd -P): a tools/ linked into a working folder still finds its checkout.
HERE=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd -P)

# Paths on the device (inside --root).
ETC=/etc/trustfleet
STATE=/var/lib/trustfleet
VENV=/opt/trustfleet
UNIT_NAME=trustfleet-agent.service
UNIT_DIR=/etc/systemd/system
LINK=/usr/local/bin/trustfleet-agent

ROOT=${TRUSTFLEET_INSTALL_ROOT:-/}
DEVICE_ID=
FLEET=
GROUP=
BROKER=
USERNAME=
CREDENTIALS=
PASSWORD_FILE=
FACTORY_ROOT=
BUNDLE=
ENDPOINTS=
FROM=
FROM_INDEX=0
VENV_PYTHON=python3
SKIP_PIP=0
UPGRADE=0
NO_USER=0
NO_ENABLE=0
SERVICE_USER=trustfleet
UNIT_SRC=$HERE/systemd/$UNIT_NAME

usage() {
    cat <<EOF
usage: $PROG --factory-root ROOT.cose --broker URL (--credentials FILE | --password-file FILE)
             [--device-id ID] [--fleet F] [--group G] [--username U] [--bundle FACTORY.cose]
             [--endpoint HOST:PORT ...] [--root DIR] [--from PATH | --from-index] [--upgrade]
             [--venv-python PYTHON] [--skip-pip] [--no-user] [--no-enable] [--unit FILE]

  --credentials FILE    the device's JSON from \`trustfleet device add --out\`: device id,
                        fleet, group, username and password (delete it once installed)
  --password-file FILE  the MQTT password alone (then give --device-id and --fleet)
  --broker URL          mqtts://HOST[:PORT] as the device reaches the broker (mqtt:// only
                        on a trusted network: the password would cross it in clear)
  --factory-root FILE   the fleet's signed root; --bundle: a first bundle (needed before an
                        mqtts:// broker can be checked)
  --endpoint HOST:PORT  health check of each new store (repeatable); the factory bundle
                        is installed without it (the network may not be up yet)
  --root DIR            install into DIR instead of / (default: \$TRUSTFLEET_INSTALL_ROOT, else /;
                        tests: a venv is tied to its path, so use a chroot for an OS image);
                        the user is created in DIR/etc/passwd when it exists and this runs
                        as root, else skipped
  --from PATH           install the package from this wheel (.whl) or checkout folder
                        (default: the checkout this script is in, when it is in one)
  --from-index          install \`trustfleet\` from the package index pip is set up for
  --upgrade             pip install --upgrade even when the agent is installed already
  --venv-python PYTHON  the Python 3.11+ that creates the venv (default: python3)
  --skip-pip            use the venv already in DIR/opt/trustfleet (tests)
  --no-user             create no user; files stay the invoking user's (tests)
  --no-enable           install the unit but do not enable or start it
  --unit FILE           the unit to install (default: tools/systemd/$UNIT_NAME)
EOF
}

# What this run created and removes again when it fails: the venv (never one that
# was there before), /opt when it made it, and the link into the venv.
VENV_NEW=0
OPT_NEW=0
LINK_NEW=0
CLEANED=
cleanup_new() {
    [ "$VENV_NEW" -eq 1 ] || return 0
    VENV_NEW=0
    rm -rf "$R$VENV"
    [ "$OPT_NEW" -eq 0 ] || rmdir "$R/opt" 2>/dev/null || true
    [ "$LINK_NEW" -eq 0 ] || rm -f "$R$LINK"
    CLEANED="; removed the venv $R$VENV this run had created"
}

fail() {  # fail CODE MESSAGE: one line on stderr, after removing what this run created
    code=$1
    shift
    cleanup_new
    printf '%s: error: %s%s\n' "$PROG" "$*" "$CLEANED" >&2
    exit "$code"
}

die() {
    fail 2 "$@"
}

note() {
    printf '%s: %s\n' "$PROG" "$*"
}

CHANGES=0
changed() {
    CHANGES=$((CHANGES + 1))
    printf '  changed:   %s\n' "$*"
}

kept() {
    printf '  unchanged: %s\n' "$*"
}

need() {
    [ $# -ge 2 ] || die "$1 needs a value"
}

while [ $# -gt 0 ]; do
    case $1 in
        --root) need "$@"; ROOT=$2; shift 2 ;;
        --device-id) need "$@"; DEVICE_ID=$2; shift 2 ;;
        --fleet) need "$@"; FLEET=$2; shift 2 ;;
        --group) need "$@"; GROUP=$2; shift 2 ;;
        --broker) need "$@"; BROKER=$2; shift 2 ;;
        --username) need "$@"; USERNAME=$2; shift 2 ;;
        --credentials) need "$@"; CREDENTIALS=$2; shift 2 ;;
        --password-file) need "$@"; PASSWORD_FILE=$2; shift 2 ;;
        --factory-root) need "$@"; FACTORY_ROOT=$2; shift 2 ;;
        --bundle) need "$@"; BUNDLE=$2; shift 2 ;;
        --endpoint) need "$@"; ENDPOINTS="$ENDPOINTS $2"; shift 2 ;;
        --from) need "$@"; FROM=$2; shift 2 ;;
        --from-index) FROM_INDEX=1; shift ;;
        --venv-python) need "$@"; VENV_PYTHON=$2; shift 2 ;;
        --unit) need "$@"; UNIT_SRC=$2; shift 2 ;;
        --upgrade) UPGRADE=1; shift ;;
        --skip-pip) SKIP_PIP=1; shift ;;
        --no-user) NO_USER=1; shift ;;
        --no-enable) NO_ENABLE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

# ------------------------------------------------------------------ checks

is_name() {  # topics.check_name: 1 to 64 of letters, digits, '-', '_', '.'
    case $1 in
        ''|*[!A-Za-z0-9._-]*) return 1 ;;
    esac
    [ ${#1} -le 64 ]
}

NL='
'
toml_safe() {  # values go between double quotes in agent.toml
    case $1 in
        *'"'*|*\\*|*' '*|*"$NL"*) return 1 ;;
    esac
}

readable() {
    [ -f "$2" ] && [ -r "$2" ] || die "$1 $2: no such readable file"
}

[ -n "$FACTORY_ROOT" ] || die "--factory-root is required (the fleet's signed root)"
readable --factory-root "$FACTORY_ROOT"
[ -z "$BUNDLE" ] || readable --bundle "$BUNDLE"
readable --unit "$UNIT_SRC"
if [ -n "$CREDENTIALS" ]; then
    [ -z "$PASSWORD_FILE" ] || die "give --credentials or --password-file, not both"
    readable --credentials "$CREDENTIALS"
elif [ -n "$PASSWORD_FILE" ]; then
    readable --password-file "$PASSWORD_FILE"
else
    die "--credentials FILE (from \`trustfleet device add --out\`) or --password-file FILE is required"
fi
case $BROKER in
    mqtt://?*|mqtts://?*) toml_safe "$BROKER" || die "--broker $BROKER: no quotes, spaces or backslashes" ;;
    '') die "--broker mqtts://HOST[:PORT] is required" ;;
    *) die "--broker $BROKER: expected mqtts://HOST[:PORT] (or mqtt://)" ;;
esac
for e in $ENDPOINTS; do
    toml_safe "$e" || die "--endpoint $e: no quotes or backslashes"
done
# The package source: a wheel or a checkout, or the index only when asked.
SRC_KIND=
if [ -n "$FROM" ]; then
    [ $FROM_INDEX -eq 0 ] || die "give --from PATH or --from-index, not both"
    case $FROM in
        *.whl) [ -f "$FROM" ] && [ -r "$FROM" ] || die "--from $FROM: no such readable wheel"
            SRC_KIND=wheel ;;
        *) if [ -d "$FROM" ]; then
               [ -f "$FROM/pyproject.toml" ] \
                   || die "--from $FROM: not a trustfleet checkout (no pyproject.toml)"
               SRC_KIND=checkout
           else
               die "--from $FROM: expected a wheel (.whl) or a checkout folder (or --from-index)"
           fi ;;
    esac
    FROM=$(CDPATH='' cd -- "$(dirname -- "$FROM")" && pwd)/$(basename -- "$FROM")
elif [ $FROM_INDEX -eq 1 ]; then
    SRC_KIND=index
    FROM=trustfleet
elif [ -f "$HERE/../pyproject.toml" ] && grep -q '^name = "trustfleet"' "$HERE/../pyproject.toml"; then
    SRC_KIND=checkout
    FROM=$(CDPATH='' cd -- "$HERE/.." && pwd)
fi

[ -d "$ROOT" ] || die "--root $ROOT: not a directory"
ROOT=$(CDPATH='' cd -- "$ROOT" && pwd)
if [ "$ROOT" = / ]; then R=; else R=$ROOT; fi
IS_ROOT=0
[ "$(id -u)" -ne 0 ] || IS_ROOT=1
if [ $SKIP_PIP -eq 0 ] && [ -z "$SRC_KIND" ] \
        && { [ ! -x "$R$VENV/bin/trustfleet-agent" ] || [ $UPGRADE -eq 1 ]; }; then
    die "no package to install: give --from PATH (a wheel or a checkout) or --from-index"
fi
if [ -z "$R" ] && [ $IS_ROOT -eq 0 ]; then
    die "installing into / needs root (sudo); tests use --root DIR --no-user"
fi

TMP=$(mktemp -d)
INIT_DIR=
on_exit() {
    status=$?
    rm -rf "$TMP" ${INIT_DIR:+"$INIT_DIR"}
    if [ "$status" -ne 0 ] && [ "$VENV_NEW" -eq 1 ]; then
        cleanup_new
        printf '%s: failed: removed the venv %s this run had created\n' "$PROG" "$R$VENV" >&2
    fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

note "installing the trustfleet agent into ${ROOT}"

# ------------------------------------------------------------------ identity (before writing anything)

PY=$R$VENV/bin/python
[ -x "$PY" ] || PY=$VENV_PYTHON
if [ -n "$CREDENTIALS" ]; then
    json_field() {
        "$PY" -c 'import json, sys
d = json.load(open(sys.argv[1], encoding="utf-8"))
v = d.get(sys.argv[2])
sys.stdout.write(v if isinstance(v, str) else "")' "$CREDENTIALS" "$1"
    }
    for field in device_id fleet group username; do
        value=$(json_field "$field") || die "--credentials $CREDENTIALS: not the JSON of \`trustfleet device add\`"
        case $field in
            device_id) [ -z "$DEVICE_ID" ] || [ "$DEVICE_ID" = "$value" ] \
                || die "--device-id $DEVICE_ID differs from $CREDENTIALS ($value)"
                DEVICE_ID=$value ;;
            fleet) [ -z "$FLEET" ] || [ "$FLEET" = "$value" ] \
                || die "--fleet $FLEET differs from $CREDENTIALS ($value)"
                FLEET=$value ;;
            group) [ -n "$GROUP" ] || GROUP=$value ;;
            username) [ -n "$USERNAME" ] || USERNAME=$value ;;
        esac
    done
    "$PY" -c 'import json, sys
p = json.load(open(sys.argv[1], encoding="utf-8")).get("password")
if not isinstance(p, str) or not p:
    sys.exit("no password in " + sys.argv[1])
sys.stdout.write(p + "\n")' "$CREDENTIALS" > "$TMP/mqtt-password"
else
    cp "$PASSWORD_FILE" "$TMP/mqtt-password"
fi
[ -n "$USERNAME" ] || USERNAME=$DEVICE_ID
is_name "$DEVICE_ID" || die "device id '$DEVICE_ID': 1 to 64 letters, digits, '-', '_', '.' (--device-id)"
is_name "$FLEET" || die "fleet '$FLEET': 1 to 64 letters, digits, '-', '_', '.' (--fleet)"
[ -z "$GROUP" ] || is_name "$GROUP" || die "group '$GROUP': 1 to 64 letters, digits, '-', '_', '.'"
is_name "$USERNAME" || die "username '$USERNAME': 1 to 64 letters, digits, '-', '_', '.'"

# ------------------------------------------------------------------ helpers

OWN_UID=
OWN_GID=

# fix_meta PATH MODE OWNER(uid or "") GROUP(gid or ""): set mode and owner where they differ.
fix_meta() {
    cur=$(stat -c '%a %u %g' "$1")
    want_mode=$2
    want_uid=${3:-$(echo "$cur" | cut -d' ' -f2)}
    want_gid=${4:-$(echo "$cur" | cut -d' ' -f3)}
    if [ "$cur" != "$want_mode $want_uid $want_gid" ]; then
        chmod "$want_mode" "$1"
        [ $IS_ROOT -eq 0 ] || chown "$want_uid:$want_gid" "$1"
        changed "$1: mode $want_mode, owner $want_uid:$want_gid (was $cur)"
        return 0
    fi
    return 1
}

# ensure_dir PATH MODE OWNER GROUP
ensure_dir() {
    if [ ! -d "$1" ]; then
        (umask 022 && mkdir -p "$1")  # parents 0755: the service user must traverse them
        chmod "$2" "$1"
        [ $IS_ROOT -eq 0 ] || [ -z "$3" ] || chown "$3:$4" "$1"
        changed "$1: created (mode $2)"
    elif ! fix_meta "$@"; then
        kept "$1"
    fi
}

# install_file SRC DST MODE OWNER GROUP: replace DST atomically when its content differs.
install_file() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        fix_meta "$2" "$3" "$4" "$5" || kept "$2"
        return 0
    fi
    tmp="$2.tmp.$$"
    cp "$1" "$tmp"
    chmod "$3" "$tmp"
    [ $IS_ROOT -eq 0 ] || [ -z "$4" ] || chown "$4:$5" "$tmp"
    mv -f "$tmp" "$2"
    changed "$2: written (mode $3)"
}

id_of() {  # id_of passwd|group NAME: the numeric id in $R/etc/<file>
    [ -f "$R/etc/$1" ] || return 0
    awk -F: -v n="$2" '$1 == n { print $3; exit }' "$R/etc/$1"
}

# ------------------------------------------------------------------ 1. the service user

if [ $NO_USER -eq 1 ]; then
    note "user: skipped (--no-user); files stay owned by $(id -un), init runs as $(id -un)"
elif [ $IS_ROOT -eq 0 ]; then
    note "user: skipped (not root); files stay owned by $(id -un)"
elif [ -n "$R" ] && [ ! -f "$R/etc/passwd" ]; then
    note "user: skipped ($R/etc/passwd does not exist); files stay owned by root"
else
    if [ -z "$(id_of passwd "$SERVICE_USER")" ]; then
        if [ -n "$R" ]; then
            useradd --prefix "$R" --system --user-group --no-create-home --home-dir "$STATE" \
                --shell /usr/sbin/nologin "$SERVICE_USER"
        else
            useradd --system --user-group --no-create-home --home-dir "$STATE" \
                --shell /usr/sbin/nologin "$SERVICE_USER"
        fi
        changed "user $SERVICE_USER: created (system user, no login, home $STATE)"
    else
        kept "user $SERVICE_USER"
    fi
    OWN_UID=$(id_of passwd "$SERVICE_USER")
    OWN_GID=$(id_of group "$SERVICE_USER")
    [ -n "$OWN_UID" ] && [ -n "$OWN_GID" ] || die "user $SERVICE_USER: not in $R/etc/passwd and $R/etc/group"
fi
# Owner of what the service reads but must not change: root, group trustfleet.
if [ -n "$OWN_UID" ]; then ROOT_UID=0; ROOT_GID=$OWN_GID; else ROOT_UID=; ROOT_GID=; fi

# ------------------------------------------------------------------ 2. the venv and the package

PY=$R$VENV/bin/python
AGENT=$R$VENV/bin/trustfleet-agent
last_line() {  # the reason in a tool's output: its last ERROR line, else its last line
    grep '^ERROR' "$1" | tail -n 1 | grep . || grep . "$1" | tail -n 1
}

if [ $SKIP_PIP -eq 1 ]; then
    [ -x "$AGENT" ] || die "--skip-pip: no $AGENT"
    kept "$R$VENV (--skip-pip)"
elif [ -x "$AGENT" ] && [ $UPGRADE -eq 0 ]; then
    kept "$R$VENV: venv"
    kept "$AGENT: installed (--upgrade to reinstall)"
else
    case $SRC_KIND in
        wheel) note "package: the wheel $FROM" ;;
        checkout) note "package: the checkout $FROM" ;;
        index) note "package: trustfleet from the package index (--from-index)" ;;
    esac
    if [ ! -x "$PY" ]; then
        "$VENV_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || die "$VENV_PYTHON: the agent needs Python 3.11 or later"
        [ -e "$R$VENV" ] || VENV_NEW=1
        [ -e "$R/opt" ] || OPT_NEW=1
        # umask 022: the service user runs the venv's files
        (umask 022 && mkdir -p "$R/opt" && "$VENV_PYTHON" -m venv "$R$VENV") > "$TMP/venv.log" 2>&1 \
            || fail 1 "$VENV_PYTHON -m venv $R$VENV failed: $(last_line "$TMP/venv.log")"
        changed "$R$VENV: venv created with $VENV_PYTHON"
    else
        kept "$R$VENV: venv"
    fi
    spec=$FROM
    if [ "$SRC_KIND" = checkout ]; then
        # pip builds a folder in place: build from a copy, so nothing lands in the checkout.
        mkdir "$TMP/src"
        for f in pyproject.toml setup.py setup.cfg README.md LICENSE device server; do
            [ ! -e "$FROM/$f" ] || cp -R "$FROM/$f" "$TMP/src/"
        done
        chmod -R a+rX "$TMP/src"
        spec=$TMP/src
    fi
    if [ $UPGRADE -eq 1 ]; then up=--upgrade; else up=; fi
    # shellcheck disable=SC2086  # $up is empty or one word
    (umask 022 && "$PY" -m pip install --quiet --disable-pip-version-check $up "$spec") \
        > "$TMP/pip.log" 2>&1 \
        || fail 1 "pip install ${up:+$up }$FROM failed: $(last_line "$TMP/pip.log")"
    [ -x "$AGENT" ] || fail 1 "pip install $FROM installed no $VENV/bin/trustfleet-agent"
    changed "$R$VENV: pip install ${up:+$up }$FROM"
fi
[ -x "$PY" ] || PY=$VENV_PYTHON

ensure_dir "$R/usr/local/bin" 755 "" ""
if [ "$(readlink "$R$LINK" 2>/dev/null || true)" = "$VENV/bin/trustfleet-agent" ]; then
    kept "$R$LINK -> $VENV/bin/trustfleet-agent"
else
    [ -e "$R$LINK" ] || [ -L "$R$LINK" ] || LINK_NEW=1
    ln -sfn "$VENV/bin/trustfleet-agent" "$R$LINK"
    changed "$R$LINK -> $VENV/bin/trustfleet-agent (on systemd's PATH)"
fi

# ------------------------------------------------------------------ 3. /etc/trustfleet

ensure_dir "$R/etc" 755 "" ""
ensure_dir "$R$ETC" 750 "$ROOT_UID" "$ROOT_GID"
# The agent reads its password as the service user; ProtectSystem=strict keeps /etc read-only.
install_file "$TMP/mqtt-password" "$R$ETC/mqtt-password" 600 "$OWN_UID" "$OWN_GID"
install_file "$FACTORY_ROOT" "$R$ETC/factory-root.cose" 640 "$ROOT_UID" "$ROOT_GID"
[ -z "$BUNDLE" ] || install_file "$BUNDLE" "$R$ETC/factory-bundle.cose" 640 "$ROOT_UID" "$ROOT_GID"

agent_toml() {  # agent_toml 1|0: with or without the [health] table
    echo "# trustfleet agent of device $DEVICE_ID, fleet $FLEET."
    echo "# Written by tools/install-pi.sh, which rewrites it when run again: change its"
    echo "# options rather than this file. Every key: trustfleet-agent --help."
    echo "state_dir = \"$STATE\""
    echo "device_id = \"$DEVICE_ID\""
    echo "fleet = \"$FLEET\""
    if [ -n "$ENDPOINTS" ] && [ "$1" -eq 1 ]; then
        echo
        echo "[health]"
        list=
        for e in $ENDPOINTS; do list="$list${list:+, }\"$e\""; done
        echo "endpoints = [$list]"
    fi
    echo
    echo "[mqtt]"
    echo "broker = \"$BROKER\""
    echo "username = \"$USERNAME\""
    echo "password_file = \"$ETC/mqtt-password\""
    echo "keepalive = 60"
    echo "protocol = \"3.1.1\""
    [ -z "$GROUP" ] || echo "group = \"$GROUP\""
}
agent_toml 1 > "$TMP/agent.toml"
if "$PY" -c 'import trustfleet_pi' 2>/dev/null; then
    "$PY" -c 'import sys
from trustfleet_pi.config import ConfigError, load_config
try:
    load_config(sys.argv[1])
except ConfigError as exc:
    sys.exit(f"agent.toml would be refused: {exc}")' "$TMP/agent.toml" || exit 2
fi
install_file "$TMP/agent.toml" "$R$ETC/agent.toml" 640 "$ROOT_UID" "$ROOT_GID"

# ------------------------------------------------------------------ 4. state, unit, init

ensure_dir "$R/var/lib" 755 "" ""
ensure_dir "$R$STATE" 700 "$OWN_UID" "$OWN_GID"

ensure_dir "$R$UNIT_DIR" 755 "" ""
before=$CHANGES
if [ $IS_ROOT -eq 1 ]; then install_file "$UNIT_SRC" "$R$UNIT_DIR/$UNIT_NAME" 644 0 0
else install_file "$UNIT_SRC" "$R$UNIT_DIR/$UNIT_NAME" 644 "" ""; fi
UNIT_CHANGED=$((CHANGES - before))

as_service_user() {
    if [ -n "$OWN_UID" ] && [ $IS_ROOT -eq 1 ]; then
        setpriv --reuid="$OWN_UID" --regid="$OWN_GID" --clear-groups -- "$@"
    else
        "$@"
    fi
}

if [ -f "$R$STATE/root.cose" ]; then
    kept "$R$STATE: initialised already (init skipped; \`trustfleet-agent init --force\` by hand)"
else
    # init checks the root against the fleet of the config. The factory bundle goes in
    # without the health check: the network may not be up yet at provisioning, and a
    # failed check would mark the version bad for good. Bundles after it are checked.
    INIT_DIR=$(mktemp -d)
    agent_toml 0 > "$INIT_DIR/agent.toml"
    chmod 755 "$INIT_DIR"
    chmod 644 "$INIT_DIR/agent.toml"
    set -- init --config "$INIT_DIR/agent.toml" --state "$R$STATE" --root "$R$ETC/factory-root.cose"
    [ -z "$BUNDLE" ] || set -- "$@" --bundle "$R$ETC/factory-bundle.cose"
    if ! as_service_user "$AGENT" "$@"; then
        fail 1 "trustfleet-agent init failed (above); fix the cause, remove $R$STATE/root.cose and run again"
    fi
    rm -rf "$INIT_DIR"
    changed "$R$STATE: initialised with the factory root${BUNDLE:+ and bundle}"
fi

# ------------------------------------------------------------------ 5. enable and start

if [ $NO_ENABLE -eq 1 ]; then
    note "service: not enabled (--no-enable): systemctl enable --now $UNIT_NAME"
elif [ -z "$R" ] && [ -d /run/systemd/system ]; then
    [ "$UNIT_CHANGED" -eq 0 ] || systemctl daemon-reload
    if ! systemctl is-enabled --quiet "$UNIT_NAME"; then
        systemctl enable --quiet "$UNIT_NAME"
        changed "$UNIT_NAME: enabled"
    fi
    if ! systemctl is-active --quiet "$UNIT_NAME"; then
        systemctl start "$UNIT_NAME"
        changed "$UNIT_NAME: started"
    elif [ $CHANGES -gt 0 ]; then
        systemctl restart "$UNIT_NAME"
        changed "$UNIT_NAME: restarted (its files changed)"
    else
        kept "$UNIT_NAME: enabled and running"
    fi
elif command -v systemctl >/dev/null 2>&1; then
    if systemctl --root="$ROOT" is-enabled --quiet "$UNIT_NAME" 2>/dev/null; then
        kept "$UNIT_NAME: enabled in $ROOT"
    else
        # (it warns that multi-user.target is missing from a bare test root)
        if systemctl --root="$ROOT" enable --quiet "$UNIT_NAME" 2>"$TMP/enable.err"; then
            changed "$UNIT_NAME: enabled in $ROOT (not started: no running systemd here)"
        else
            note "service: could not enable in $ROOT: $(cat "$TMP/enable.err")"
        fi
    fi
else
    note "service: systemctl not found; enable $UNIT_NAME by hand"
fi

note "done: $CHANGES change(s)"
note "secret: $ETC/mqtt-password (mode 600${OWN_UID:+, owner $SERVICE_USER}) holds the MQTT password;" \
    "delete the credentials file you copied here"
[ -n "$BUNDLE" ] || case $BROKER in
    mqtts://*) note "warning: no --bundle: \`run\` cannot check an mqtts:// broker until a bundle is installed" ;;
esac
note "logs: journalctl -u ${UNIT_NAME%.service} -f; status: trustfleet-agent status --state $STATE"
