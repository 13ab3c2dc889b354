# The domU's half of tests/xen/test_interop_blkfront.py (busybox sh; run as the domU's command).
#
# Linux's own xen-blkfront is the frontend of a disk that ringkit's block backend serves from
# dom0.  Two connections, so that together they cover what blkfront can negotiate:
#   1. blkfront loaded with a multi-page ring (order 2) and two queues; ringkit's backend offers
#      everything, so indirect requests and persistent grants are used too: discard a written
#      range and check it reads back as zeros, mke2fs, mount, write files of random content,
#      fstrim, sync, umount; report "written" and wait for dom0 to detach the disk;
#   2. dom0 re-attaches the same file with a new backend that offers none of those (one ring
#      page, one queue, no indirect requests, no persistent grants): mount it and check every
#      file's checksum; report "verified" and wait for the second detach.
# Progress goes to dom0 through xenstore (data/blkfront-phase, which the domU may write); the
# verdict is this script's exit status.  Environment from dom0: BLKFRONT_TOKEN (a line for the
# marker file, which dom0 then finds in the image file), BLKFRONT_SECTORS (the disk's size) and
# BLKFRONT_CRC32C (the crc32c_generic module that dom0 copied in: the image lacks it).

set -u
DEV=/dev/xvda
SYS=/sys/block/xvda
MNT=/mnt/disk
WAIT_SECONDS=240

say() { echo "guest: $*"; }
fail() {
    echo "guest: FAIL: $*"
    ls -l /dev/xvd* /sys/block/ 2>&1 | sed 's/^/guest: /'
    exit 1
}
run() { "$@" || fail "$* exited with $?"; }
phase() { run xenstore-write data/blkfront-phase "$1"; say "phase $1"; }

# wait_for present|absent: until the disk is there (device node and sysfs) or gone
wait_for() {
    n=$((WAIT_SECONDS * 4))
    while [ "$n" -gt 0 ]; do
        if [ -b "$DEV" ] && [ -e "$SYS" ]; then have=present; else have=absent; fi
        [ "$have" = "$1" ] && return 0
        usleep 250000
        n=$((n - 1))
    done
    fail "$DEV still not $1 after ${WAIT_SECONDS}s"
}

# what Linux made of the backend's offer: hardware queues and request limits
report() {
    q=$SYS/queue
    say "connection $1: hw_queues=$(ls $SYS/mq | wc -l) max_segments=$(cat $q/max_segments)" \
        "max_hw_sectors_kb=$(cat $q/max_hw_sectors_kb)" \
        "discard_granularity=$(cat $q/discard_granularity) write_cache=$(cat $q/write_cache)"
}

mount_disk() {
    run mkdir -p "$MNT"
    mount -t ext2 "$DEV" "$MNT" 2>/dev/null || run mount -t ext4 "$DEV" "$MNT"
}

# Kernel errors (blkfront's complaints about its backend) go to the console too, and while
# blkfront connects also its summary of the features it uses.  (busybox's dmesg is not used:
# it has crashed in these domUs.)
quiet_kernel() { echo 4 > /proc/sys/kernel/printk; }
tell_features() { echo 7 > /proc/sys/kernel/printk; }
quiet_kernel
[ -n "${BLKFRONT_TOKEN:-}" ] && [ -n "${BLKFRONT_SECTORS:-}" ] && [ -n "${BLKFRONT_CRC32C:-}" ] ||
    fail "no job environment"
# ext4 (which mounts ext2 here) cannot mount anything without a crc32c driver
grep -q crc32c /proc/crypto || run insmod "$BLKFRONT_CRC32C"

# ---- connection 1
tell_features
run modprobe xen_blkfront max_ring_page_order=2 max_queues=2
wait_for present
quiet_kernel
report 1
[ "$(cat $SYS/size)" = "$BLKFRONT_SECTORS" ] || fail "size $(cat $SYS/size), not $BLKFRONT_SECTORS"

# discard: a written MiB must read back as zeros (ringkit punches a hole in the image)
run dd if=/dev/urandom of=/tmp/noise bs=65536 count=16 2>/dev/null
run dd if=/dev/zero of=/tmp/zeros bs=65536 count=16 2>/dev/null
run dd if=/tmp/noise of=$DEV bs=65536 count=16 seek=32 conv=fsync 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
run dd if=$DEV of=/tmp/back bs=65536 count=16 skip=32 2>/dev/null
run cmp /tmp/back /tmp/noise
run blkdiscard -o 2097152 -l 1048576 $DEV
echo 3 > /proc/sys/vm/drop_caches
run dd if=$DEV of=/tmp/back bs=65536 count=16 skip=32 2>/dev/null
cmp /tmp/back /tmp/zeros >/dev/null || fail "a discarded range does not read back as zeros"
say "discard ok"

# while the disk is in use: requests in flight every 20 s, in case something stalls
(while sleep 20; do say "in flight (reads writes): $(cat $SYS/inflight 2>/dev/null)"; done) &
watchdog=$!
trap 'kill $watchdog 2>/dev/null' EXIT
say "mke2fs"
mke2fs -b 4096 -L ringkit $DEV > /tmp/mke2fs.log 2>&1 || { cat /tmp/mke2fs.log; fail "mke2fs"; }
magic=$(dd if=$DEV bs=2 skip=540 count=1 2>/dev/null | hexdump -e '1/2 "%04x"')
[ "$magic" = ef53 ] || fail "no ext2 magic on the device after mke2fs (read $magic)"
mount_disk
say "writing files"
run dd if=/dev/urandom of=$MNT/a.bin bs=1048576 count=3 2>/dev/null
run dd if=/dev/urandom of=$MNT/b.bin bs=4096 count=517 2>/dev/null
run dd if=/dev/urandom of=$MNT/c.bin bs=1048576 count=4 2>/dev/null
run mkdir $MNT/sub
run dd if=/dev/urandom of=$MNT/sub/d.bin bs=1000 count=77 2>/dev/null
for i in 1 2 3 4 5 6 7 8; do echo "$BLKFRONT_TOKEN"; done > $MNT/marker.txt
# a file that is written, synced and deleted: fstrim then discards its blocks
run dd if=/dev/urandom of=$MNT/junk.bin bs=1048576 count=2 2>/dev/null
run sync
run rm $MNT/junk.bin
(cd $MNT && md5sum a.bin b.bin c.bin sub/d.bin marker.txt) > /tmp/sums || fail "md5sum"
cat /tmp/sums | sed 's/^/guest: sum /'
say "sync"
run sync
fstrim -v $MNT > /tmp/fstrim.log 2>&1 || { cat /tmp/fstrim.log; fail "fstrim"; }
sed 's/^/guest: fstrim: /' /tmp/fstrim.log
run sync
run umount $MNT
phase written

wait_for absent
say "xvda went away"
tell_features
phase detached

# ---- connection 2: a new backend serving the same file
wait_for present
quiet_kernel
report 2
echo 3 > /proc/sys/vm/drop_caches
mount_disk
(cd $MNT && md5sum -c /tmp/sums) > /tmp/check 2>&1
rc=$?
sed 's/^/guest: check /' /tmp/check
[ "$rc" = 0 ] || fail "checksums differ after re-attach"
[ "$(wc -c < $MNT/c.bin)" -eq 4194304 ] || fail "c.bin has the wrong size"
run umount $MNT
say "verified"
phase verified

wait_for absent
say "xvda went away again"
exit 0
