"""benchmarks/checks.py (issue 27): a benchmark checks its answers before it reports a speed, and the one
place that writes RESULTS.md refuses a run that checked nothing or saw a check fail."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from benchmarks import checks, results_md
from benchmarks.checks import BenchmarkWrong

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """Each test starts as a fresh benchmark process: no check made, none failed."""
    monkeypatch.setattr(checks, "_made", 0)
    monkeypatch.setattr(checks, "_failed", [])


def test_check_raises_what_is_wrong():
    checks.check(True, "fine")
    with pytest.raises(BenchmarkWrong, match="every answer was empty"):
        checks.check(0, "every answer was empty")


def test_statuses_must_be_exactly_the_expected_ones():
    checks.check_statuses("search", {200: 64}, {200: 64})
    with pytest.raises(BenchmarkWrong, match="answered 200: 60, 504: 4, expected 200: 64"):
        checks.check_statuses("search", {200: 60, 504: 4}, {200: 64})


@pytest.mark.parametrize("stored, says", [
    (["a", "b"], "sent 3, stored 2 (1 missing, 0 duplicated, 0 never sent)"),
    (["a", "b", "c", "c"], "sent 3, stored 4 (0 missing, 1 duplicated, 0 never sent)"),
    (["a", "b", "x"], "sent 3, stored 3 (1 missing, 0 duplicated, 1 never sent)"),
])
def test_stored_must_be_what_was_sent_once(stored, says):
    checks.check_stored("gallery", ["a", "b", "c"], ["c", "b", "a"])
    with pytest.raises(BenchmarkWrong) as err:
        checks.check_stored("gallery", ["a", "b", "c"], stored)
    assert says in str(err.value)


def test_vectors_and_hits():
    import numpy as np

    checks.check_vectors("enc", np.eye(3, dtype=np.float32)[:2], 2, 3)
    with pytest.raises(BenchmarkWrong, match="shape"):
        checks.check_vectors("enc", np.eye(3)[:2], 2, 4)
    with pytest.raises(BenchmarkWrong, match="norms"):
        checks.check_vectors("enc", 2 * np.eye(3)[:2], 2, 3)
    with pytest.raises(BenchmarkWrong, match="non-finite"):
        checks.check_vectors("enc", np.full((1, 3), np.nan), 1, 3)
    checks.check_hits("rank", [{"img_id": "a"}, {"img_id": "b"}], 2)
    with pytest.raises(BenchmarkWrong, match="0 hits"):
        checks.check_hits("rank", [], 10)
    with pytest.raises(BenchmarkWrong, match=r"2 hits \(1 distinct\)"):
        checks.check_hits("rank", [{"img_id": "a"}, {"img_id": "a"}], 2)


def test_results_md_is_written_only_after_checks_that_all_passed(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other\nkept\n")
    with pytest.raises(BenchmarkWrong, match="checked none of its answers"):
        results_md.write_section("## Mine", "## Mine\nfast", results)
    checks.check(True, "an answer")
    with pytest.raises(BenchmarkWrong):
        checks.check(False, "an empty answer")
    with pytest.raises(BenchmarkWrong, match="1 check\\(s\\) failed, the first: an empty answer"):
        results_md.write_section("## Mine", "## Mine\nfast", results)  # even when the failure was caught
    assert results.read_text() == "# Benchmark results\n\n## Other\nkept\n"

    checks._failed.clear()
    results_md.write_section("## Mine", "## Mine\nfast", results)
    results_md.write_section("## Mine", "## Mine\nfaster", results)
    assert results.read_text() == "# Benchmark results\n\n## Other\nkept\n\n## Mine\nfaster\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.md"]  # no lock or temp file left


def test_run_exits_3_on_wrong_answers(capsys):
    def wrong():
        checks.check(False, "stored 0 of 500")

    assert checks.run(wrong) == checks.WRONG_EXIT == 3
    assert "WRONG ANSWERS, nothing published: stored 0 of 500" in capsys.readouterr().err
    assert checks.run(lambda: None) == 0 and checks.run(lambda: 1) == 1


def test_checks_needs_only_the_standard_library():
    """gpu_proof.py loads it on a GPU host without the project's dependencies (numpy only inside a function)."""
    tree = ast.parse((ROOT / "benchmarks" / "checks.py").read_text())
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert top and top <= set(sys.stdlib_module_names) | {"__future__"}, top


def test_every_benchmark_exits_through_the_checks():
    """Each script's entry point is checks.run (exit 3 on wrong answers) and none keeps a bare assert."""
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Assert)], path  # `python -O` drops them
        if 'if __name__ == "__main__":' in source:
            tail = source.split('if __name__ == "__main__":', 1)[1]
            assert "run(main)" in tail or "checked(main)" in tail, path.name
