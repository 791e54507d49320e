"""`python -m harness data fetch`: O-LoRA's full CL_Benchmark, downloaded (or taken from a local archive),
checked, and put where --data-dir can read it. Orders 1-6 run without it, on the packaged subset (tasks/data)."""
from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile

from core.errors import UsageError
from tasks.literature import LITERATURE, PACKAGED_DIR, read_labels, read_split
from tasks.pack_data import REBUILT, sha256

# O-LoRA's whole repository as an archive; CL_Benchmark is one folder in it, the only one extracted.
DEFAULT_URL = "https://github.com/cmnfriend/O-LoRA/archive/refs/heads/main.zip"
FILES = ("labels.json", "train.json", "test.json")


def add_parser(sub) -> None:
    d = sub.add_parser("data", help="get O-LoRA's full CL_Benchmark (without it, orders 1-6 run on the packaged "
                                    "subset)")
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=type(d))
    f = dsub.add_parser("fetch", help="download O-LoRA's CL_Benchmark, check it, and say how to use it")
    f.add_argument("--dest", default=None, help="where the CL_Benchmark folder goes (default "
                                                "$CL_CACHE_DIR/CL_Benchmark, i.e. ~/.cache/cl-harness/CL_Benchmark)")
    f.add_argument("--allow-download", action="store_true", help=f"let it download {DEFAULT_URL}")
    f.add_argument("--from", dest="source", metavar="ARCHIVE", default=None,
                   help="a local .zip or .tar(.gz) of O-LoRA's repository (or of its CL_Benchmark), or a URL "
                        "(http(s) needs --allow-download)")


def cmd_data(a) -> int:
    dest = a.dest or _default_dest()
    if os.path.exists(dest):
        raise UsageError(f"--dest {dest} already exists; remove it or choose another --dest")
    source = a.source or DEFAULT_URL
    scheme = urllib.parse.urlparse(source).scheme
    remote = scheme in ("http", "https", "ftp")
    if remote and not a.allow_download:
        raise UsageError(f"fetching downloads {source}; pass --allow-download (or --from a local archive)")
    if not remote and scheme != "file" and not os.path.isfile(source):
        raise UsageError(f"--from {source}: no such archive")
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".fetch-", dir=parent)   # beside dest, so the last step is a rename
    try:
        archive = source if os.path.isfile(source) else _download(source, work)
        found = _extract(archive, os.path.join(work, "x"))
        notes = verify(found)
        os.replace(found, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for note in notes:
        print(note)
    print(f"O-LoRA's CL_Benchmark is in {dest}: pass --data-dir {dest} (or set CL_DATA_DIR={dest}) to run "
          "orders 1-6 on the full data")
    return 0


def _default_dest() -> str:
    from harness.models import cache_root
    return os.path.join(cache_root(), "CL_Benchmark")


def _download(url: str, work: str) -> str:
    path = os.path.join(work, "archive" + (".zip" if url.endswith(".zip") else ".tar"))
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot download {url}: {e}") from None
    return path


def _members(names: list[str]) -> str:
    """The archive folder that holds the benchmark ('' or a prefix ending in '/'): the shortest one under which
    every task of orders 1-6 has its labels.json."""
    wanted = [f"{rel}/labels.json" for rel, _ in LITERATURE.values()]
    present = set(names)
    anchor = wanted[0]
    roots = sorted((n[: -len(anchor)] for n in names if n.endswith(anchor)), key=len)
    for root in roots:
        if (root == "" or root.endswith("/")) and all(root + w in present for w in wanted):
            return root
    missing = [w for w in wanted if not any(n.endswith(w) for n in names)]
    raise UsageError("the archive holds no CL_Benchmark folder with every task of orders 1-6"
                     + (f" (no {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''})" if missing else ""))


def _extract(archive: str, into: str) -> str:
    """Extracts the benchmark's task files (nothing else) into `into`; returns the CL_Benchmark folder."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                names = [n for n in z.namelist() if not n.endswith("/")]
                root = _members(names)
                for name in names:
                    if _wanted(name, root):
                        target = os.path.join(into, name[len(root):])
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        with z.open(name) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst, 1 << 20)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                files = [m for m in t.getmembers() if m.isfile()]
                root = _members([m.name for m in files])
                for m in files:
                    if _wanted(m.name, root):
                        target = os.path.join(into, m.name[len(root):])
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        with t.extractfile(m) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst, 1 << 20)
        else:
            raise UsageError(f"{archive} is neither a zip nor a tar archive")
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as e:
        raise UsageError(f"cannot read the archive {archive}: {e}") from None
    return into


def _wanted(name: str, root: str) -> bool:
    """A task file of orders 1-6 under root (names are matched, never used as paths: no '..' escapes)."""
    rest = name[len(root):]
    return name.startswith(root) and any(rest == f"{rel}/{f}" for rel, _ in LITERATURE.values() for f in FILES)


def verify(folder: str) -> list[str]:
    """Every task's files parse as the loader reads them; the files whose checksums are known match them.
    Returns what to tell the user."""
    with open(os.path.join(PACKAGED_DIR, "MANIFEST.json"), encoding="utf-8") as f:
        known = json.load(f)["tasks"]
    differ, rows = [], 0
    for name, (rel, _) in LITERATURE.items():
        labels = read_labels(folder, name)
        if not labels:
            raise UsageError(f"{rel}/labels.json in the archive is missing or not a list of labels")
        for split in ("train", "test"):
            rows += len(read_split(os.path.join(folder, rel, f"{split}.json"), set(labels)).examples)
        for file in (f for f in FILES if f not in REBUILT.get(name, {})):   # checksums known: O-LoRA's own
            split = file.split(".")[0]
            expected = known[name]["labels_sha256"] if split == "labels" else known[name][split]["source_sha256"]
            if sha256(os.path.join(folder, rel, file)) != expected:
                differ.append(f"{rel}/{file}")
    notes = [f"checked {len(LITERATURE)} tasks, {rows:,} rows"]
    if differ:
        notes.append(f"{len(differ)} file(s) differ from the copy the packaged subset was built from (O-LoRA may "
                     f"have changed them; draws on them differ from the packaged data's): {', '.join(differ)}")
    return notes
