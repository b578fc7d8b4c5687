#!/usr/bin/env bash
# Installs what the tests run against when it is missing, from Debian:
#   - promtool and the Prometheus server (package prometheus), nats-server, openssl (the security
#     tests make certificates);
#   - a Vulkan driver Dawn can use, so the webgpu engine's tests run on machines without a GPU:
#     Mesa's lavapipe (llvmpipe adapter) from bookworm-backports (Mesa 25; bookworm's own Mesa 22.3
#     lacks a feature Dawn needs) and the Vulkan loader libvulkan1. The only change made to the
#     machine's apt configuration is adding the bookworm-backports suite
#     (/etc/apt/sources.list.d/tricaps-bookworm-backports.sources) when no source lists it; packages
#     are taken from it only by the explicit `-t bookworm-backports` of this install.
# Needs root or sudo and the Debian archive; does nothing when everything is present. On a machine
# that is not Debian bookworm the Vulkan step is skipped with a note (the webgpu tests then skip
# with their reason).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
need=()
# The prometheus package: promtool (metric and rule checks) and the server (the live dashboard test).
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need+=(prometheus)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)

# Lavapipe: a Mesa Vulkan driver of major version 23 or later, and the loader.
mesa_major() { dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | sed -E 's/^([0-9]+:)?([0-9]+).*/\2/'; }
want_vulkan=0
if [ "$(mesa_major || true)" = "" ] || [ "$(mesa_major)" -lt 23 ] || ! dpkg-query -W -f='${Status}' libvulkan1 2>/dev/null | grep -q 'ok installed'; then
  if grep -qs 'VERSION_CODENAME=bookworm' /etc/os-release; then
    want_vulkan=1
  else
    echo "ensure-services: not Debian bookworm: not installing Mesa's lavapipe (the webgpu tests skip without a Vulkan adapter)" >&2
  fi
fi
[ ${#need[@]} -eq 0 ] && [ $want_vulkan -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then sudo=(); elif command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
  echo "ensure-services: tests need ${need[*]} and Mesa's lavapipe (Debian packages); install them as root:" >&2
  echo "  apt-get install ${need[*]}; apt-get install -t bookworm-backports mesa-vulkan-drivers libvulkan1" >&2
  exit 1
fi
if [ $want_vulkan -eq 1 ] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "ensure-services: adding the bookworm-backports suite to apt (for Mesa 25's lavapipe)" >&2
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
    "${sudo[@]}" tee /etc/apt/sources.list.d/tricaps-bookworm-backports.sources >/dev/null
fi
"${sudo[@]}" apt-get update -qq
export DEBIAN_FRONTEND=noninteractive
if [ ${#need[@]} -gt 0 ]; then
  echo "ensure-services: installing ${need[*]}" >&2
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ $want_vulkan -eq 1 ]; then
  echo "ensure-services: installing Mesa's lavapipe (mesa-vulkan-drivers, libvulkan1) from bookworm-backports" >&2
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
fi
