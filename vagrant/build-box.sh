#!/usr/bin/env bash
# Builds the Vagrant box of the VM harness (vagrant/Vagrantfile, tests/vagrant/): a Debian 12 root file
# system made with debootstrap, written as an ext4 disk (no partition table, no boot loader) and booted
# by libvirt with the kernel and initrd taken from that tree. Nothing is downloaded but Debian packages.
#
# Usage (as root): vagrant/build-box.sh
# The result is cached by its inputs (this script, suite, mirror, package list) in
#   $VMAGENT_CACHE/vagrant-box-<key>/   (VMAGENT_CACHE defaults to /var/cache/vmagent-dev)
# and $VMAGENT_CACHE/vagrant-box is a symlink to the newest one. A finished build (marked .ready) is
# reused; a missing or unfinished one is rebuilt. Each build directory holds:
#   box-name               the box's name in Vagrant (vmagent-debian12-<key>)
#   <box-name>.box         metadata.json + box.img (qcow2) + the box's Vagrantfile
#   vagrant_ed25519[.pub]  the key of user "vagrant" inside the box (the box has no insecure key)
#   vmlinuz, initrd.img    the kernel and initrd, also copied to $BOOT_DIR/<box-name>-{vmlinuz,initrd.img}
# BOOT_DIR (default /var/lib/libvirt/boot) must be readable by the qemu process (libvirt-qemu).
# The script prints the build directory on its last line of output.
set -euo pipefail

CACHE=${VMAGENT_CACHE:-/var/cache/vmagent-dev}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
DISK_SIZE=${DISK_SIZE:-4G}
BOOT_DIR=${BOOT_DIR:-/var/lib/libvirt/boot}
# What the VMs need: systemd (the agent's unit), sshd + sudo + python3-apt (Ansible's apt module), the
# vmagent packages' dependencies (python3.11, iptables), curl (the plain client of the join scenario).
PACKAGES=systemd-sysv,libnss-myhostname,systemd-resolved,udev,dbus,kmod,openssh-server,sudo,python3,python3.11,python3-apt,iproute2,iptables,iputils-ping,ca-certificates,procps,curl

say() { echo "[build-box $(date +%T)] $*" >&2; }
[ "$(id -u)" -eq 0 ] || { echo "build-box.sh: run as root (debootstrap, chroot)" >&2; exit 1; }
for tool in debootstrap qemu-img mkfs.ext4 ssh-keygen sha256sum; do
  command -v "$tool" >/dev/null || { echo "build-box.sh: $tool is missing: run vagrant/deps.sh" >&2; exit 1; }
done

key=$( { cat "$0"; echo "$SUITE $MIRROR $DISK_SIZE $PACKAGES"; } | sha256sum | cut -c1-12)
NAME=vmagent-debian12-$key
OUT=$CACHE/vagrant-box-$key
mkdir -p "$CACHE"
exec 9>"$CACHE/vagrant-box.lock"
flock 9
if [ -e "$OUT/.ready" ] && [ -e "$BOOT_DIR/$NAME-vmlinuz" ] && [ -e "$BOOT_DIR/$NAME-initrd.img" ]; then
  ln -sfn "$OUT" "$CACHE/vagrant-box"
  echo "$OUT"
  exit 0
fi
rm -rf "$OUT"
mkdir -p "$OUT"
ROOT=$OUT/rootfs
cleanup() { umount "$ROOT/proc" 2>/dev/null || true; }
trap cleanup EXIT

say "debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 \
  || { tail -30 "$OUT/debootstrap.log" >&2; exit 1; }

say "kernel and initrd"
# systemd-resolved left /etc/resolv.conf as a link to /run, which is empty in the chroot: apt needs DNS.
rm -f "$ROOT/etc/resolv.conf"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
mount --bind /proc "$ROOT/proc"
# MODULES=most (initramfs-tools' default) puts virtio_blk, virtio_net, virtio_pci and ext4 in the initrd.
DEBIAN_FRONTEND=noninteractive chroot "$ROOT" apt-get install -y -q --no-install-recommends \
  linux-image-amd64 busybox >"$OUT/kernel.log" 2>&1 || { tail -30 "$OUT/kernel.log" >&2; exit 1; }
chroot "$ROOT" apt-get clean
umount "$ROOT/proc"
kver=$(ls "$ROOT/lib/modules" | sort -V | tail -1)
cp "$ROOT/boot/vmlinuz-$kver" "$OUT/vmlinuz"
cp "$ROOT/boot/initrd.img-$kver" "$OUT/initrd.img"
# A headless VM loads no graphics, sound, wireless or media driver: drop them (about 40% of the modules).
for tree in drivers/gpu drivers/media drivers/infiniband drivers/net/wireless drivers/staging \
            drivers/bluetooth sound net/wireless net/mac80211; do
  rm -rf "$ROOT/lib/modules/$kver/kernel/$tree"
done
chroot "$ROOT" depmod "$kver"

say "configuration"
printf 'localhost\n' >"$ROOT/etc/hostname"   # the real name comes from systemd.hostname= on the cmdline
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
echo "/dev/vda / ext4 defaults,errors=remount-ro 0 1" >"$ROOT/etc/fstab"
ln -sf /run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"

# User vagrant: passwordless sudo, logged in with this build's own key.
chroot "$ROOT" useradd --create-home --shell /bin/bash vagrant
echo 'vagrant ALL=(ALL) NOPASSWD:ALL' >"$ROOT/etc/sudoers.d/vagrant"
chmod 0440 "$ROOT/etc/sudoers.d/vagrant"
ssh-keygen -q -t ed25519 -N '' -C "vagrant@$NAME" -f "$OUT/vagrant_ed25519"
install -d -m 0700 "$ROOT/home/vagrant/.ssh"
install -m 0600 "$OUT/vagrant_ed25519.pub" "$ROOT/home/vagrant/.ssh/authorized_keys"
chroot "$ROOT" chown -R vagrant:vagrant /home/vagrant/.ssh
echo 'UseDNS no' >"$ROOT/etc/ssh/sshd_config.d/10-vagrant.conf"

# eth0 (net.ifnames=0 on the cmdline) is the management NIC: DHCP, client id from the MAC, since every
# VM of one box would otherwise send the same DUID and get the same lease. Vagrant writes the private
# network's eth1 file itself (it sees systemd-networkd running).
cat >"$ROOT/etc/systemd/network/10-eth0.network" <<'UNIT'
[Match]
Name=eth0

[Network]
DHCP=ipv4

[DHCPv4]
ClientIdentifier=mac
UNIT
chroot "$ROOT" systemctl enable systemd-networkd systemd-resolved ssh >/dev/null 2>&1
# Under software emulation these cost tens of seconds per boot and nothing here needs them.
chroot "$ROOT" systemctl mask systemd-networkd-wait-online.service e2scrub_reap.service \
  e2scrub_all.timer apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1

# Each VM its own identity: machine-id made at first boot, SSH host key (ed25519 only: RSA is slow
# under emulation) made before sshd starts.
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id" "$ROOT"/etc/ssh/ssh_host_*
cat >"$ROOT/etc/systemd/system/ssh-host-key.service" <<'UNIT'
[Unit]
Description=Make the SSH host key on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key

[Install]
WantedBy=multi-user.target
UNIT
chroot "$ROOT" systemctl enable ssh-host-key.service >/dev/null 2>&1

say "disk image"
raw=$OUT/disk.raw
truncate -s "$DISK_SIZE" "$raw"
mkfs.ext4 -q -F -L root -d "$ROOT" "$raw"
mkdir -p "$OUT/box"
qemu-img convert -O qcow2 "$raw" "$OUT/box/box.img"
rm -f "$raw"
rm -rf "$ROOT"
gib=$(qemu-img info --output=json "$OUT/box/box.img" | python3 -c \
  'import json,sys; print((json.load(sys.stdin)["virtual-size"] + (1 << 30) - 1) >> 30)')
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$gib" >"$OUT/box/metadata.json"
cat >"$OUT/box/Vagrantfile" <<'VF'
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = "qemu"
  end
end
VF
say "packing $NAME.box"
tar -C "$OUT/box" -czf "$OUT/$NAME.box" metadata.json Vagrantfile box.img
rm -rf "$OUT/box"
install -d -m 0755 "$BOOT_DIR"
install -m 0644 "$OUT/vmlinuz" "$BOOT_DIR/$NAME-vmlinuz"
install -m 0644 "$OUT/initrd.img" "$BOOT_DIR/$NAME-initrd.img"
echo "$NAME" >"$OUT/box-name"
touch "$OUT/.ready"
ln -sfn "$OUT" "$CACHE/vagrant-box"
say "done"
echo "$OUT"
