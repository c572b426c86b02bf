#!/bin/sh
# Builder stage of the Dockerfile: the virtual environment /opt/venv with torch (TORCH_SPEC, from
# TORCH_INDEX_URL when set) and CoTrain from the source tree in $1. Behind a corporate proxy the
# standard PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_TRUSTED_HOST / PIP_FIND_LINKS build arguments
# reach pip as they are, and a CA bundle (the CA_BUNDLE build argument, copied to /tmp/build/ca.pem)
# is added to the system's for this stage only: nothing of it reaches the final image.
set -eu
src=${1:?usage: build-venv.sh SOURCE_DIR VENV_DIR}
venv=${2:?usage: build-venv.sh SOURCE_DIR VENV_DIR}
build=${BUILD_DIR:-/tmp/build}  # the CA bundle's folder (the tests point it elsewhere)
system_ca=${SYSTEM_CA_FILE:-/etc/ssl/certs/ca-certificates.crt}

# An empty build argument is still an environment variable; pip would read PIP_INDEX_URL="" as an index.
for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_FIND_LINKS TORCH_INDEX_URL; do
    eval "value=\${$name:-}"
    [ -n "$value" ] || unset "$name"
done

if [ -s "$build/ca.pem" ]; then
    cat "$system_ca" "$build/ca.pem" > "$build/all-ca.pem" 2>/dev/null || cp "$build/ca.pem" "$build/all-ca.pem"
    export PIP_CERT="$build/all-ca.pem" REQUESTS_CA_BUNDLE="$build/all-ca.pem" SSL_CERT_FILE="$build/all-ca.pem"
fi
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$venv/bin/python" -m pip install --quiet --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
else
    "$venv/bin/python" -m pip install --quiet "$TORCH_SPEC"
fi
"$venv/bin/python" -m pip install --quiet "$src"
"$venv/bin/cotrain" --help > /dev/null  # the entry point imports
