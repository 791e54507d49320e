"""`python -m harness data fetch`, run against local archives in O-LoRA's layout (no network)."""
import io
import json
import os
import tarfile
import zipfile

import pytest

import tasks
from harness.cli import main
from tasks.literature import LITERATURE


def olora_files(prefix: str = "O-LoRA-main/CL_Benchmark/") -> dict[str, bytes]:
    """A tiny CL_Benchmark for every task of orders 1-6 (plus what the repository holds besides, dev.json and
    a README, which the fetch leaves out)."""
    files = {"O-LoRA-main/README.md": b"# O-LoRA\n"}
    for name, (rel, _) in LITERATURE.items():
        labels = ["yes", "no"]
        split_rows = {split: [{"label": labels[i % 2], "sentence": f"{name} {split} row {i}"} for i in range(size)]
                      for split, size in (("train", 20), ("test", 6))}
        for file, obj in (("labels.json", labels), ("train.json", split_rows["train"]),
                          ("test.json", split_rows["test"]), ("dev.json", split_rows["test"])):
            files[f"{prefix}{rel}/{file}"] = json.dumps(obj).encode()
    return files


def write_zip(path, files):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return str(path)


def write_tar(path, files):
    with tarfile.open(path, "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return str(path)


def test_fetch_from_a_local_zip_puts_the_benchmark_in_place_and_says_how_to_use_it(tmp_path, capsys):
    dest = str(tmp_path / "data" / "CL_Benchmark")
    assert main(["data", "fetch", "--from", write_zip(tmp_path / "o.zip", olora_files()), "--dest", dest]) == 0
    out = capsys.readouterr().out
    assert f"--data-dir {dest}" in out and "checked 15 tasks" in out
    assert sorted(os.listdir(os.path.join(dest, "NLI", "MNLI"))) == ["labels.json", "test.json", "train.json"]
    assert not os.path.exists(os.path.join(dest, "README.md"))
    assert os.listdir(tmp_path / "data") == ["CL_Benchmark"]          # no work folder left behind
    d = tasks.load_task("COPA", dest, 8, 4, seed=1)
    assert d.source == os.path.abspath(dest) and len(d.train) == 8 and len(d.test) == 4


def test_fetch_from_a_tar_url_of_the_folder_alone(tmp_path, capsys):
    archive = write_tar(tmp_path / "b.tar.gz", olora_files(prefix="CL_Benchmark/"))
    dest = str(tmp_path / "full")
    assert main(["data", "fetch", "--from", f"file://{archive}", "--dest", dest]) == 0
    assert os.path.isfile(os.path.join(dest, "TC", "dbpedia", "train.json"))


def test_fetch_refuses_a_download_without_the_flag_an_incomplete_archive_and_a_taken_dest(tmp_path, capsys):
    dest = tmp_path / "d"
    assert main(["data", "fetch", "--from", "https://example.org/o.zip", "--dest", str(dest)]) == 2
    assert "--allow-download" in capsys.readouterr().err
    files = {k: v for k, v in olora_files().items() if "/WiC/" not in k}
    assert main(["data", "fetch", "--from", write_zip(tmp_path / "part.zip", files), "--dest", str(dest)]) == 2
    err = capsys.readouterr().err
    assert "WiC" in err and len(err.strip().splitlines()) == 1
    broken = olora_files()
    broken["O-LoRA-main/CL_Benchmark/NLI/CB/train.json"] = b'[{"label": "yes", '
    assert main(["data", "fetch", "--from", write_zip(tmp_path / "bad.zip", broken), "--dest", str(dest)]) == 2
    assert "malformed JSON" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["bad.zip", "part.zip"]     # nothing half-written
    dest.mkdir()
    assert main(["data", "fetch", "--from", str(tmp_path / "bad.zip"), "--dest", str(dest)]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["data"], ["data", "fetch", "--from", "/no/such.zip", "--dest", "/tmp/x"]])
def test_data_usage_errors_are_one_line(argv, capsys):
    assert main(argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
