"""Method discovery: a module that fails to import is isolated and reported; the other methods work."""
import json
import os
import shutil
import sys
import uuid

import pytest

import methods
from core.errors import UsageError
from harness.cli import main
from tests.conftest import ROOT
from tests.test_runner import run

BROKEN_DEP = "import cl_harness_no_such_optional_dependency  # noqa: F401\n"
BAD_SYNTAX = "from methods.base import Method\n\n\nclass Typo(Method:\n    NAME = 'typo'\n"


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A temporary methods package on sys.path: a copy of seq_lora.py, a module whose optional dependency
    is missing (ImportError) and one with a syntax error; discovery's default package points at it."""
    name = f"cl_tmp_methods_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "pkgs" / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    shutil.copy(os.path.join(ROOT, "methods", "seq_lora.py"), folder / "seq_lora.py")
    (folder / "broken_dep.py").write_text(BROKEN_DEP)
    (folder / "bad_syntax.py").write_text(BAD_SYNTAX)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    monkeypatch.setattr(methods, "PACKAGE", name)
    yield name, folder
    methods._cache.pop(name, None)
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def test_a_broken_module_is_skipped_and_reported_by_file_name(package):
    name, _ = package
    found = methods.discover()
    assert list(found) == ["seq_lora"] and found["seq_lora"].__module__ == f"{name}.seq_lora"
    broken = methods.broken_modules()
    assert set(broken) == {f"{name}/broken_dep.py", f"{name}/bad_syntax.py"}
    assert broken[f"{name}/broken_dep.py"] == (f"{name}.broken_dep: ModuleNotFoundError: No module named "
                                                "'cl_harness_no_such_optional_dependency'")
    assert broken[f"{name}/bad_syntax.py"].startswith(f"{name}.bad_syntax: SyntaxError: ")
    assert all("\n" not in error for error in broken.values())


def test_seq_lora_still_runs_beside_broken_modules(package, tmp_path, tokenizer):
    name, _ = package
    out, _ = run(tmp_path, "r", tokenizer)   # run_bench resolves --method seq_lora through discovery
    card = json.load(open(os.path.join(out, "method.json")))
    assert card["name"] == "seq_lora" and card["trainable_parameters"] > 0
    lines = open(os.path.join(out, "matrix.csv")).read().splitlines()
    assert [ln.split(",")[0] for ln in lines[1:]] == ["base", "bbc", "hutto_amazon"]
    assert methods.get_method("seq_lora").__module__ == f"{name}.seq_lora"


def test_list_shows_the_working_methods_then_each_broken_module(package, capsys):
    name, _ = package
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    methods_part = out.split("\nTasks:")[0]
    assert "seq_lora" in methods_part and "keeps: nothing from past tasks" in methods_part
    dep = f"  {name}/broken_dep.py could not be imported: {name}.broken_dep: ModuleNotFoundError: "
    syntax = f"  {name}/bad_syntax.py could not be imported: {name}.bad_syntax: SyntaxError: "
    assert dep in methods_part and syntax in methods_part
    assert methods_part.index("seq_lora") < methods_part.index(dep)


def test_using_a_broken_module_says_it_failed_to_import_and_why(package, capsys, tmp_path):
    name, _ = package
    with pytest.raises(UsageError, match=f"{name}/broken_dep.py could not be imported: .*No module named"):
        methods.get_method("broken_dep")
    with pytest.raises(UsageError, match=f"{name}/bad_syntax.py could not be imported: .*SyntaxError"):
        methods.get_method("bad_syntax")
    # a NAME that only a broken module could define: the broken modules are named with their errors
    with pytest.raises(UsageError) as e:
        methods.get_method("typo")
    assert "unknown method 'typo'" in str(e.value) and "the following modules failed to import" in str(e.value)
    assert f"{name}/bad_syntax.py" in str(e.value) and f"{name}/broken_dep.py" in str(e.value)
    # through the CLI: one line on stderr, status 2, before any model is loaded
    assert main(["bench", "--method", "broken_dep", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "broken_dep.py could not be imported" in err
    assert not (tmp_path / "b").exists()


def test_an_unknown_name_suggests_the_nearest_known_one():
    with pytest.raises(UsageError) as e:
        methods.get_method("seq_lorra")
    message = str(e.value)
    assert message.startswith("unknown method 'seq_lorra'; did you mean 'seq_lora'? known methods: ")
    assert "craft" in message and "replay" in message
    with pytest.raises(UsageError, match="did you mean 'i_lora'"):
        methods.get_method("ilora")
    with pytest.raises(UsageError) as e:
        methods.get_method("zzzzzz")
    assert "did you mean" not in str(e.value)


def test_two_methods_with_one_name_stay_an_error(package):
    _, folder = package
    text = (folder / "seq_lora.py").read_text().replace("class SeqLoRA", "class Twin")
    (folder / "twin.py").write_text(text)
    with pytest.raises(RuntimeError, match="two methods are named 'seq_lora'"):
        methods.discover()


def test_the_scan_is_cached_and_sees_a_file_added_fixed_or_removed(package, monkeypatch):
    name, folder = package
    scans = []
    real_scan = methods._scan
    monkeypatch.setattr(methods, "_scan", lambda *a: scans.append(a) or real_scan(*a))
    methods.clear_cache()
    methods.discover()
    methods.discover()
    methods.get_method("seq_lora")
    assert len(scans) == 1
    (folder / "extra.py").write_text("from methods._lora import LoRAMethod\n\n\n"
                                     "class Extra(LoRAMethod):\n    NAME = 'extra'\n")
    assert "extra" in methods.discover() and len(scans) == 2
    (folder / "broken_dep.py").write_text("from methods._lora import LoRAMethod\n\n\n"
                                          "class Fixed(LoRAMethod):\n    NAME = 'fixed'\n")
    assert "fixed" in methods.discover() and f"{name}/broken_dep.py" not in methods.broken_modules()
    (folder / "extra.py").unlink()
    assert "extra" not in methods.discover()
    methods.clear_cache()
    methods.discover()
    assert len(scans) == 5


def test_a_method_file_dropped_into_the_package_is_discovered_and_runs(package, tmp_path, tokenizer):
    # In a temporary package, not methods/: a file there would show up in other test workers' scans.
    _, folder = package
    (folder / "dropped_probe.py").write_text(
        "from methods.base import Method\n\n\n"
        "class Probe(Method):\n    NAME = 'dropped_probe'\n    DESCRIPTION = 'test probe'\n\n"
        "    def trainable_parameters(self):\n        return []\n")
    assert "dropped_probe" in methods.discover()
    out, _ = run(tmp_path, "p", tokenizer, method="dropped_probe", method_args={})
    assert json.load(open(os.path.join(out, "method.json")))["name"] == "dropped_probe"
    (folder / "dropped_probe.py").unlink()
    assert "dropped_probe" not in methods.discover()


def test_the_real_methods_package_imports_whole():
    assert methods.broken_modules() == {}
    assert {"seq_lora", "replay", "craft", "o_lora", "inc_lora", "i_lora", "per_task", "mtl",
            "zero_shot"} <= set(methods.discover())


def test_the_learners_not_tuned_on_their_own_train_seq_loras_passes_and_name_their_one_epoch_runs():
    """Equal passes over the data (docs/results.md, "The baselines' epochs"): the bounds and the continual learners
    whose epochs were not validated for themselves take seq_lora's, and its former value names their older runs;
    those measured on their own (craft; replay and o_lora, three by their own runs; inc_lora is o_lora's ablation
    and trains as it does) keep theirs."""
    found = methods.discover()
    seq_lora = found["seq_lora"]
    on_budget = {name for name, klass in found.items() if name != "seq_lora"
                 and klass.SETTINGS.get("epochs") is seq_lora.SETTINGS["epochs"]}
    assert on_budget == {"per_task", "mtl", "ewc", "lwf", "i_lora", "curlora", "crma", "adaptive_svd"}
    for name in on_budget | {"replay", "o_lora", "inc_lora"}:
        assert found[name].FORMER_DEFAULTS == {"one-epoch defaults": {"epochs": 1}}, name
    # replay's and o_lora's own values (equal to seq_lora's today, each measured for itself: a move of seq_lora's
    # does not carry them)
    for name in ("replay", "o_lora"):
        assert found[name].SETTINGS["epochs"] is not seq_lora.SETTINGS["epochs"], name
        assert found[name].resolve_settings({})["epochs"] == 3, name
    for name in on_budget:
        assert found[name].SETTINGS["epochs"] is seq_lora.SETTINGS["epochs"], name   # by reference, not a copy
        assert found[name].resolve_settings({})["epochs"] == seq_lora.resolve_settings({})["epochs"] == 3, name
        assert found[name].resolve_settings({"epochs": "1"})["epochs"] == 1   # still a setting of each
    assert found["inc_lora"].resolve_settings({})["epochs"] == found["o_lora"].resolve_settings({})["epochs"]


def test_every_former_defaults_entry_names_current_settings_and_differs_from_the_next_newer():
    """Each FORMER_DEFAULTS entry (newest first) lists today's settings only, and moves at least one of them against
    the next newer entry: an entry without a move of its own could never name a run (harness.config)."""
    for name, klass in methods.discover().items():
        newer = {}
        for entry, former in klass.FORMER_DEFAULTS.items():
            assert set(former) <= set(klass.all_settings()), (name, entry)
            assert any(k not in newer or newer[k] != v for k, v in former.items()), (name, entry)
            assert set(newer) <= set(former), (name, entry)   # an older entry holds every newer one's keys
            newer = former
