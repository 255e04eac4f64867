#!/usr/bin/env bash
# Fetches, into a git-ignored cache folder and without touching the system's apt state:
#   - the reference Prometheus 3.5.3 and promtool (Debian sid packages) into
#     $cache/prometheus/usr/bin/;
#   - Debian 12 (bookworm)'s own prometheus 2.42, an older remote-write client, into
#     $cache/prometheus-bookworm/usr/bin/.
# Each part is skipped when its binary of the wanted version is already there.
# Prints nothing but progress on stderr; exits non-zero with a clear message on failure.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ORRERY_CACHE:-$root/.cache}
dest=$cache/prometheus
want=${ORRERY_PROMETHEUS_VERSION:-3.5.3}
dest_bookworm=$cache/prometheus-bookworm
want_bookworm=${ORRERY_PROMETHEUS_BOOKWORM_VERSION:-2.42}

# have_version DIR VERSION BINARY...: every BINARY is in DIR/usr/bin and prometheus says VERSION.
have_version() {
  local dir=$1 version=$2
  shift 2
  for b in "$@"; do
    [ -x "$dir/usr/bin/$b" ] || return 1
  done
  "$dir/usr/bin/prometheus" --version 2>&1 | head -1 | grep -q "version $version"
}

need_sid=1
need_bookworm=1
if have_version "$dest" "$want" prometheus promtool; then
  echo "prometheus $want already in $dest" >&2
  need_sid=0
fi
if have_version "$dest_bookworm" "$want_bookworm" prometheus; then
  echo "prometheus $want_bookworm (bookworm) already in $dest_bookworm" >&2
  need_bookworm=0
fi
if [ "$need_sid" = 0 ] && [ "$need_bookworm" = 0 ]; then
  exit 0
fi

# Reuse the mirror URI of the machine's own Debian sources; never hard-code a host.
. "$root/scripts/lib/apt-private.sh"
if ! find_mirror; then
  echo "install-prometheus: cannot fetch prometheus without a Debian mirror" >&2
  exit 1
fi

# fetch SUITE WORKDIR DEST PACKAGE...: a private apt state (its own sources list and
# lists dir under WORKDIR) for SUITE on the mirror, `apt-get download` of the packages
# and `dpkg-deb -x` of each into DEST.
fetch() {
  local suite=$1 work=$2 into=$3
  shift 3
  mkdir -p "$into"
  apt_private "$work" "deb [signed-by=$keyring] $mirror $suite main"
  echo "install-prometheus: apt-get update (private $suite list from $mirror)" >&2
  apt-get "${aptopts[@]}" -q update >&2
  (
    cd "$work/archives"
    for p in "$@"; do rm -f "${p}"_*.deb; done
    echo "install-prometheus: downloading $* ($suite)" >&2
    apt-get "${aptopts[@]}" -q download "$@" >&2
    for p in "$@"; do
      for deb in "${p}"_*.deb; do
        dpkg-deb -x "$deb" "$into"
      done
    done
  )
}

if [ "$need_sid" = 1 ]; then
  fetch sid "$cache/apt" "$dest" prometheus promtool
  if ! have_version "$dest" "$want" prometheus promtool; then
    echo "install-prometheus: got $("$dest/usr/bin/prometheus" --version 2>&1 | head -1), wanted $want" >&2
    exit 1
  fi
  echo "install-prometheus: prometheus $want and promtool in $dest/usr/bin" >&2
fi

if [ "$need_bookworm" = 1 ]; then
  fetch bookworm "$cache/apt-bookworm" "$dest_bookworm" prometheus
  if ! have_version "$dest_bookworm" "$want_bookworm" prometheus; then
    echo "install-prometheus: got $("$dest_bookworm/usr/bin/prometheus" --version 2>&1 | head -1) from bookworm, wanted $want_bookworm" >&2
    exit 1
  fi
  echo "install-prometheus: prometheus $want_bookworm (bookworm) in $dest_bookworm/usr/bin" >&2
fi
