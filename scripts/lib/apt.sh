# The one way the scripts install a Debian package, sourced:
#
#   source "$(dirname "$0")/lib/apt.sh"
#   apt_install COMMAND PACKAGE...   installs PACKAGE... unless COMMAND is
#                                    already on PATH; fails (status 1, a
#                                    message naming COMMAND) if it still is
#                                    not after the install
#
# With sudo when not root; waits for another apt-get's lock (several
# scripts may install at once); refreshes the package lists only when the
# install fails without (they may be missing or stale on a fresh machine).

apt_install() {
  local cmd=$1
  shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -qq
    --no-install-recommends)
  if ! "${sudo[@]}" "${apt[@]}" install "$@" >/dev/null 2>&1; then
    "${sudo[@]}" "${apt[@]}" update >/dev/null
    "${sudo[@]}" "${apt[@]}" install "$@" >/dev/null
  fi
  command -v "$cmd" >/dev/null 2>&1 || {
    echo "apt_install: $cmd is still not on PATH after installing $*" >&2
    return 1
  }
}
