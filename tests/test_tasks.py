import json
import os
from collections import Counter

import pytest

import tasks
from core.errors import UsageError
from tasks import literature
from tasks.base import Example, stratified_sample
from tasks.offline import offline_tasks
from tasks.pack_data import sha256
from tests.conftest import HAVE_REAL_DATA, REAL_DATA, write_task


def test_literature_loader_reads_olora_layout_and_drops_unknown_labels(cl_data):
    d = tasks.load_task("amazon", cl_data, None, None, seed=1)
    assert d.labels == ("very negative", "negative", "neutral", "positive", "very positive")
    assert len(d.train) == 20 and d.sizes_full["val"] == 5 and len(d.test) == 10
    assert d.dropped == {"train": 2, "test": 1}
    assert all(ex.label in d.labels for ex in d.train + d.test)


def test_orders_1_to_6_read_the_packaged_data_without_a_data_dir(monkeypatch):
    monkeypatch.delenv("CL_DATA_DIR", raising=False)
    for name in tasks.ORDERS["4"]:       # orders 4-6 hold every task of orders 1-3
        d = tasks.load_task(name, None, 200, 100, seed=1)
        assert d.source == "packaged" and len(d.train) == 200 and len(d.test) == min(100, d.sizes_full["test"])
        assert not {e.text for e in d.train} & {e.text for e in d.test} and all(e.text for e in d.train + d.test)
    # beyond what is packaged: one line that says how to get the full data, not a silently smaller draw
    with pytest.raises(UsageError, match="packaged data holds .* data fetch"):
        tasks.load_task("dbpedia", None, 5000, 100, seed=1)


def test_packaged_files_match_their_manifest():
    with open(os.path.join(literature.PACKAGED_DIR, "MANIFEST.json")) as f:
        manifest = json.load(f)["tasks"]
    assert set(manifest) == set(literature.LITERATURE)
    for name, info in manifest.items():
        assert sha256(literature.packaged_path(name)) == info["packed_sha256"]
        assert info["train"]["packed"] >= min(1000, info["train"]["rows"])
        assert info["test"]["packed"] >= min(500, info["test"]["rows"])


@pytest.mark.skipif(not HAVE_REAL_DATA, reason="O-LoRA's full CL_Benchmark not present")
def test_packaged_rows_and_draws_are_the_full_datas(monkeypatch):
    monkeypatch.delenv("CL_DATA_DIR", raising=False)
    for name, (rel, _) in literature.LITERATURE.items():
        labels, packed = literature.read_packaged(name)
        for split in ("train", "test"):
            with open(os.path.join(REAL_DATA, rel, f"{split}.json")) as f:
                full = [r for r in json.load(f) if r["label"].strip() in labels]
            rows = packed[split]
            assert len(rows.examples) == len(full)
            assert all(ex == Example(r["sentence"], r["label"].strip())
                       for i, (ex, r) in enumerate(zip(rows.examples, full)) if i not in rows.missing)
        for seed, n_train, n_test, split in ((1, 200, 100, "test"), (2, 200, 50, "val"), (3, 37, 500, "test"),
                                             (1, 1000, 20, "val")):
            from_full = tasks.load_task(name, REAL_DATA, n_train, n_test, seed, split)
            from_pack = tasks.load_task(name, None, n_train, n_test, seed, split)
            assert (from_full.train, from_full.test) == (from_pack.train, from_pack.test), (name, seed, split)


def test_data_dir_beats_the_environment_which_beats_the_packaged_data(cl_data, tmp_path, monkeypatch):
    monkeypatch.delenv("CL_DATA_DIR", raising=False)
    assert tasks.load_task("yahoo", cl_data, None, None, seed=1).source == os.path.abspath(cl_data)
    monkeypatch.setenv("CL_DATA_DIR", str(tmp_path / "nowhere"))
    d = tasks.load_task("yahoo", cl_data, None, None, seed=1)
    assert d.source == os.path.abspath(cl_data) and len(d.train) + d.sizes_full["val"] == 20
    with pytest.raises(UsageError, match="does not exist"):
        tasks.load_task("yahoo", None, 5, 5, seed=1)


def test_data_dir_from_environment(cl_data, monkeypatch):
    monkeypatch.setenv("CL_DATA_DIR", cl_data)
    d = tasks.load_task("yahoo", None, None, None, seed=1)
    assert len(d.train) == 16 and d.sizes_full == {"train": 20, "val": 4, "test": 6}   # a fifth is validation


def test_missing_dir_missing_file_malformed_json_and_empty_split(cl_data, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        tasks.load_task("agnews", str(tmp_path / "nowhere"), 5, 5, 1)
    os.remove(os.path.join(cl_data, "TC/yahoo/test.json"))
    with pytest.raises(UsageError, match="missing data file .*yahoo/test.json"):
        tasks.load_task("yahoo", cl_data, 5, 5, 1)
    with open(os.path.join(cl_data, "TC/agnews/train.json"), "w") as f:
        f.write('[{"label": "World", "sentence": ')
    with pytest.raises(UsageError, match="malformed JSON"):
        tasks.load_task("agnews", cl_data, 5, 5, 1)
    write_task(cl_data, "TC/dbpedia", ["Company"], [], [{"label": "Company", "sentence": "x"}])
    with pytest.raises(UsageError, match="no usable rows"):
        tasks.load_task("dbpedia", cl_data, 5, 5, 1)


def test_unknown_task_and_order():
    with pytest.raises(UsageError, match="unknown task 'nope'"):
        tasks.get_task("nope")
    with pytest.raises(UsageError, match="unknown order"):
        tasks.get_order("7")
    with pytest.raises(UsageError, match="unknown task 'nope'"):
        tasks.get_order("bbc,nope")
    assert tasks.get_order("trec,bbc") == ["trec", "bbc"]


def test_orders_are_the_literature_orders():
    assert tasks.ORDERS["1"] == ["dbpedia", "amazon", "yahoo", "agnews"]
    assert tasks.ORDERS["3"] == ["yahoo", "amazon", "agnews", "dbpedia"]
    assert len(tasks.ORDERS["4"]) == len(set(tasks.ORDERS["5"])) == len(tasks.ORDERS["6"]) == 15
    offline = [tasks.ORDERS[f"offline{i}"] for i in (1, 2, 3)]
    assert all(len(o) >= 4 for o in offline) and len({tuple(o) for o in offline}) == 3
    assert all(tasks.get_task(n).family == "offline" for o in offline for n in o)


def test_stratified_sample_is_proportional_deterministic_and_seeded():
    data = [Example(f"a{i}", "a") for i in range(90)] + [Example(f"b{i}", "b") for i in range(10)]
    s1 = stratified_sample(data, 20, seed=1, salt="t")
    assert Counter(e.label for e in s1) == {"a": 18, "b": 2}
    assert s1 == stratified_sample(data, 20, seed=1, salt="t")
    assert s1 != stratified_sample(data, 20, seed=2, salt="t")
    rare = [Example("r", "rare")] + data
    assert "rare" in {e.label for e in stratified_sample(rare, 5, seed=1, salt="t")}
    assert stratified_sample(data, 500, seed=1, salt="t") == data
    with pytest.raises(UsageError):
        tasks.load_task("trec", None, 0, 5, 1)


@pytest.mark.parametrize("name,labels,min_rows", [
    ("trec", {"abbreviation", "description", "entity", "human", "location", "number"}, 5452),
    ("bbc", {"business", "entertainment", "politics", "sports", "tech"}, 2225),
    ("sms_spam", {"legitimate", "spam"}, 4837),
    ("hutto_amazon", {"negative", "positive"}, 2000),
    ("hutto_tweets", {"negative", "positive"}, 2000),
])
def test_offline_loaders_read_the_installed_packages(name, labels, min_rows):
    d = tasks.load_task(name, None, None, None, seed=1)
    assert set(d.labels) == labels
    assert {e.label for e in d.train} == labels
    total = d.sizes_full["train"] + len(d.test)   # the training split, its validation part included
    assert len(d.train) + d.sizes_full["val"] <= d.sizes_full["train"]   # less: duplicates of validation texts
    assert total >= min_rows and 0.15 < len(d.test) / total < 0.25
    assert not {e.text for e in d.train} & {e.text for e in d.test}  # duplicates in the source stay on one side
    # the test split never depends on the seed
    assert tasks.load_task(name, None, None, 50, seed=7).test == tasks.load_task(name, None, None, 50, seed=1).test


@pytest.mark.skipif(not HAVE_REAL_DATA, reason="O-LoRA's full CL_Benchmark not present")
def test_real_cl_benchmark_files_at_full_size():
    mnli = tasks.load_task("MNLI", REAL_DATA, None, None, seed=1)
    assert mnli.dropped["test"] == 131          # O-LoRA's rows labelled "-"
    assert set(mnli.labels) == {"neutral", "entailment", "contradiction"}
    for name in tasks.ORDERS["4"]:
        d = tasks.load_task(name, REAL_DATA, 50, 20, seed=1)
        assert len(d.train) == 50 and len(d.test) == 20
        with open(os.path.join(REAL_DATA, tasks.literature.LITERATURE[name][0], "labels.json")) as f:
            assert list(d.labels) == json.load(f)


def test_skipping_rows_changes_only_the_draws_that_hit_them():
    data = [Example(f"a{i}", "a") for i in range(60)] + [Example(f"b{i}", "b") for i in range(40)]
    before = stratified_sample(data, 20, seed=3, salt="t")
    hit = {data.index(before[0]), data.index(before[1])}
    after = stratified_sample(data, 20, seed=3, salt="t", skip=hit)
    assert len(after) == 20 and set(before) - set(after) == {before[0], before[1]}
    missed = set(range(100)) - {data.index(e) for e in before}
    assert stratified_sample(data, 20, seed=3, salt="t", skip=set(list(missed)[:30])) == before


def _splits(name, data_dir):
    d = tasks.load_task(name, data_dir, None, None, seed=1)
    val = tasks.load_task(name, data_dir, None, None, seed=1, eval_split="val").test
    return [{e.text for e in rows} for rows in (d.train, val, d.test)]


@pytest.mark.parametrize("name", sorted(offline_tasks()) + ["dbpedia", "agnews", "yahoo", "amazon"])
def test_train_val_and_test_are_pairwise_disjoint(name, cl_data):
    train, val, test = _splits(name, None if name in offline_tasks() else cl_data)
    assert val and not train & val and not train & test and not val & test


def test_the_validation_split_is_fixed_and_keeps_the_committed_seeds_training_draws(monkeypatch):
    monkeypatch.delenv("CL_DATA_DIR", raising=False)
    for name in ("trec", "bbc", "dbpedia"):
        val = tasks.load_task(name, None, 32, 100, seed=1, eval_split="val").test
        assert len(val) == 100 and val == tasks.load_task(name, None, 200, 100, seed=7, eval_split="val").test
        _, splits = tasks.get_task(name).load(tasks.LoadContext(None))
        for seed in tasks.KEPT_SEEDS:
            for n in (32, 200):   # the draw as it was before the validation split existed
                before = stratified_sample(splits["train"].examples, n, seed, f"{name}:train")
                assert tasks.load_task(name, None, n, 20, seed).train == before
    with pytest.raises(UsageError, match="--eval-split"):
        tasks.load_task("trec", None, 5, 5, 1, eval_split="dev")


def test_eval_split_is_part_of_the_setup_and_older_records_ran_on_test():
    from harness import config
    assert "eval_split" in config.names(config.SETUP)
    assert config.setup_of({})[config.names(config.SETUP).index("eval_split")] == "test"


def test_a_run_begun_before_eval_split_existed_resumes_as_a_test_run(tmp_path):
    from core.errors import UsageError
    from harness.config import BenchConfig
    from harness.rundir import RunDir, write_json
    new = BenchConfig(out=str(tmp_path / "run")).recorded()
    old = {k: v for k, v in new.items() if k != "eval_split"}
    run = RunDir(str(tmp_path / "run"))
    write_json(run.file("config.json"), old)
    run.save_status({"state": "running", "started": 1.0, "rows": {}})
    assert run.prepare(new, overwrite=False)["state"] == "running"
    with pytest.raises(UsageError, match="eval_split"):
        run.prepare({**new, "eval_split": "val"}, overwrite=False)


def test_a_split_smaller_than_asked_is_scored_whole_validation_as_test():
    # CB: 250 training rows (50 of them the validation split) and 56 test rows; the grid asks 100 of either.
    # The packaged data holds all of CB, so this needs no data directory.
    from tasks import load_task
    val = load_task("CB", None, 200, 100, seed=1, eval_split="val")
    test = load_task("CB", None, 200, 100, seed=1, eval_split="test")
    assert (len(val.test), len(test.test), val.sizes_full["val"], val.sizes_full["test"]) == (50, 56, 50, 56)
    assert len(val.train) == len(test.train) == 200   # training is the same draw either way
    assert not {ex.text for ex in val.test} & {ex.text for ex in val.train}
