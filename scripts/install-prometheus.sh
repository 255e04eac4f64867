#!/usr/bin/env bash
# Fetches the reference Prometheus 3.5.3 and promtool (Debian sid packages) into a
# git-ignored cache folder, without touching the system's apt state.
# Prints nothing but progress on stderr; exits non-zero with a clear message on failure.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ORRERY_CACHE:-$root/.cache}
dest=$cache/prometheus
want=${ORRERY_PROMETHEUS_VERSION:-3.5.3}

have_version() {
  [ -x "$dest/usr/bin/prometheus" ] && [ -x "$dest/usr/bin/promtool" ] &&
    "$dest/usr/bin/prometheus" --version 2>&1 | head -1 | grep -q "version $want"
}

if have_version; then
  echo "prometheus $want already in $dest" >&2
  exit 0
fi

# Reuse the mirror URI of the machine's own Debian sources; never hard-code a host.
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  uri=$(awk '/^URIs:/ {print $2; exit}' "$f")
  if [ -n "$uri" ] && grep -q -E '^Suites:.*\b(bookworm|trixie|sid|stable|testing|unstable)\b' "$f" &&
     ! echo "$uri" | grep -q security; then
    mirror=$uri
    keyring=$(awk '/^Signed-By:/ {print $2; exit}' "$f")
    break
  fi
done
if [ -z "$mirror" ]; then
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
    [ -f "$f" ] || continue
    uri=$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' "$f")
    if [ -n "$uri" ]; then mirror=$uri; break; fi
  done
fi
if [ -z "$mirror" ]; then
  echo "install-prometheus: no Debian mirror found in /etc/apt/sources.list.d/ to fetch prometheus $want from" >&2
  exit 1
fi
keyring=${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}

work=$cache/apt
mkdir -p "$work/lists/partial" "$work/archives/partial" "$dest"
list=$work/sid.list
echo "deb [signed-by=$keyring] $mirror sid main" > "$list"
aptopts=(-o "Dir::Etc::SourceList=$list" -o "Dir::Etc::SourceParts=-" -o "Dir::State::Lists=$work/lists"
         -o "Dir::Cache=$work" -o "Dir::Cache::archives=$work/archives" -o "APT::Get::List-Cleanup=0")
echo "install-prometheus: apt-get update (private sid list from $mirror)" >&2
apt-get "${aptopts[@]}" -q update >&2
cd "$work/archives"
rm -f prometheus_*.deb promtool_*.deb
echo "install-prometheus: downloading prometheus and promtool" >&2
apt-get "${aptopts[@]}" -q download prometheus promtool >&2
for deb in prometheus_*.deb promtool_*.deb; do
  dpkg-deb -x "$deb" "$dest"
done
if ! have_version; then
  echo "install-prometheus: got $("$dest/usr/bin/prometheus" --version 2>&1 | head -1), wanted $want" >&2
  exit 1
fi
echo "install-prometheus: prometheus $want and promtool in $dest/usr/bin" >&2
