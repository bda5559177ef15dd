"""Hand a device run's files back within the device tool's limits (at most 8 files under $OUT, 16 MiB each,
64 MiB in all), over as many calls as they need, and join them here.

    python3 -m benchmarks.device_pack pack OUT ROOT [--small PATTERN ...] [--large PATTERN ...]
    python3 -m benchmarks.device_pack join DEST FOLDER [FOLDER ...]

``pack``, on the device machine: every file under ROOT matching a ``--small`` glob goes into one
``small.tar.gz``, paths relative to ROOT (the json results, the logs, the packed low-bit artifacts); then
each ``--large`` file, in the order given, as 15 MiB pieces ``<path with / as __>.<sha256[:12]>.part-NN``,
as many as the limits leave room for: a file larger than one call's room (the teacher's training state
once averaging holds a second copy of its weights, 106 MB) goes over several calls. ``pieces.json`` names
each piece's file, index, count, and the file's size and sha256. ``ROOT/.returned`` records what was
handed back (each file's size, modification time, sha256 and pieces sent), so that a later call on the
same machine sends the rest and nothing twice; a file rewritten since starts again from its first piece,
under its new digest.

``join``, here, with the folders the calls returned, oldest first: extracts each ``small.tar.gz`` into
DEST (later calls' files replace earlier ones) and writes ``DEST/<path>`` for every large file whose
pieces of one digest are all there, checked against its size and sha256 (the newest complete version
when several are). Prints what it wrote and what still waits for pieces.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import tarfile
from pathlib import Path

PIECE = 15 * 2**20
MAX_FILES = 8
MAX_BYTES = 64 * 2**20 - 2**20  # a MiB of margin for the listing and the tool's own accounting
LEDGER = ".returned"
MANIFEST = "pieces.json"
SMALL = "small.tar.gz"


def _matches(root: Path, patterns: list[str]) -> list[Path]:
    found: dict[Path, None] = {}
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            if path.is_file():
                found[path] = None
    return list(found)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def pack(out: Path, root: Path, small: list[str], large: list[str]) -> dict:
    """Write ``small.tar.gz``, the large files' next pieces and their ``pieces.json`` into ``out``.

    Returns ``{"sent": [...], "partial": [...], "left": [...], "files": n, "bytes": n}``: the files handed
    back whole or with their last piece, those with pieces still to send, and those not started.
    """
    ledger_path = root / LEDGER
    ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {}

    def version(path: Path) -> dict:
        """The ledger's entry for ``path`` as it is now: its pieces sent so far kept only if unchanged."""
        stat, rel = path.stat(), str(path.relative_to(root))
        entry = ledger.get(rel, {})
        if entry.get("size") == stat.st_size and entry.get("mtime") == stat.st_mtime:
            return entry
        return {"size": stat.st_size, "mtime": stat.st_mtime, "sent": 0}

    sent, partial, left, files, used, manifest = [], [], [], 0, 0, []
    small_files = [p for p in _matches(root, small) if version(p).get("sent", 0) == 0]
    if small_files:
        archive = out / SMALL
        with tarfile.open(archive, "w:gz") as tar:
            for path in small_files:
                tar.add(path, arcname=str(path.relative_to(root)))
        if archive.stat().st_size > MAX_BYTES // 2:
            raise SystemExit(f"{archive} is {archive.stat().st_size} bytes: narrow the --small patterns")
        files, used = 1, archive.stat().st_size
        for path in small_files:
            ledger[str(path.relative_to(root))] = {**version(path), "sent": 1, "count": 1}
            sent.append(str(path.relative_to(root)))
    files += 1  # pieces.json
    for path in _matches(root, large):
        rel, entry = str(path.relative_to(root)), version(path)
        count = max(1, math.ceil(entry["size"] / PIECE))
        if entry["sent"] >= count:
            continue
        if "sha256" not in entry:
            entry = {**entry, "sha256": _sha256(path)}
        name = f"{rel.replace('/', '__')}.{entry['sha256'][:12]}"
        index = entry["sent"]
        with path.open("rb") as f:
            f.seek(index * PIECE)
            while index < count:
                size = min(PIECE, entry["size"] - index * PIECE)
                if files + 1 > MAX_FILES or used + size > MAX_BYTES:
                    break
                piece = f"{name}.part-{index:02d}"
                (out / piece).write_bytes(f.read(PIECE))
                manifest.append({"piece": piece, "file": rel, "index": index, "count": count,
                                 "size": entry["size"], "sha256": entry["sha256"]})
                files, used, index = files + 1, used + size, index + 1
        ledger[rel] = {**entry, "sent": index, "count": count}
        (sent if index == count else partial if index else left).append(rel)
    if manifest:
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    else:
        files -= 1
    ledger_path.write_text(json.dumps(ledger, indent=1))
    return {"sent": sent, "partial": partial, "left": left, "files": files, "bytes": used}


def join(dest: Path, folders: list[Path]) -> dict:
    """Extract the folders' ``small.tar.gz`` into ``dest`` and join every large file whose pieces are all there.

    Returns ``{"extracted": [...], "joined": [...], "waiting": {file: "k of n pieces"}}``; a joined file
    whose bytes do not match its size and sha256 is an error, and nothing is written for it.
    """
    extracted, versions = [], {}  # versions: (file, sha256) -> {"size", "count", "order", "pieces": {i: path}}
    for order, folder in enumerate(folders):
        if (folder / SMALL).is_file():
            with tarfile.open(folder / SMALL) as tar:
                tar.extractall(dest, filter="data")  # refuses absolute paths, .. and links out of dest
                extracted += tar.getnames()
        if (folder / MANIFEST).is_file():
            for item in json.loads((folder / MANIFEST).read_text()):
                version = versions.setdefault((item["file"], item["sha256"]),
                                              {"size": item["size"], "count": item["count"], "pieces": {}})
                version["order"] = order
                version["pieces"][item["index"]] = folder / item["piece"]
    newest: dict[str, tuple[str, dict]] = {}
    waiting = {}
    for (file, sha), version in sorted(versions.items(), key=lambda kv: kv[1]["order"]):
        if len(version["pieces"]) == version["count"]:
            newest[file] = (sha, version)
            waiting.pop(file, None)
        elif file not in newest or newest[file][1]["order"] < version["order"]:
            waiting[file] = f"{len(version['pieces'])} of {version['count']} pieces"
    joined = []
    for file, (sha, version) in newest.items():
        target = dest / file
        if target.is_file() and target.stat().st_size == version["size"] and _sha256(target) == sha:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".joining")
        digest = hashlib.sha256()
        with partial.open("wb") as f:
            for index in range(version["count"]):
                data = version["pieces"][index].read_bytes()
                digest.update(data)
                f.write(data)
        if partial.stat().st_size != version["size"] or digest.hexdigest() != sha:
            partial.unlink()
            raise SystemExit(f"{file}: its pieces do not join to the file handed back "
                             f"({version['size']} bytes, sha256 {sha[:12]}...)")
        os.replace(partial, target)
        joined.append(file)
    return {"extracted": extracted, "joined": joined, "waiting": waiting}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="on the device machine: files under ROOT into OUT")
    packing.add_argument("out", type=Path)
    packing.add_argument("root", type=Path)
    packing.add_argument("--small", nargs="*", default=[])
    packing.add_argument("--large", nargs="*", default=[])
    joining = commands.add_parser("join", help="here: the returned folders, oldest first, into DEST")
    joining.add_argument("dest", type=Path)
    joining.add_argument("folders", type=Path, nargs="+")
    args = parser.parse_args()
    if args.command == "pack":
        args.out.mkdir(parents=True, exist_ok=True)
        print(json.dumps(pack(args.out, args.root, args.small, args.large), indent=1))
    else:
        print(json.dumps(join(args.dest, args.folders), indent=1))


if __name__ == "__main__":
    main()
