"""Module selection from modules.dep: dependencies first, built-ins skipped, errors named."""

from __future__ import annotations

import pytest

from ringkit import ConfigError
from ringkit.xenvm.kmod import ModuleIndex, module_name

DEP = """\
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko kernel/fs/fscache/fscache.ko
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/netfs/netfs.ko: kernel/fs/fscache/fscache.ko
kernel/fs/fscache/fscache.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/xen/xen-evtchn.ko.xz:
kernel/fs/overlayfs/overlay.ko:
"""
BUILTIN = "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_pci.ko\n"


def test_module_name_normalises() -> None:
    assert module_name("kernel/drivers/xen/xen-evtchn.ko.xz") == "xen_evtchn"
    assert module_name("9pnet_virtio.ko") == "9pnet_virtio"


def test_load_order_puts_dependencies_first_once() -> None:
    index = ModuleIndex.parse(DEP, BUILTIN)
    order = index.load_order(["9p", "9pnet_virtio", "overlay", "virtio_pci", "xen-evtchn"])
    assert order.index("fscache") < order.index("netfs") < order.index("9p")
    assert order.index("9pnet") < order.index("9pnet_virtio")
    assert "virtio_pci" not in order          # built in
    assert len(order) == len(set(order)) == 8
    assert index.paths["xen_evtchn"] == "kernel/drivers/xen/xen-evtchn.ko.xz"


def test_unknown_module_is_named() -> None:
    with pytest.raises(ConfigError, match="nosuchmod"):
        ModuleIndex.parse(DEP).load_order(["nosuchmod"])


def test_cycle_is_reported() -> None:
    index = ModuleIndex.parse("a.ko: b.ko\nb.ko: a.ko\n")
    with pytest.raises(ConfigError, match="cycle"):
        index.load_order(["a"])


def test_malformed_line_is_reported() -> None:
    with pytest.raises(ConfigError, match="line 2"):
        ModuleIndex.parse("a.ko:\nbroken\n")


def test_restricted_dep_file_keeps_only_chosen() -> None:
    index = ModuleIndex.parse(DEP, BUILTIN)
    chosen = index.load_order(["netfs"])
    text = index.dep_lines(chosen)
    assert text == ("kernel/fs/fscache/fscache.ko:\n"
                    "kernel/fs/netfs/netfs.ko: kernel/fs/fscache/fscache.ko\n")
    with pytest.raises(ConfigError, match="fscache"):
        index.dep_lines(["netfs"])
