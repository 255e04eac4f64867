#!/usr/bin/env bash
# Installs the S3-compatible test server the object-storage end-to-end tests start:
# moto's `moto_server` (PyPI `moto[server]`), into a venv in the git-ignored cache
# ($ORRERY_CACHE or .cache/, at $cache/moto/bin/moto_server).
# Idempotent: does nothing when the wanted version is already there (so it works
# offline once installed). Progress on stderr; non-zero exit with a clear message on
# failure.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ORRERY_CACHE:-$root/.cache}
venv=$cache/moto
want=${ORRERY_MOTO_VERSION:-5.2.5}

have() {
  [ -x "$venv/bin/moto_server" ] &&
    [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null)" = "$want" ]
}

if have; then
  echo "moto[server] $want already in $venv" >&2
  exit 0
fi

py=${PYTHON:-python3}
if ! command -v "$py" >/dev/null 2>&1; then
  echo "install-s3-server: $py not found; moto_server needs Python 3 with venv and pip" >&2
  exit 1
fi
mkdir -p "$cache"
if [ ! -x "$venv/bin/python" ]; then
  echo "install-s3-server: creating venv $venv" >&2
  "$py" -m venv "$venv" >&2 || {
    echo "install-s3-server: '$py -m venv' failed (Debian: apt-get install python3-venv)" >&2
    exit 1
  }
fi
echo "install-s3-server: pip install moto[server]==$want into $venv" >&2
if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check "moto[server]==$want" >&2; then
  echo "install-s3-server: pip could not install moto[server]==$want (no network or no PyPI access?)" >&2
  exit 1
fi
if ! have; then
  echo "install-s3-server: moto_server $want not found in $venv/bin after installing" >&2
  exit 1
fi
echo "install-s3-server: moto_server $want in $venv/bin" >&2
