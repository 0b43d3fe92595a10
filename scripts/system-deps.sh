#!/usr/bin/env bash
# Installs the Debian packages that the demo and the tests need, once: a no-op when all are present.
# Usage: scripts/system-deps.sh   (needs root when something is missing)
set -euo pipefail
# docs/development.md lists which command needs which package (tests/tools.py checks them before a test run).
# podman: `make image` (packaging/image.py) and the package tier's image test; runc: the runtime podman
# needs on cgroup v1/hybrid hosts, where crun refuses to start containers.
# nftables: only the tests' inspector (`nft list ruleset`); vmagent itself never runs nft.
pkgs=(python3 python3-venv python3-dev gcc pkg-config libsystemd-dev iptables nftables iproute2 procps
      passwd mawk systemd debootstrap systemd-container rpm rpmlint lintian curl ca-certificates make git
      bind9-dnsutils prometheus faketime wabt chromium chromium-driver
      openssh-client podman runc)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# kubectl (tests/kube): the machine image's `kubectl` package (clients 1.27-1.33) provides /usr/bin/kubectl;
# where it is absent, Debian's kubernetes-client (older, conflicts with it) is the one the archive has.
command -v kubectl >/dev/null || missing+=(kubernetes-client)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "system-deps: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
