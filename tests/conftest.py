import importlib.util
import json
import os
import secrets
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Under pytest-xdist (make test runs 2 workers) each worker, and every run it starts, gets its share of the
# cores, at most the 2 threads measured fastest: two workers of 2 OpenMP threads each on a 2-core machine spin
# against each other.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1 and not os.environ.get("CL_THREADS"):
    os.environ["CL_THREADS"] = str(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))
# One Ray token for every Ray process the tests start: where ~/.ray/auth_token is missing, two workers' Ray
# instances starting at once would each write it (unlocked) and could reject each other's processes.
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

from harness.models import load_model, load_tokenizer, set_threads, tiny_model  # noqa: E402

set_threads()

# The real O-LoRA data, where CI or a developer has it beside the checkout; tests that need it skip otherwise.
REAL_DATA = os.environ.get("CL_DATA_DIR") or os.path.join(ROOT, "..", "shared", "data", "CL_Benchmark")
HAVE_REAL_DATA = os.path.isdir(REAL_DATA)


def sweep_setup(options):
    """The config every cell of `harness sweep ... *options` shares, as the sweep command builds it: what a test's
    plan() must be given for its cells to be that sweep's (a finished run of another setup is not)."""
    from harness import config
    from harness.cli import build_parser
    return config.from_args(build_parser().parse_args(["sweep", "--methods", "zero_shot", "--orders", "bbc",
                                                       *options]))


def bench_script(name):
    """A script of bench/ (not a package) loaded as a module, so tests can call its functions."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer("tiny-llama")


@pytest.fixture
def tiny(tokenizer):
    """(model, tokenizer): a fresh random 2-layer Llama with the embedded tokenizer."""
    return tiny_model(tokenizer, seed=0), tokenizer


@pytest.fixture(scope="session")
def smollm():
    """The real embedded model (about 20 s to load): only a few tests use it."""
    return load_model("smollm2-135m")


def write_task(root, rel, labels, train, test):
    folder = os.path.join(root, rel)
    os.makedirs(folder, exist_ok=True)
    for name, obj in (("labels.json", labels), ("train.json", train), ("test.json", test)):
        with open(os.path.join(folder, name), "w") as f:
            json.dump(obj, f)
    return folder


def rows(pairs):
    return [{"label": label, "sentence": text} for label, text in pairs]


@pytest.fixture
def cl_data(tmp_path):
    """A small self-made CL_Benchmark in O-LoRA's layout with the four tasks of orders 1-3."""
    root = tmp_path / "CL_Benchmark"
    topics = ["World", "Sports", "Business", "Science or Technology"]
    write_task(root, "TC/agnews", topics,
               rows([(topics[i % 4], f"news item {i} about {topics[i % 4].lower()}") for i in range(40)]),
               rows([(topics[i % 4], f"test news {i} on {topics[i % 4].lower()}") for i in range(12)]))
    write_task(root, "TC/dbpedia", ["Company", "Artist", "Village"],
               rows([(["Company", "Artist", "Village"][i % 3], f"entity {i}") for i in range(30)]),
               rows([(["Company", "Artist", "Village"][i % 3], f"test entity {i}") for i in range(9)]))
    write_task(root, "TC/yahoo", ["Health", "Sports"],
               rows([(["Health", "Sports"][i % 2], f"question {i}") for i in range(20)]),
               rows([(["Health", "Sports"][i % 2], f"test question {i}") for i in range(6)]))
    sent = ["very negative", "negative", "neutral", "positive", "very positive"]
    # two rows with a label outside labels.json ("-"): the loader must drop them and count them
    write_task(root, "SC/amazon", sent,
               rows([(sent[i % 5], f"review {i}") for i in range(25)] + [("-", "no gold label"), ("-", "again")]),
               rows([(sent[i % 5], f"test review {i}") for i in range(10)] + [("-", "unlabelled")]))
    return str(root)
