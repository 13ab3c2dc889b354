"""A stand-in for qemu-system-x86_64 that plays dom0's side of the run-directory protocol.

It finds the per-run share in its -virtfs options and, depending on $FAKE_QEMU_MODE, runs the
command as stage 2 would (``ok``), stops without an exit code (``crash``), never comes up
(``never-ready``), comes up and hangs (``hang``), or crashes on its first boot only
(``crash-once``: the first boot leaves $FAKE_QEMU_STATE behind).  Lets the host side of
`ringkit xen-vm run` be tested without booting anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def main() -> int:
    args = sys.argv[1:]
    share = next(a.split("path=", 1)[1].split(",", 1)[0] for a in args
                 if "mount_tag=share" in a)
    mode = os.environ.get("FAKE_QEMU_MODE", "ok")
    print("Xen 4.17 (fake) booting", flush=True)
    if mode == "never-ready":
        time.sleep(60)
        return 0
    if mode == "crash-once":
        state = os.environ["FAKE_QEMU_STATE"]
        if not os.path.exists(state):
            open(state, "w").close()
            mode = "crash"
    if mode == "crash":
        print("(XEN) Panic on CPU 0: fake", flush=True)
        return 0
    with open(os.path.join(share, "ready"), "w") as f:
        f.write("1.0\n")
    if mode == "hang":
        time.sleep(60)
        return 0
    script = f'. {share}/cmd.env; cd "$RK_CWD"; exec bash {share}/cmd'
    with open(os.path.join(share, "out.log"), "wb") as out:
        rc = subprocess.run(["bash", "-c", script], stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, check=False).returncode
    with open(os.path.join(share, "rc"), "w") as f:
        f.write(f"{rc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
