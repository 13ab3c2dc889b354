#!/ringkit/bin/busybox sh
# ringkit xen-vm: PID 1 of a harness domU (a PV guest whose root is an initramfs).
# Reads its job from xenstore, loads the Xen device modules, runs the job's command with its
# environment and cwd, prints its output on the console between two marker lines, stores the
# exit code in xenstore at data/ringkit-exit (relative to the domain's home) and powers off.
B=/ringkit/bin
$B/busybox --install -s $B
export PATH=$B:/usr/bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
# /tmp stays part of the (RAM) root: a tmpfs there would hide a project or venv under /tmp
mount -t tmpfs tmpfs /run
echo 1 > /proc/sys/kernel/printk
# the job (command, environment, modules): written by dom0 under our home while we were paused
# (-R: raw, the values hold newlines and quotes that must not be escaped)
mkdir -p /ringkit/job
for k in cmd env modules; do
  xenstore-read -R "ringkit-job/$k" > /ringkit/job/$k || echo "ringkit-domu: no ringkit-job/$k in xenstore"
done
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs $(cat /ringkit/job/modules 2>/dev/null); do
  modprobe "$m" || echo "ringkit-domu: modprobe $m failed"
done
mkdir -p /proc/xen; mount -t xenfs xenfs /proc/xen
ip link set lo up 2>/dev/null
echo "ringkit-domu: start"
(
  . /ringkit/job/env
  cd "$RK_CWD" 2>/dev/null || cd /
  exec sh /ringkit/job/cmd </dev/null
)
rc=$?
echo "ringkit-domu: exit=$rc"
xenstore-write data/ringkit-exit "$rc" || echo "ringkit-domu: could not store the exit code"
sync
poweroff -f
