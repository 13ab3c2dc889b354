#!/bin/busybox sh
# ringkit xen-vm, dom0 stage 1 (PID 1 of a busybox initramfs).
# Loads the virtio/9p/overlay modules listed in /modules.list (dependencies first), mounts the
# host's / read-only over 9p under a tmpfs overlay, moves the per-run share to /xshare and
# switch_roots into the overlay, running /xshare/stage2.sh as PID 1.
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "[stage1] $(cut -d' ' -f1 /proc/uptime)s loading modules"
while read -r m; do
  insmod "/mods/$m.ko" || echo "[stage1] insmod $m failed"
done < /modules.list
fail() { echo "[stage1] FATAL: $*"; sleep 1; poweroff -f; }
mkdir -p /lower /upper /newroot /share
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot /lower || fail "mount hostroot"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 share /share || fail "mount share"
mount -t tmpfs -o size=75% tmpfs /upper; mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || fail "overlay"
mkdir -p /newroot/xshare; mount --move /share /newroot/xshare
umount /proc /sys; umount /dev 2>/dev/null
echo "[stage1] switch_root"
exec switch_root /newroot /bin/bash /xshare/stage2.sh
