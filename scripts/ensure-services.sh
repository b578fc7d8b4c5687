#!/usr/bin/env bash
# Installs the real services the tests run against when they are missing: promtool (Debian package
# prometheus), nats-server, and openssl for test certificates. Needs root or sudo and the Debian archive; does nothing when both
# are already on the PATH.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)   # the security tests make certificates
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=(); elif command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
  echo "ensure-services: tests need ${need[*]} (Debian packages); install them as root: apt-get install ${need[*]}" >&2
  exit 1
fi
echo "ensure-services: installing ${need[*]}" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
