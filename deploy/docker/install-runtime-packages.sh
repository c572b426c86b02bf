#!/bin/sh
# Final stage of the Dockerfile: the Debian packages the running image needs (RUNTIME_APT_PACKAGES,
# by default postgresql-client for `cotrain backup` of a PostgreSQL database), fetched with the build's
# CA bundle when one was given (bind-mounted from the builder stage, never copied into a layer).
set -eu
[ -n "${RUNTIME_APT_PACKAGES:-}" ] || exit 0
build=${BUILD_DIR:-/tmp/build}  # the CA bundle's folder (the tests point it elsewhere)
system_ca=${SYSTEM_CA_FILE:-/etc/ssl/certs/ca-certificates.crt}
bundle=${TMPDIR:-/tmp}/apt-ca.pem
ca_option=""
if [ -s "$build/ca.pem" ]; then
    cat "$system_ca" "$build/ca.pem" > "$bundle" 2>/dev/null || cp "$build/ca.pem" "$bundle"
    ca_option="-o Acquire::https::CAInfo=$bundle"
fi
# shellcheck disable=SC2086  # the option and the package list are word lists
apt-get $ca_option update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get $ca_option install -y -qq --no-install-recommends $RUNTIME_APT_PACKAGES
rm -rf /var/lib/apt/lists/* "$bundle"
