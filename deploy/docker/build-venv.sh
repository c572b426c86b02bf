#!/bin/sh
# The Dockerfile's build steps, in two modes so that a change in src/ never reinstalls torch:
#
#   build-venv.sh dependencies VENV REQUIREMENTS  # VENV with torch (TORCH_SPEC, from TORCH_INDEX_URL when
#                                                 # set) and every requirement of pyproject.toml (the file
#                                                 # project-requirements.py wrote): the big, cached layer
#   build-venv.sh wheel VENV SOURCE_DIR WHEELS    # CoTrain's wheel from the source tree, built with VENV's
#                                                 # setuptools (no index needed): the small, per-commit layer
#
# Behind a corporate proxy the standard PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_TRUSTED_HOST /
# PIP_FIND_LINKS build arguments reach pip as they are, and a CA bundle (the CA_BUNDLE build argument,
# copied to /tmp/build/ca.pem) is added to the system's for this stage only: nothing of it reaches the
# final image.
set -eu
usage="usage: build-venv.sh dependencies VENV REQUIREMENTS | wheel VENV SOURCE_DIR WHEELS"
mode=${1:?$usage}
venv=${2:?$usage}
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

case "$mode" in
dependencies)
    requirements=${3:?$usage}
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        "$venv/bin/python" -m pip install --quiet --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
    else
        "$venv/bin/python" -m pip install --quiet "$TORCH_SPEC"
    fi
    # torch is already there, so pyproject's `torch>=...` keeps TORCH_SPEC's build (CPU or CUDA)
    "$venv/bin/python" -m pip install --quiet --requirement "$requirements"
    ;;
wheel)
    src=${3:?$usage}
    wheels=${4:?$usage}
    "$venv/bin/python" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$wheels" "$src"
    ;;
*)
    echo "$usage" >&2
    exit 2
    ;;
esac
