# Sourced by the install scripts: a private apt state (own sources list, lists and
# archives under a work dir of the git-ignored cache) on the mirror the machine's own apt
# sources use, so that nothing touches the system's apt state and no host is hard-coded.
#
#   find_mirror            sets $mirror and $keyring (exits 1 with a message if none)
#   apt_private WORK LINE  writes LINE (a "deb ..." or "deb-src ..." entry) as WORK's only
#                          source and sets the array $aptopts for apt-get/apt-cache

find_mirror() {
  mirror=""
  keyring=""
  local f uri
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
    echo "no Debian mirror found in /etc/apt/sources.list.d/ or /etc/apt/sources.list" >&2
    return 1
  fi
  keyring=${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}
}

apt_private() {
  local work=$1 line=$2
  mkdir -p "$work/lists/partial" "$work/archives/partial"
  local list=$work/sources.list
  echo "$line" > "$list"
  aptopts=(-o "Dir::Etc::SourceList=$list" -o "Dir::Etc::SourceParts=-"
           -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work"
           -o "Dir::Cache::archives=$work/archives" -o "APT::Get::List-Cleanup=0")
}
