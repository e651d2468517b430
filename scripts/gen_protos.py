"""Regenerate the committed Python stubs from protos/ with grpcio-tools.

Usage: python scripts/gen_protos.py [OUTPUT_DIR]   (default: client/)

It also copies the .proto next to the stubs, so the wheel carries the contract.

The toolchain is the grpcio-tools version pinned in the ``dev`` extra. Its output
would refuse to import on any runtime older than itself: the ``_pb2.py`` calls
protobuf's ``ValidateProtobufRuntimeVersion`` and the ``_pb2_grpc.py`` raises when
grpcio is older than grpcio-tools. The code between those guards uses nothing
newer than protobuf 4.21 (``AddSerializedFile`` and the ``builder`` module) and
grpcio 1.64 (registered-method handlers), so the guards alone are cut out, here,
where the drift test sees it. What the guards would have promised instead is
proven by CI: the client tests run at the declared floors and at the newest
releases (tests/compat/). Each cut must match exactly once, so a toolchain whose
output changes shape fails here instead of shipping a guard.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = "ticketlock/v1/lock_service.proto"
NOTE = (
    "# ticketlock: the runtime version guard is cut out by scripts/gen_protos.py;\n"
    "# the supported runtime range is the one tested in CI (see README).\n"
)

# (file suffix, pattern) for each cut.
GUARDS = (
    (
        "_pb2.py",
        re.compile(r"^from google\.protobuf import runtime_version as _runtime_version\n", re.M),
    ),
    (
        "_pb2.py",
        re.compile(
            r"^_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:    .*\n)*?\)\n", re.M
        ),
    ),
    (
        "_pb2_grpc.py",
        # From the version constant to the end of the raise: unindented lines that
        # belong to the guard, then the indented body of the final ``if``.
        re.compile(
            r"^GRPC_GENERATED_VERSION = .*\n"
            r"(?:(?!if _version_not_supported:).*\n)*?"
            r"if _version_not_supported:\n(?:    .*\n)+",
            re.M,
        ),
    ),
)


def _cut_guards(path: Path) -> None:
    text = path.read_text()
    for suffix, pattern in GUARDS:
        if not path.name.endswith(suffix):
            continue
        text, count = pattern.subn("", text)
        if count != 1:
            raise SystemExit(f"{path.name}: expected one match of {pattern.pattern!r}, got {count}")
    # The note goes after the generator's own header comment lines.
    lines = text.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    path.write_text("".join(lines[:at]) + NOTE + "".join(lines[at:]))


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{ROOT / 'protos'}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        PROTO,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    stubs = out_dir / Path(PROTO).parent
    for name in ("lock_service_pb2.py", "lock_service_pb2_grpc.py"):
        _cut_guards(stubs / name)
    # The contract ships beside its stubs, for tools that look for it in the wheel.
    shutil.copyfile(ROOT / "protos" / PROTO, stubs / Path(PROTO).name)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "client")
