#!/bin/sh
# Compose's entry point for CoTrain services: Compose mounts secrets as files under /run/secrets, but
# CoTrain reads the admin token and the ledger key from COTRAIN_ADMIN_TOKEN and COTRAIN_LEDGER_KEY
# only (the treasury key has a file setting, COTRAIN_TREASURY_KEY_FILE, used directly). Each secret
# file that exists and is not empty sets its variable, unless the variable is already set, for the
# command this script then becomes (`exec "$@"`): nothing is written or printed.
set -eu
secrets_dir=${SECRETS_DIR:-/run/secrets}

load() {  # load FILE_NAME VARIABLE
    file="$secrets_dir/$1"
    eval "current=\${$2:-}"
    [ -z "$current" ] || return 0
    [ -e "$file" ] || return 0
    if [ ! -r "$file" ]; then
        echo "error: the secret $file is not readable by user $(id -u); on the host, give it to that user" \
             "(chown $(id -u) FILE, or podman unshare chown $(id -u) FILE) and chmod 400 it." >&2
        exit 2
    fi
    value=$(cat "$file")
    [ -z "$value" ] || export "$2=$value"
}

load admin_token COTRAIN_ADMIN_TOKEN
load ledger_key COTRAIN_LEDGER_KEY
exec "$@"
