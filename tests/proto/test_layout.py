"""ringkit.proto.layout against the C headers: every offset and size checked by a compiled program.

A small C program includes Xen's public io/ring.h, io/console.h and libxenvchan.h (Debian's
libxen-dev), prints ``name value`` for each offsetof/sizeof, and the test compares each line with
the constant of the same name in ringkit.proto.layout.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _tools import require_tools

from ringkit import ConfigError
from ringkit.proto import layout
from ringkit.proto.layout import RingLayout

INCLUDE = Path("/usr/include/xen/io")

PROGRAM = r"""
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#define mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define rmb() mb()
#define wmb() mb()
#include <xen/io/ring.h>
#include <xen/io/console.h>
#include <xen/io/libxenvchan.h>

struct req112 { uint8_t b[112]; } __attribute__((aligned(8)));
struct rsp16 { uint8_t b[16]; } __attribute__((aligned(8)));
DEFINE_RING_TYPES(t, struct req112, struct rsp16);

#define P(name, value) printf("%s %ld\n", name, (long)(value))

int main(void)
{
    P("SRING_REQ_PROD", offsetof(struct t_sring, req_prod));
    P("SRING_REQ_EVENT", offsetof(struct t_sring, req_event));
    P("SRING_RSP_PROD", offsetof(struct t_sring, rsp_prod));
    P("SRING_RSP_EVENT", offsetof(struct t_sring, rsp_event));
    P("SRING_PVT", offsetof(struct t_sring, pvt));
    P("SRING_PVT_SIZE", sizeof(((struct t_sring *)0)->pvt));
    P("SRING_PAD", offsetof(struct t_sring, __pad));
    P("SRING_PAD_SIZE", sizeof(((struct t_sring *)0)->__pad));
    P("SRING_HEADER_SIZE", offsetof(struct t_sring, ring));
    P("entries_4096", __CONST_RING_SIZE(t, 4096));
    P("entries_65536", __CONST_RING_SIZE(t, 65536));
    P("entries_1000", __CONST_RING_SIZE(t, 1000));

    P("CONSOLE_IN", offsetof(struct xencons_interface, in));
    P("CONSOLE_IN_SIZE", sizeof(((struct xencons_interface *)0)->in));
    P("CONSOLE_OUT", offsetof(struct xencons_interface, out));
    P("CONSOLE_OUT_SIZE", sizeof(((struct xencons_interface *)0)->out));
    P("CONSOLE_IN_CONS", offsetof(struct xencons_interface, in_cons));
    P("CONSOLE_IN_PROD", offsetof(struct xencons_interface, in_prod));
    P("CONSOLE_OUT_CONS", offsetof(struct xencons_interface, out_cons));
    P("CONSOLE_OUT_PROD", offsetof(struct xencons_interface, out_prod));
#ifdef XENCONSOLE_CONNECTED
    P("CONSOLE_CONNECTION", offsetof(struct xencons_interface, connection));
    P("XENCONSOLE_CONNECTED", XENCONSOLE_CONNECTED);
    P("XENCONSOLE_DISCONNECTED", XENCONSOLE_DISCONNECTED);
#else
    /* Older header without the byte: it goes right after out_prod. */
    P("CONSOLE_CONNECTION", sizeof(struct xencons_interface));
#endif

    P("VCHAN_LEFT_CONS", offsetof(struct vchan_interface, left.cons));
    P("VCHAN_LEFT_PROD", offsetof(struct vchan_interface, left.prod));
    P("VCHAN_RIGHT_CONS", offsetof(struct vchan_interface, right.cons));
    P("VCHAN_RIGHT_PROD", offsetof(struct vchan_interface, right.prod));
    P("VCHAN_LEFT_ORDER", offsetof(struct vchan_interface, left_order));
    P("VCHAN_RIGHT_ORDER", offsetof(struct vchan_interface, right_order));
    P("VCHAN_CLI_LIVE", offsetof(struct vchan_interface, cli_live));
    P("VCHAN_SRV_LIVE", offsetof(struct vchan_interface, srv_live));
    P("VCHAN_CLI_NOTIFY", offsetof(struct vchan_interface, cli_notify));
    P("VCHAN_SRV_NOTIFY", offsetof(struct vchan_interface, srv_notify));
    P("VCHAN_GRANTS", offsetof(struct vchan_interface, grants));
    P("VCHAN_HEADER_SIZE", sizeof(struct vchan_interface));
    P("VCHAN_NOTIFY_WRITE", VCHAN_NOTIFY_WRITE);
    P("VCHAN_NOTIFY_READ", VCHAN_NOTIFY_READ);
    return 0;
}
"""


@pytest.fixture(scope="module")
def c_facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    require_tools(
        "gcc",
        *(str(INCLUDE / header) for header in ("ring.h", "console.h", "libxenvchan.h")),
        why="compile the layout check against Xen's headers",
    )
    work = tmp_path_factory.mktemp("layout")
    (work / "layout.c").write_text(PROGRAM)
    subprocess.run(
        ["gcc", "-std=gnu11", "-Wall", "-o", str(work / "layout"), str(work / "layout.c")],
        check=True,
        capture_output=True,
    )
    out = subprocess.run([str(work / "layout")], check=True, capture_output=True, text=True)
    return {name: int(value) for name, value in (line.split() for line in out.stdout.splitlines())}


def test_every_constant_matches_the_headers(c_facts: dict[str, int]) -> None:
    constants = {k: v for k, v in c_facts.items() if not k.startswith("entries_")}
    assert len(constants) >= 30
    mismatches = {
        name: (getattr(layout, name), value)
        for name, value in constants.items()
        if getattr(layout, name) != value
    }
    assert mismatches == {}


def test_entries_match_const_ring_size(c_facts: dict[str, int]) -> None:
    blkif = RingLayout("blkif", 112, 16)
    assert blkif.slot_size == 112
    for area in (4096, 65536, 1000):
        assert blkif.entries(area) == c_facts[f"entries_{area}"]
    assert blkif.entries(4096) == 32


def test_entries_round_down_to_a_power_of_two() -> None:
    small = RingLayout("small", 8, 8)
    assert small.entries(64 + 8) == 1
    assert small.entries(64 + 8 * 7) == 4
    assert small.entries(4096) == 256
    with pytest.raises(ConfigError, match="holds no"):
        RingLayout("big", 4096, 16).entries(4096)


def test_ring_layout_rejects_nonsense() -> None:
    with pytest.raises(ConfigError, match="request_size"):
        RingLayout("x", 0, 16)
    with pytest.raises(ConfigError, match="slot_size"):
        RingLayout("x", 112, 16, slot_size=100)
    assert RingLayout("x", 12, 8, slot_size=16).slot_size == 16


def test_page_orders_and_vchan_placement() -> None:
    assert layout.ring_area_size(0) == 4096
    assert layout.ring_area_size(4) == 65536
    with pytest.raises(ConfigError, match="order 5"):
        layout.ring_area_size(5)
    assert layout.vchan_ring_offset(10) == 1024
    assert layout.vchan_ring_offset(11) == 2048
    assert layout.vchan_ring_offset(12) is None
    with pytest.raises(ConfigError):
        layout.vchan_ring_offset(9)
