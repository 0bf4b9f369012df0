"""A damaged, lost or hand-edited run folder never pays twice and never reports fewer rows as 'complete' (issue 23).

Each test is one finding of the issue, written from its list: the damage is done by hand (sqlite3, rm, ln -s), the
money is counted by the mock backend's test-only call log (one line per response it makes), and the expectation is
the issue's: exit 2 with one line naming what is wrong and how to go on, or the same rows as before the damage.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from test_store import _damage_pages, _mock_spec

from ptst.backends.mock import CALLS_FILE_ENV
from ptst.cli import main
from ptst.errors import StoreError
from ptst.store import Judged, RunStore
from ptst.store import integrity as store_integrity
from ptst.store.scrub import known_secrets

N_GENERATIONS = 3 * 2 * 10  # base + 2 fine-tuned models, 2 test templates, 10 prompts (tests/test_store._mock_spec)


@pytest.fixture
def calls(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "calls.txt"
    monkeypatch.setenv(CALLS_FILE_ENV, str(path))
    return path


def _bought(calls: Path, kind: str = "generate") -> int:
    lines = calls.read_text().splitlines() if calls.exists() else []
    return sum(n for line, n in Counter(lines).items() if line.startswith(kind))


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def _sql(db: Path, *statements: str) -> None:
    with sqlite3.connect(db) as c:
        for s in statements:
            c.execute(s)


def _rows(db: Path, table: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.fixture
def finished(tmp_path, calls, capsys) -> tuple[Path, Path, dict]:
    """A finished mock run: (spec, out, results.json)."""
    spec, out = _mock_spec(tmp_path), tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 0
    assert _bought(calls) == N_GENERATIONS
    capsys.readouterr()
    return spec, out, json.loads((out / "results.json").read_text())


# -- 1. no usable store ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["deleted", "dangling symlink", "symlink loop"])
def test_a_run_folder_without_its_store_is_refused_and_nothing_is_bought(finished, calls, capsys, how):
    spec, out, _ = finished
    db = out / "ptst.db"
    db.unlink()
    if how == "dangling symlink":
        db.symlink_to(out / "elsewhere.db")
    elif how == "symlink loop":
        db.symlink_to(db)
    assert main(["run", str(spec), "--out", str(out)]) == 2
    [err] = _errors(capsys)
    assert "ptst.db" in err and "--fresh" in err and "new --out" in err
    assert _bought(calls) == N_GENERATIONS  # not one response bought again
    # starting over deliberately: everything is bought again, once
    assert main(["run", str(spec), "--out", str(out), "--fresh"]) == 0
    assert _bought(calls) == 2 * N_GENERATIONS and _rows(db, "generations") == N_GENERATIONS


def test_fresh_is_refused_where_the_store_is_there(finished, capsys):
    spec, out, _ = finished
    assert main(["run", str(spec), "--out", str(out), "--fresh"]) == 2
    [err] = _errors(capsys)
    assert "--fresh starts over only where the run store is lost" in err


# -- 1. committed work outside the WAL ------------------------------------------------------------------------------
def test_work_lost_with_the_wal_after_a_kill_is_refused(tmp_path, monkeypatch):
    """Rows committed since the last checkpoint live only in ptst.db-wal; a kill then a deleted -wal loses them. The
    record beside the store (rewritten on every commit) still counts them, so the next open refuses to buy them."""
    monkeypatch.setattr(store_integrity, "CHECKPOINT_S", 3600.0)
    with RunStore.open(tmp_path / "a") as s:
        s.put_generations([(f"g{i}", "{}", "r") for i in range(10)])
        s.checkpoint()
        s.put_generations([(f"g{i}", "{}", "r") for i in range(10, 38)])
        s.put_judgments("keyword", [(f"j{i}", Judged(False, None, None, None)) for i in range(17)])
        copy = tmp_path / "killed"
        copy.mkdir()  # as a kill leaves it, with the -wal deleted: ptst.db and the folder's other files only
        shutil.copy(tmp_path / "a" / "ptst.db", copy / "ptst.db")
        shutil.copy(tmp_path / "a" / store_integrity.SIDECAR, copy / store_integrity.SIDECAR)
    assert _rows(copy / "ptst.db", "generations") == 10  # what the -wal held is gone
    with pytest.raises(StoreError) as e, RunStore.open(copy):
        pass
    assert "28 of 38 generations rows" in str(e.value) and "17 of 17 judgments rows" in str(e.value)


@pytest.mark.parametrize("damage", [
    "UPDATE meta SET value = '[1, 2]' WHERE key = 'committed'",  # not a mapping: the check must not switch off
    "UPDATE meta SET value = '{\"generations\": \"many\"}' WHERE key = 'committed'",
])
def test_a_damaged_committed_record_in_meta_is_refused(finished, calls, capsys, damage):
    spec, out, _ = finished
    _sql(out / "ptst.db", damage, "DELETE FROM generations")
    assert main(["run", str(spec), "--out", str(out)]) == 2
    [err] = _errors(capsys)
    assert "meta.committed" in err
    assert _bought(calls) == N_GENERATIONS


def test_dropped_meta_with_lost_rows_is_refused_by_the_record_beside_the_store(finished, calls, capsys):
    spec, out, _ = finished
    _sql(out / "ptst.db", "DROP TABLE meta", "DELETE FROM generations WHERE rowid % 2 = 0")
    assert main(["run", str(spec), "--out", str(out)]) == 2
    [err] = _errors(capsys)
    assert f"{N_GENERATIONS // 2} of {N_GENERATIONS} generations rows are gone" in err
    assert _bought(calls) == N_GENERATIONS


@pytest.mark.parametrize("table", ["judgments", "generations", "jobs", "ledger", "costs"])
def test_a_dropped_table_of_paid_work_or_spend_is_exit_2_and_buys_nothing(finished, calls, capsys, table):
    spec, out, _ = finished
    _sql(out / "ptst.db", f"DROP TABLE {table}")
    assert main(["run", str(spec), "--out", str(out)]) == 2
    [err] = _errors(capsys)
    assert table in err and ".recover" in err
    assert _bought(calls) == N_GENERATIONS and _bought(calls, "train") == 2


def test_emptied_costs_are_refused_not_reported_as_zero_spend(finished, capsys):
    spec, out, _ = finished
    _sql(out / "ptst.db", "DELETE FROM costs")
    assert main(["run", str(spec), "--out", str(out)]) == 2
    [err] = _errors(capsys)
    assert "spend of 2 fine-tuning job(s)" in err


# -- 1. the cell index results are built from -----------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["DROP TABLE cells", "DROP TABLE cell_items", "DELETE FROM cell_items",
                                    "DELETE FROM cells WHERE rowid = 1"])
def test_a_lost_cell_index_is_never_a_complete_run_with_fewer_rows(finished, calls, capsys, damage):
    spec, out, before = finished
    _sql(out / "ptst.db", damage)
    assert main(["report", str(out)]) == 2  # a reader cannot rebuild it: it says how
    [err] = _errors(capsys)
    assert "ptst run" in err and "nothing is bought again" in err
    assert main(["run", str(spec), "--out", str(out)]) == 0  # a run rebuilds it from the spec
    after = json.loads((out / "results.json").read_text())
    assert after["status"] == "complete" and after["safety"] == before["safety"] and len(after["safety"]) == 6
    assert _bought(calls) == N_GENERATIONS


# -- 5. outputs are checked ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("junk", ["{not json", '{"status": "complete", "safety": []}'])
def test_a_junk_results_json_is_rewritten_by_a_re_run(finished, junk):
    spec, out, before = finished
    (out / "results.json").write_text(junk)
    (out / "report.md").write_text("edited")
    assert main(["run", str(spec), "--out", str(out)]) == 0
    after = json.loads((out / "results.json").read_text())
    assert after["safety"] == before["safety"]
    assert (out / "report.md").read_text() != "edited"


# -- 7. known secrets ----------------------------------------------------------------------------------------------
SECRET = "sk-damage-test-0123456789abcdef"


def test_known_secrets_are_the_configured_keys(tmp_path):
    key_file = tmp_path / "key.txt"
    key_file.write_text("sk-from-a-file-0000000000\n")
    spec = {"backends": [{"kind": "openai", "api_key_env": "MY_KEY"}], "judge": {"api_key_file": str(key_file)}}
    env = {"MY_KEY": "sk-from-my-key-11111111", "OPENAI_API_KEY": "sk-default-22222222", "UNRELATED": "x" * 20}
    assert set(known_secrets(spec, env)) == {"sk-from-a-file-0000000000", "sk-from-my-key-11111111",
                                             "sk-default-22222222"}


def test_secrets_are_scrubbed_from_everything_stored(tmp_path):
    with RunStore.open(tmp_path, secrets=(SECRET,)) as s:
        s.put_generations([("g", json.dumps({"user": f"key {SECRET}"}), f"echo: Bearer {SECRET}.")])
        s.put_judgments("rubric", [("j", Judged(True, 5, f"reply {SECRET}", f"HTTP 401: {SECRET}"))])
        s.put_failure("c", "generate", "cell", f"failed with {SECRET}")
        s.put("openai:k", {"note": SECRET})
        assert s.responses(["g"]) == {"g": "echo: Bearer ***."}
        assert s.judgments(["j"])["j"].raw == "reply ***"
    assert SECRET.encode() not in b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())


# -- 8. hand-edited rows: caught before anything is spent -----------------------------------------------------------
@pytest.mark.parametrize(("edit", "named"), [
    ("UPDATE judgments SET score = 'five' WHERE rowid = 1", "judgments row"),
    ("UPDATE judgments SET unsafe = 'yes' WHERE rowid = 1", "judgments row"),
    ("INSERT INTO ledger VALUES ('openai:edited', 'not json', 0)", "ledger row 'openai:edited'"),
    ("UPDATE costs SET usd = 'cheap' WHERE rowid = 1", "costs row"),
])
def test_hand_edited_rows_are_refused_before_spending(finished, calls, capsys, edit, named):
    spec, out, _ = finished
    # one response missing as well: a run that read the edit late would have bought it first
    _sql(out / "ptst.db", edit, "DELETE FROM generations WHERE rowid = 1",
         "DELETE FROM meta WHERE key = 'committed'")
    (out / store_integrity.SIDECAR).unlink()  # the loss of the one response is accepted as the error advises
    assert main(["run", str(spec), "--out", str(out)]) == 2
    [err] = _errors(capsys)
    assert named in err and "edited or damaged" in err
    assert _bought(calls) == N_GENERATIONS


def test_invalid_utf8_in_a_response_is_one_line(finished, capsys):
    _, out, _ = finished
    _sql(out / "ptst.db", "UPDATE generations SET response = CAST(x'fffe41' AS TEXT) WHERE rowid = 1")
    assert main(["report", str(out)]) == 2
    [err] = _errors(capsys)
    assert "not valid UTF-8" in err


def test_a_damaged_page_in_a_cleanly_closed_store_is_one_line(finished, capsys):
    spec, out, _ = finished
    with RunStore.open(out) as s:  # enough rows that the damage lands in the responses, read by the stamp
        s.put_generations([(f"k{i}", "{}", "x" * 500) for i in range(400)])
    _damage_pages(out / "ptst.db", first=20, n=30)
    assert main(["run", str(spec), "--out", str(out)]) == 2
    [err] = _errors(capsys)
    assert "unreadable" in err and ".recover" in err
