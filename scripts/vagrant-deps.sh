#!/usr/bin/env bash
# Installs the Debian packages of the VM harness (vagrant/, tests/vagrant/, `make vagrant`), once: a no-op
# when all are present. They are not in scripts/system-deps.sh because `make test` does not boot VMs and
# libvirt + QEMU are large. Usage: scripts/vagrant-deps.sh   (needs root when something is missing)
set -euo pipefail
# docs/development.md lists which command needs which package (tests/tools.py: the "vagrant" tier).
pkgs=(vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients dnsmasq-base ebtables iptables
      debootstrap qemu-system-x86 qemu-utils e2fsprogs openssh-client)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "vagrant-deps: missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "vagrant-deps: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
