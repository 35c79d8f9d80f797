#!/usr/bin/env bash
# Installs the Debian 12 packages mqpki needs to build, test and run, and only those missing.
# Idempotent; works as root or through sudo. Set MQPKI_DEPS_EXTRA to add packages (e.g. bench tools).
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config
  libssl-dev openssl
  softhsm2 libp11-kit-dev
  libmicrohttpd-dev libgnutls28-dev
  libsqlite3-dev sqlite3
  libpq-dev postgresql-15
  libmosquitto-dev mosquitto-dev mosquitto mosquitto-clients
  libcurl4-openssl-dev curl
  libjansson-dev libinih-dev libarchive-dev
  libcmocka-dev jq python3 strace procps python3-prometheus-client
  man-db groff-base
  chromium fonts-dejavu-core
)
# shellcheck disable=SC2206
pkgs+=(${MQPKI_DEPS_EXTRA:-})

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The Debian mosquitto package starts a system broker on port 1883; mqpki runs its own brokers.
if [[ " ${missing[*]} " == *" mosquitto "* ]] && command -v systemctl >/dev/null; then
  $sudo systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
# Likewise PostgreSQL's default cluster: the tests start private servers (tests/integration/lib.sh).
if [[ " ${missing[*]} " == *" postgresql-15 "* ]] && command -v systemctl >/dev/null; then
  $sudo systemctl disable --now postgresql >/dev/null 2>&1 || true
fi
