"""Hand a device run's files back within the device tool's limits: at most 8 files under $OUT, 16 MiB each,
64 MiB in all.

    python3 -m benchmarks.device_pack OUT ROOT [--small PATTERN ...] [--large PATTERN ...]

Every file under ROOT matching a ``--small`` glob goes into one ``small.tar.gz``, paths relative to ROOT
(the json results, the logs, the packed low-bit artifacts); then each ``--large`` file, in the order given,
as 15 MiB pieces ``<path with / as __>.part-NN`` while the limits allow, each file whole or not at all. A
file handed back is recorded in ``ROOT/.returned`` (its size and modification time) and not sent again by a
later call on the same machine. Join a large file here with ``cat NAME.part-* > FILE``. Prints what it
handed back and what it left.
"""

from __future__ import annotations

import argparse
import json
import math
import tarfile
from pathlib import Path

PIECE = 15 * 2**20
MAX_FILES = 8
MAX_BYTES = 64 * 2**20 - 2**20  # a MiB of margin for the listing and the tool's own accounting


def _matches(root: Path, patterns: list[str]) -> list[Path]:
    found: dict[Path, None] = {}
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            if path.is_file():
                found[path] = None
    return list(found)


def pack(out: Path, root: Path, small: list[str], large: list[str]) -> dict:
    """Write ``small.tar.gz`` and the large files' pieces into ``out``; returns ``{"sent": [...], "left": [...]}``."""
    ledger_path = root / ".returned"
    ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {}

    def fresh(path: Path) -> bool:
        stat = path.stat()
        return ledger.get(str(path.relative_to(root))) != [stat.st_size, stat.st_mtime]

    sent, left, files, used = [], [], 0, 0
    small_files = [p for p in _matches(root, small) if fresh(p)]
    if small_files:
        archive = out / "small.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for path in small_files:
                tar.add(path, arcname=str(path.relative_to(root)))
        if archive.stat().st_size > MAX_BYTES // 2:
            raise SystemExit(f"{archive} is {archive.stat().st_size} bytes: narrow the --small patterns")
        files, used = 1, archive.stat().st_size
        sent += [str(p.relative_to(root)) for p in small_files]
    for path in _matches(root, large):
        if not fresh(path):
            continue
        size = path.stat().st_size
        pieces = max(1, math.ceil(size / PIECE))
        rel = str(path.relative_to(root))
        if files + pieces > MAX_FILES or used + size > MAX_BYTES:
            left.append(rel)
            continue
        stem = rel.replace("/", "__")
        with path.open("rb") as f:
            for i in range(pieces):
                (out / f"{stem}.part-{i:02d}").write_bytes(f.read(PIECE))
        files, used = files + pieces, used + size
        sent.append(rel)
    for rel in sent:
        stat = (root / rel).stat()
        ledger[rel] = [stat.st_size, stat.st_mtime]
    ledger_path.write_text(json.dumps(ledger, indent=1))
    return {"sent": sent, "left": left, "files": files, "bytes": used}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("root", type=Path)
    parser.add_argument("--small", nargs="*", default=[])
    parser.add_argument("--large", nargs="*", default=[])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(pack(args.out, args.root, args.small, args.large), indent=1))


if __name__ == "__main__":
    main()
