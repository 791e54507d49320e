import json
import os
from collections import Counter

import pytest

import tasks
from core.errors import UsageError
from tasks.base import Example, stratified_sample
from tests.conftest import HAVE_REAL_DATA, REAL_DATA, write_task


def test_literature_loader_reads_olora_layout_and_drops_unknown_labels(cl_data):
    d = tasks.load_task("amazon", cl_data, None, None, seed=1)
    assert d.labels == ("very negative", "negative", "neutral", "positive", "very positive")
    assert len(d.train) == 25 and len(d.test) == 10
    assert d.dropped == {"train": 2, "test": 1}
    assert all(ex.label in d.labels for ex in d.train + d.test)


def test_literature_task_needs_a_data_dir(monkeypatch):
    monkeypatch.delenv("CL_DATA_DIR", raising=False)
    with pytest.raises(UsageError, match="CL_DATA_DIR"):
        tasks.load_task("dbpedia", None, 10, 10, seed=1)


def test_data_dir_from_environment(cl_data, monkeypatch):
    monkeypatch.setenv("CL_DATA_DIR", cl_data)
    assert len(tasks.load_task("yahoo", None, None, None, seed=1).train) == 20


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
    total = len(d.train) + len(d.test)
    assert total >= min_rows and 0.15 < len(d.test) / total < 0.25
    assert not {e.text for e in d.train} & {e.text for e in d.test}  # duplicates in the source stay on one side
    # the test split never depends on the seed
    assert tasks.load_task(name, None, None, 50, seed=7).test == tasks.load_task(name, None, None, 50, seed=1).test


@pytest.mark.skipif(not HAVE_REAL_DATA, reason="../shared/data/CL_Benchmark not present")
def test_real_cl_benchmark_files_at_full_size():
    mnli = tasks.load_task("MNLI", REAL_DATA, None, None, seed=1)
    assert mnli.dropped["test"] == 131          # O-LoRA's rows labelled "-"
    assert set(mnli.labels) == {"neutral", "entailment", "contradiction"}
    for name in tasks.ORDERS["4"]:
        d = tasks.load_task(name, REAL_DATA, 50, 20, seed=1)
        assert len(d.train) == 50 and len(d.test) == 20
        with open(os.path.join(REAL_DATA, tasks.literature.LITERATURE[name][0], "labels.json")) as f:
            assert list(d.labels) == json.load(f)
