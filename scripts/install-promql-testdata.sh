#!/usr/bin/env bash
# Fetches Prometheus's own PromQL test scripts (promql/promqltest/testdata/*.test) of the
# reference version into the git-ignored cache, $cache/promql-testdata/, where the
# conformance runner (promql/tests/promqltest.rs) reads them.
#
# Source: the upstream tarball `prometheus_<version>+ds1.orig.tar.xz` of Debian's source
# package `prometheus` in sid, through a private apt state with a deb-src entry on the
# mirror the machine's own apt sources use (never a hard-coded host). The tarball's SHA-256
# is checked against the signed Sources index; a partial or corrupt download is refused,
# deleted and fetched again. Only the testdata (with LICENSE and NOTICE) is extracted.
#
# Idempotent and offline-safe once done: when $cache/promql-testdata/SOURCE names the
# wanted version and every file listed in it still has its checksum, nothing is fetched;
# when only the extracted files are damaged, they are extracted again from the cached,
# re-verified tarball.
#
# Prints progress on stderr; exits non-zero with a clear message on failure.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ORRERY_CACHE:-$root/.cache}
want=${ORRERY_PROMETHEUS_VERSION:-3.5.3}
dest=$cache/promql-testdata
work=$cache/apt-src
src=$work/src
say() { echo "install-promql-testdata: $*" >&2; }

# The extracted copy is complete and unchanged: SOURCE names $want and its manifest checks.
have_testdata() {
  [ -f "$dest/SOURCE" ] || return 1
  grep -q "^version $want\$" "$dest/SOURCE" || return 1
  local n
  n=$(grep -c '^[0-9a-f]\{64\}  .*\.test$' "$dest/SOURCE" || true)
  [ "$n" -gt 0 ] || return 1
  (cd "$dest" && grep '^[0-9a-f]\{64\}  ' SOURCE | sha256sum --quiet --strict -c - >/dev/null 2>&1)
}

if have_testdata; then
  say "PromQL test data of prometheus $want already in $dest"
  exit 0
fi

. "$root/scripts/lib/apt-private.sh"

# orig_entry: prints "VERSION SHA256 SIZE FILE" of the orig tarball of source version $want+ds*
# from the private Sources index (empty when the index does not have it).
orig_entry() {
  apt-cache "${aptopts[@]}" showsrc prometheus 2>/dev/null | awk -v want="$want" '
    /^Package: / { ver = ""; sums = 0 }
    /^Version: / { ver = $2; sums = 0; next }
    /^Checksums-Sha256:/ { sums = 1; next }
    /^[^ ]/ { sums = 0 }
    sums && ver != "" && index(ver, want "+") == 1 && $3 ~ /\.orig\.tar\.(xz|gz|bz2)$/ {
      print ver, $1, $2, $3; exit
    }'
}

mirror_known=0
if [ -f "$work/sources.list" ]; then
  # A cached index from an earlier run: use it first so a re-extraction needs no network.
  aptopts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=-"
           -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work"
           -o "Dir::Cache::archives=$work/archives" -o "APT::Get::List-Cleanup=0")
  mirror_known=1
fi
entry=""
[ "$mirror_known" = 1 ] && entry=$(orig_entry || true)
update_index() {
  if ! find_mirror; then
    say "cannot fetch the PromQL test data without a Debian mirror"
    exit 1
  fi
  apt_private "$work" "deb-src [signed-by=$keyring] $mirror sid main"
  say "apt-get update (private sid deb-src list from $mirror)"
  if ! apt-get "${aptopts[@]}" -q update >&2; then
    say "apt-get update of the private deb-src list failed (offline?)"
    exit 1
  fi
  entry=$(orig_entry || true)
}
[ -n "$entry" ] || { update_index; updated=1; }
if [ -z "$entry" ]; then
  say "Debian sid's Sources index has no prometheus source of version $want (sid may have moved on)"
  exit 1
fi
read -r version sha size file <<<"$entry"
mkdir -p "$src"
tarball=$src/$file

# tarball_ok: the cached tarball has the index's size and SHA-256.
tarball_ok() {
  [ -f "$tarball" ] || return 1
  [ "$(stat -c %s "$tarball")" = "$size" ] || return 1
  [ "$(sha256sum "$tarball" | cut -d' ' -f1)" = "$sha" ]
}

if [ -f "$tarball" ] && ! tarball_ok; then
  say "refusing the cached $file: its size or SHA-256 does not match the Sources index (partial or corrupt download); fetching it again"
  rm -f "$tarball"
fi
# download: fetches the orig tarball of $version into $src. Only that file is needed: the
# .dsc and the Debian tarball of the same source version are sometimes missing from the
# mirror, which makes apt-get exit non-zero, so its status is not what decides.
download() {
  say "downloading $file (source package prometheus $version, sid)"
  (cd "$src" && apt-get "${aptopts[@]}" -q source --download-only "prometheus=$version" >&2) || true
  tarball_ok && return 0
  rm -f "$tarball"
  return 1
}
if ! tarball_ok && ! download; then
  if [ "$mirror_known" = 1 ] && [ -z "${updated:-}" ]; then
    # The cached index may be stale (the mirror no longer has that file): refresh, retry.
    update_index
    read -r version sha size file <<<"$entry"
    tarball=$src/$file
    download || true
  fi
  if ! tarball_ok; then
    say "download of $file failed or does not match the Sources index (want $size bytes, sha256 $sha)"
    exit 1
  fi
fi
say "$file: $size bytes, sha256 $sha (matches the Sources index)"

tmp=$(mktemp -d "$cache/promql-testdata.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
top="prometheus-$want"
tar -xf "$tarball" -C "$tmp" "$top/promql/promqltest/testdata" "$top/LICENSE" "$top/NOTICE"
out=$tmp/out
mkdir "$out"
cp "$tmp/$top/promql/promqltest/testdata/"*.test "$tmp/$top/LICENSE" "$tmp/$top/NOTICE" "$out/"
count=$(find "$out" -name '*.test' | wc -l)
if [ "$count" -eq 0 ]; then
  say "$file has no promql/promqltest/testdata/*.test"
  exit 1
fi
{
  echo "# Prometheus's PromQL test scripts, extracted by scripts/install-promql-testdata.sh"
  echo "version $want"
  echo "from $file (Debian source package prometheus, sid) sha256 $sha"
  (cd "$out" && sha256sum -- *.test LICENSE NOTICE)
} > "$out/SOURCE"
rm -rf "$dest.old"
[ -e "$dest" ] && mv "$dest" "$dest.old"
mv "$out" "$dest"
rm -rf "$dest.old"
say "$count PromQL test files of prometheus $want in $dest"
