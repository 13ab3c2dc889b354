"""ringkit.xen._uapi against the real kernel headers: every ioctl number, flag, size and offset.

A small C program is compiled against ``/usr/include/xen/{gntalloc,gntdev,evtchn}.h``
(linux-libc-dev) and Xen's ``grant_table.h`` (libxen-dev, for GNTCOPY_* and GNTST_*); it prints
``name value`` lines that must equal what ringkit computes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ringkit import _pagemap
from ringkit.xen import _uapi

HEADERS = [Path("/usr/include/xen") / name
           for name in ("gntalloc.h", "gntdev.h", "evtchn.h", "privcmd.h", "grant_table.h",
                        "event_channel.h")]

STRUCTS: dict[str, list[str]] = {
    "ioctl_gntalloc_alloc_gref": ["domid", "flags", "count", "index", "gref_ids"],
    "ioctl_gntalloc_dealloc_gref": ["index", "count"],
    "ioctl_gntalloc_unmap_notify": ["index", "action", "event_channel_port"],
    "ioctl_gntdev_grant_ref": ["domid", "ref"],
    "ioctl_gntdev_map_grant_ref": ["count", "pad", "index", "refs"],
    "ioctl_gntdev_unmap_grant_ref": ["index", "count", "pad"],
    "ioctl_gntdev_get_offset_for_vaddr": ["vaddr", "offset", "count", "pad"],
    "ioctl_gntdev_set_max_grants": ["count"],
    "ioctl_gntdev_unmap_notify": ["index", "action", "event_channel_port"],
    "gntdev_grant_copy_segment": [
        "source", "source.virt", "source.foreign.ref", "source.foreign.offset",
        "source.foreign.domid", "dest", "dest.virt", "dest.foreign.ref", "dest.foreign.offset",
        "dest.foreign.domid", "len", "flags", "status"],
    "ioctl_gntdev_grant_copy": ["count", "segments"],
    "ioctl_evtchn_bind_virq": ["virq"],
    "ioctl_evtchn_bind_interdomain": ["remote_domain", "remote_port"],
    "ioctl_evtchn_bind_unbound_port": ["remote_domain"],
    "ioctl_evtchn_unbind": ["port"],
    "ioctl_evtchn_notify": ["port"],
    "ioctl_evtchn_restrict_domid": ["domid"],
    "privcmd_hypercall": ["op", "arg"],
    "evtchn_status": ["dom", "port", "status", "vcpu", "u", "u.unbound.dom",
                      "u.interdomain.dom", "u.interdomain.port", "u.pirq", "u.virq"],
}

CONSTANTS = [
    "IOCTL_GNTALLOC_ALLOC_GREF", "IOCTL_GNTALLOC_DEALLOC_GREF", "IOCTL_GNTALLOC_SET_UNMAP_NOTIFY",
    "IOCTL_GNTDEV_MAP_GRANT_REF", "IOCTL_GNTDEV_UNMAP_GRANT_REF",
    "IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR", "IOCTL_GNTDEV_SET_MAX_GRANTS",
    "IOCTL_GNTDEV_SET_UNMAP_NOTIFY", "IOCTL_GNTDEV_GRANT_COPY",
    "IOCTL_EVTCHN_BIND_VIRQ", "IOCTL_EVTCHN_BIND_INTERDOMAIN", "IOCTL_EVTCHN_BIND_UNBOUND_PORT",
    "IOCTL_EVTCHN_UNBIND", "IOCTL_EVTCHN_NOTIFY", "IOCTL_EVTCHN_RESET",
    "IOCTL_EVTCHN_RESTRICT_DOMID", "IOCTL_PRIVCMD_HYPERCALL",
    "__HYPERVISOR_event_channel_op", "EVTCHNOP_status", "EVTCHNSTAT_closed",
    "EVTCHNSTAT_unbound", "EVTCHNSTAT_interdomain", "EVTCHNSTAT_pirq", "EVTCHNSTAT_virq",
    "EVTCHNSTAT_ipi", "DOMID_SELF",
    "GNTALLOC_FLAG_WRITABLE", "UNMAP_NOTIFY_CLEAR_BYTE", "UNMAP_NOTIFY_SEND_EVENT",
    "GNTCOPY_source_gref", "GNTCOPY_dest_gref",
    "GNTST_okay", "GNTST_general_error", "GNTST_bad_domain", "GNTST_bad_gntref",
    "GNTST_bad_handle", "GNTST_bad_virt_addr", "GNTST_bad_dev_addr", "GNTST_no_device_space",
    "GNTST_permission_denied", "GNTST_bad_page", "GNTST_bad_copy_arg", "GNTST_address_too_big",
    "GNTST_eagain", "GNTST_no_space",
]


def _c_program() -> str:
    lines = [
        "#include <stdint.h>", "#include <stddef.h>", "#include <stdio.h>",
        "#include <sys/ioctl.h>", "#include <xen/xen.h>", "#include <xen/grant_table.h>",
        "#include <xen/event_channel.h>", "#include <xen/gntalloc.h>", "#include <xen/gntdev.h>",
        "#include <xen/evtchn.h>", "#include <xen/privcmd.h>",
        "int main(void) {",
    ]
    for name in CONSTANTS:
        lines.append(f'    printf("{name} %lld\\n", (long long)({name}));')
    for struct, fields in STRUCTS.items():
        lines.append(f'    printf("sizeof:{struct} %zu\\n", sizeof(struct {struct}));')
        for field in fields:
            lines.append(f'    printf("offsetof:{struct}.{field} %zu\\n", '
                         f"offsetof(struct {struct}, {field}));")
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n"


def _python_name(name: str) -> str:
    return name.removeprefix("__")  # __HYPERVISOR_x is HYPERVISOR_x in Python


def _ringkit_values() -> dict[str, int]:
    values = {name: int(getattr(_uapi, _python_name(name))) for name in CONSTANTS}
    for struct, fields in STRUCTS.items():
        values[f"sizeof:{struct}"] = _uapi.ffi.sizeof(f"struct {struct}")
        for field in fields:
            values[f"offsetof:{struct}.{field}"] = _uapi.ffi.offsetof(
                f"struct {struct}", *field.split("."))
    return values


@pytest.fixture(scope="module")
def header_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    missing = [str(h) for h in HEADERS if not h.exists()]
    # These headers come with the project's own set-up (linux-libc-dev, libxen-dev via
    # `make deps`): their absence is a broken environment, not a reason to skip.
    assert not missing, f"missing headers {missing}: run `make deps`"
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc, "a C compiler is required (the Makefile's set-up assumes gcc)"
    work = tmp_path_factory.mktemp("uapi")
    source = work / "uapi.c"
    source.write_text(_c_program())
    binary = work / "uapi"
    # The uapi privcmd.h includes the kernel-internal <xen/interface/xen.h>, which is Xen's
    # public xen.h: point it there, as Xen's own tools do with their copy of the header.
    shim = work / "include" / "xen" / "interface"
    shim.mkdir(parents=True)
    (shim / "xen.h").write_text("#include <xen/xen.h>\n")
    # libxencall and friends build against the latest interface, not the compat numbering.
    build = subprocess.run([gcc, "-Wall", "-Werror", "-I", str(work / "include"),
                            "-D__XEN_INTERFACE_VERSION__=__XEN_LATEST_INTERFACE_VERSION__",
                            "-o", str(binary), str(source)],
                           capture_output=True, text=True, timeout=120, check=False)
    assert build.returncode == 0, build.stderr
    out = subprocess.run([str(binary)], check=True, capture_output=True, text=True, timeout=30)
    values = {}
    for line in out.stdout.splitlines():
        name, value = line.split()
        values[name] = int(value)
    return values


def test_every_value_matches_the_kernel_headers(header_values: dict[str, int]) -> None:
    ours = _ringkit_values()
    assert set(ours) == set(header_values)
    mismatches = {name: (ours[name], header_values[name])
                  for name in ours if ours[name] != header_values[name]}
    assert not mismatches, f"ringkit vs headers: {mismatches}"


def test_the_program_covers_every_ioctl_of_the_module() -> None:
    declared = {name for name in dir(_uapi) if name.startswith("IOCTL_")}
    assert declared == {name for name in CONSTANTS if name.startswith("IOCTL_")}


def test_ioc_encoding_refuses_oversized_arguments() -> None:
    with pytest.raises(ValueError, match="size"):
        _uapi.ioc(_uapi.IOC_NONE, "G", 0, 1 << 14)


def test_variable_length_arguments() -> None:
    arg = _uapi.alloc_gref(5, 3, writable=True)
    # the kernel reads sizeof(struct) and writes `count` refs from gref_ids: room for both
    assert len(arg.buffer) == _uapi.ffi.offsetof("struct ioctl_gntalloc_alloc_gref",
                                                 "gref_ids") + 4 * 3
    assert (arg.struct.domid, arg.struct.flags, arg.struct.count) == (5, 1, 3)
    arg.array("gref_ids", "uint32_t")[2] = 0xABCD
    assert arg.buffer[-4:] == (0xABCD).to_bytes(4, "little")
    mapping = _uapi.map_grant_ref(7, [10, 11])
    entries = mapping.array("refs", "struct ioctl_gntdev_grant_ref")
    assert [(entries[i].domid, entries[i].ref) for i in range(2)] == [(7, 10), (7, 11)]
    assert len(mapping.buffer) == _uapi.ffi.sizeof("struct ioctl_gntdev_map_grant_ref") + 8
    single = _uapi.alloc_gref(5, 1, writable=False)
    assert len(single.buffer) == _uapi.ffi.sizeof("struct ioctl_gntalloc_alloc_gref")
    assert single.struct.flags == 0


def test_mapping_flags_match_sys_mman(tmp_path: Path) -> None:
    """`ringkit._pagemap` passes these to libc's mmap itself (the `mmap` module lacks them)."""
    names = ["PROT_NONE", "MAP_FIXED", "MAP_FIXED_NOREPLACE"]
    source = tmp_path / "mman.c"
    source.write_text("#define _GNU_SOURCE\n#include <stdio.h>\n#include <sys/mman.h>\n"
                      "int main(void) {\n"
                      + "".join(f'    printf("%lld\\n", (long long)({name}));\n' for name in names)
                      + "    return 0;\n}\n")
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc, "a C compiler is required (the Makefile's set-up assumes gcc)"
    subprocess.run([gcc, "-Wall", "-Werror", "-o", str(tmp_path / "mman"), str(source)],
                   check=True, timeout=120)
    out = subprocess.run([str(tmp_path / "mman")], check=True, capture_output=True, text=True,
                         timeout=30)
    assert [int(v) for v in out.stdout.split()] == [getattr(_pagemap, n) for n in names]
