#!/bin/bash
# ringkit xen-vm, dom0 stage 2: PID 1 on overlay(host / over 9p read-only + tmpfs).
# Loads the Xen device modules, mounts xenfs, starts xenstored, xen-init-dom0 and xenconsoled
# from the unpacked Xen packages, runs /xshare/cmd with the host's PATH, cwd and chosen
# environment, writes its exit code to /xshare/rc, collects logs into /xshare/logs, powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
S=/xshare
. $S/boot.env        # RK_XENROOT RK_XENVER
ts() { echo "[stage2] $(cut -d' ' -f1 /proc/uptime)s $*"; }
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mkdir -p /run/xen /run/xenstored /var/lib/xenstored /var/lib/xen /var/log/xen/console /run/lock
ts start
# host directories shared read-write at their own paths ("tag path" per line)
if [ -f $S/mounts ]; then
  while read -r tag path; do
    mkdir -p "$path"
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 "$tag" "$path" || ts "mount $tag $path failed"
  done < $S/mounts
fi
mkdir -p /lib/modules && mount --bind "$RK_XENROOT/lib/modules" /lib/modules
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs; do
  busybox modprobe $m || ts "modprobe $m failed"
done
mkdir -p /proc/xen; mount -t xenfs xenfs /proc/xen
# Xen's userland, from the unpacked packages, copied into the tmpfs overlay
cp -a "$RK_XENROOT/usr/lib/xen-$RK_XENVER" /usr/lib/
cp -a "$RK_XENROOT"/usr/lib/x86_64-linux-gnu/libxen* "$RK_XENROOT"/usr/lib/x86_64-linux-gnu/libxl* \
      "$RK_XENROOT"/usr/lib/x86_64-linux-gnu/libyajl* /usr/lib/x86_64-linux-gnu/
cp -a "$RK_XENROOT/etc/xen" /etc/; cp -a "$RK_XENROOT"/usr/bin/xenstore* /usr/bin/
export PATH=/usr/lib/xen-$RK_XENVER/bin:$PATH
xenstored --pid-file=/run/xenstored.pid || ts "xenstored failed"
xen-init-dom0 >/dev/null || ts "xen-init-dom0 failed"
# guest consoles are logged straight into the run directory: the host can follow them live
mkdir -p $S/logs/console
xenconsoled --log=guest --log-dir=$S/logs/console || ts "xenconsoled failed"
ts "dom0 ready"
cut -d' ' -f1 /proc/uptime > $S/ready
if [ -f $S/cmd ]; then
  (
    . $S/cmd.env       # the command's environment: PATH, cwd, RINGKIT_XEN_VM*, user variables
    export PATH="/usr/lib/xen-$RK_XENVER/bin:$PATH"
    cd "$RK_CWD" 2>/dev/null || cd /
    exec bash $S/cmd </dev/null >$S/out.log 2>&1
  )
  rc=$?
  echo "$rc" > $S/rc.tmp && mv $S/rc.tmp $S/rc
  ts "command exit code $rc"
else
  ( . $S/cmd.env; cd "$RK_CWD" 2>/dev/null || cd /; export PATH="/usr/lib/xen-$RK_XENVER/bin:$PATH"
    setsid -c bash -i </dev/hvc0 >/dev/hvc0 2>&1 )
fi
xl dmesg > $S/logs/xen-dmesg.log 2>&1
dmesg > $S/logs/dom0-dmesg.log 2>&1
xl list > $S/logs/xl-list.log 2>&1
cp -a /var/log/xen/. $S/logs/xen-logs/ 2>/dev/null
sync
ts poweroff
busybox poweroff -f
