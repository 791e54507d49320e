"""Builds tasks/data, the subset of O-LoRA's CL_Benchmark that orders 1-6 read when no --data-dir is given.

    python -m tasks.pack_data --source DIR/CL_Benchmark [--out tasks/data]

Per task and split the pack keeps every row's label, so that stratified draws on it are the full data's draws
(they depend on the label counts and the seed only), and, verbatim, every row those draws read:
- test: the seed-0 test subsample at any --test-per-task up to TEST_COVER;
- train: the validation split, and the training draw of each seed in TRAIN_COVER at any size up to its cover.
A split no larger than a cover is packed whole. Other seeds draw from the packed rows (valid stratified
draws, not the full data's). The output is deterministic: the same source gives the same bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import sys
import tempfile

from core.errors import UsageError
from tasks import KEPT_SEEDS, KEPT_TRAIN_SIZE, same_text, split_places
from tasks.base import draw_cover
from tasks.literature import LITERATURE, PACKAGED_DIR, PACKAGED_FORMAT, _read_json, read_split

TEST_COVER = 500
# seed 1 (the default) up to 1,000 rows; the other kept seeds at the default size, as the full data draws them
TRAIN_COVER = {**{seed: KEPT_TRAIN_SIZE for seed in KEPT_SEEDS}, 1: 1000}
SOURCE = "O-LoRA (github.com/cmnfriend/O-LoRA, commit 07117e1), folder CL_Benchmark"

# task -> (where O-LoRA's rows come from, their terms). The terms are as commonly given for each dataset, not
# checked here against each publisher's current terms: check them before reusing the data elsewhere.
ORIGINS = {
    "dbpedia": ("DBpedia-14 (Zhang, Zhao and LeCun 2015), built from DBpedia 2014", "CC BY-SA 3.0 (DBpedia)"),
    "agnews": ("AG News (Zhang, Zhao and LeCun 2015), from AG's corpus of news articles",
               "AG's corpus: free for non-commercial research"),
    "yahoo": ("Yahoo! Answers Topics (Zhang, Zhao and LeCun 2015), from Yahoo! Webscope L6",
              "Yahoo! Webscope terms: non-commercial research"),
    "amazon": ("Amazon Review Full (Zhang, Zhao and LeCun 2015), from the SNAP Amazon reviews",
               "research use (SNAP); no license stated"),
    "yelp": ("Yelp Review Full (Zhang, Zhao and LeCun 2015), from the Yelp Dataset Challenge 2015",
             "Yelp Dataset terms: non-commercial academic use"),
    "IMDB": ("Large Movie Review Dataset (Maas et al. 2011)", "no license stated; research use"),
    "SST-2": ("Stanford Sentiment Treebank, binary (Socher et al. 2013), as in GLUE", "no license stated"),
    "MNLI": ("MultiNLI (Williams et al. 2018), as in GLUE", "OANC terms and CC BY-SA 3.0 (fiction)"),
    "CB": ("CommitmentBank (de Marneffe et al. 2019), as in SuperGLUE", "no license stated; research use"),
    "RTE": ("Recognizing Textual Entailment 1-3 and 5, as in GLUE/SuperGLUE", "no license stated; research use"),
    "QQP": ("Quora Question Pairs, as in GLUE", "Quora's terms: non-commercial"),
    "BoolQA": ("BoolQ (Clark et al. 2019), as in SuperGLUE", "CC BY-SA 3.0"),
    "MultiRC": ("MultiRC (Khashabi et al. 2018), as in SuperGLUE", "no license stated; research use"),
    "WiC": ("Word-in-Context (Pilehvar and Camacho-Collados 2019), as in SuperGLUE", "CC BY-NC 4.0"),
    "COPA": ("Choice of Plausible Alternatives (Roemmele et al. 2011), as in SuperGLUE", "BSD 2-Clause"),
}


# The source copy's files that differ from O-LoRA's (rebuilt from public sources where O-LoRA's could not be
# recovered whole); every other file is byte-identical to O-LoRA's.
REBUILT = {
    "dbpedia": {"train.json": "11,036 of O-LoRA's 14,000 rows (79%), recovered from public slices"},
    "yahoo": {"train.json": "8,328 of O-LoRA's 10,000 rows (9,328 recovered, 1,000 of them held out as test)",
              "test.json": "1,000 recovered O-LoRA train rows plus 100 rows of O-LoRA's test"},
    "yelp": {"train.json": "4,000 of O-LoRA's 5,000 rows (1,000 held out as test)",
             "test.json": "1,000 O-LoRA train rows plus 100 rows of O-LoRA's test"},
    "IMDB": {"test.json": "100 rows of O-LoRA's test plus 7,500 from the same IMDB test split"},
}   # MultiRC's test.json was rebuilt from SuperGLUE's validation split too, and came out byte-identical


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _raw_places(rows: list[dict], labels: set[str]) -> list[int]:
    """Place in the file of each row the loader keeps (it drops labels outside labels.json)."""
    return [i for i, row in enumerate(rows) if str(row["label"]).strip() in labels]


def pack_task(source: str, name: str) -> tuple[dict, dict]:
    """(the pack, what the manifest says of it) for one task."""
    folder = os.path.join(source, LITERATURE[name][0])
    labels = _read_json(os.path.join(folder, "labels.json"))
    label_set = {str(x) for x in labels}
    splits, info = {}, {}
    for split in ("train", "test"):
        path = os.path.join(folder, f"{split}.json")
        rows = _read_json(path)
        loaded = read_split(path, label_set)          # validates the rows as the loader does
        if split == "test":
            keep = draw_cover(loaded.examples, TEST_COVER, 0, f"{name}:test")
        else:
            val, skip = split_places(name, loaded)
            keep = set(val)
            for seed, size in TRAIN_COVER.items():
                keep |= draw_cover(loaded.examples, size, seed, f"{name}:train", skip)
            keep |= same_text(loaded, keep)   # the loader's rules by text then see the same rows
            info["val"] = len(val)
        places = _raw_places(rows, label_set)
        raw_keep = sorted(places[i] for i in keep)
        splits[split] = {"row_labels": [row["label"] for row in rows],
                         "rows": [[i, rows[i]] for i in raw_keep]}
        info[split] = {"rows": len(rows), "packed": len(raw_keep), "source_sha256": sha256(path)}
    info["labels_sha256"] = sha256(os.path.join(folder, "labels.json"))
    pack = {"format": PACKAGED_FORMAT, "task": name, "folder": LITERATURE[name][0], "source": SOURCE,
            "labels": labels, "splits": splits}
    return pack, info


def sources_md(manifest: dict) -> str:
    """tasks/data/SOURCES.md, from ORIGINS and the manifest (edit this function, not the file)."""
    covers = ", ".join(f"seed {seed} up to {size}" for seed, size in sorted(TRAIN_COVER.items()))
    lines = [
        "# tasks/data: the packaged subset of O-LoRA's CL_Benchmark",
        "",
        "Generated by `python -m tasks.pack_data --source DIR/CL_Benchmark` (tasks/pack_data.py); do not edit.",
        "",
        f"Source: {SOURCE}; O-LoRA's dev.json equals its test.json and is not used. Every source file is "
        "byte-identical to O-LoRA's except these, rebuilt from public sources:",
        "",
        *[f"- {name}/{file}: {how}" for name, files in REBUILT.items() for file, how in files.items()],
        "",
        "How the subset is drawn: each `<task>.json.xz` (lzma, JSON) keeps labels.json, the label of every row "
        "of train.json and test.json, and verbatim the rows the harness's draws read:",
        f"- test: the test subsample (seed 0) at any `--test-per-task` up to {TEST_COVER};",
        f"- train: the validation split and the training draws of {covers} rows (`--train-per-task`).",
        "A split smaller than that is packed whole. With these seeds and sizes a run draws exactly the rows it "
        "draws from the full data; other seeds draw from the packed rows only.",
        "",
        "| task | origin | terms | train packed / rows | test packed / rows | val |",
        "|---|---|---|---|---|---|",
    ]
    for name, info in manifest["tasks"].items():
        origin, terms = ORIGINS[name]
        lines.append(f"| {name} | {origin} | {terms} | {info['train']['packed']:,} / {info['train']['rows']:,} | "
                     f"{info['test']['packed']:,} / {info['test']['rows']:,} | {info['val']:,} |")
    lines += ["", "The terms are as commonly given for each dataset, not checked against each publisher's current "
              "terms: check them before reusing the data elsewhere.",
              "", "sha256 of the packed files and of the source files they were drawn from:", "", "```"]
    for name, info in manifest["tasks"].items():
        lines.append(f"{info['packed_sha256']}  {name}.json.xz")
        for split in ("train", "test"):
            lines.append(f"{info[split]['source_sha256']}  {LITERATURE[name][0]}/{split}.json")
        lines.append(f"{info['labels_sha256']}  {LITERATURE[name][0]}/labels.json")
    lines += ["```", ""]
    return "\n".join(lines)


def build(source: str, out: str = PACKAGED_DIR) -> dict:
    """Writes the packs, MANIFEST.json and SOURCES.md into a new folder, then puts it in place of `out`."""
    if not os.path.isdir(source):
        raise UsageError(f"--source {source!r} is not a directory")
    parent = os.path.dirname(os.path.abspath(out))
    tmp = tempfile.mkdtemp(prefix=".pack-", dir=parent)
    try:
        manifest = {"source": SOURCE, "test_cover": TEST_COVER, "train_cover": TRAIN_COVER, "tasks": {}}
        for name in LITERATURE:
            pack, info = pack_task(source, name)
            path = os.path.join(tmp, f"{name}.json.xz")
            with lzma.open(path, "wt", encoding="utf-8", preset=9 | lzma.PRESET_EXTREME) as f:
                json.dump(pack, f, ensure_ascii=False, separators=(",", ":"))
            info["packed_sha256"] = sha256(path)
            info["packed_bytes"] = os.path.getsize(path)
            manifest["tasks"][name] = info
            print(f"{name:8} train {info['train']['packed']:5} / {info['train']['rows']:5}  "
                  f"test {info['test']['packed']:4} / {info['test']['rows']:4}  {info['packed_bytes'] / 1e3:6.0f} kB",
                  file=sys.stderr)
        with open(os.path.join(tmp, "MANIFEST.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
        with open(os.path.join(tmp, "SOURCES.md"), "w", encoding="utf-8") as f:
            f.write(sources_md(manifest))
        os.chmod(tmp, 0o755)   # mkdtemp makes it private
        old = None
        if os.path.exists(out):
            old = tempfile.mkdtemp(prefix=".pack-old-", dir=parent)
            os.replace(out, os.path.join(old, "data"))
        os.replace(tmp, out)
        if old:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tasks.pack_data", description=__doc__.split("\n")[0])
    p.add_argument("--source", required=True, help="O-LoRA's CL_Benchmark folder (the full data)")
    p.add_argument("--out", default=PACKAGED_DIR, help=f"where the packs go (default {PACKAGED_DIR})")
    a = p.parse_args(argv)
    try:
        manifest = build(a.source, a.out)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total = sum(info["packed_bytes"] for info in manifest["tasks"].values())
    print(f"{len(manifest['tasks'])} tasks packed into {a.out}: {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
