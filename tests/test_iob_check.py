"""Annotation QC: errors with file:line, and agreement numbers on a hand-made pair with known kappa."""

import json

import pytest
from typer.testing import CliRunner

from seektune.cli import app
from seektune.data.iob_check import check_iob

# Annotator A and B on the same 10 tokens (two sentences). By hand:
#   observed agreement po = 8/10; marginals A: B-PER 1, I-PER 1, O 6, B-LOC 1, B-ORG 1
#   B: B-PER 1, I-PER 1, O 5, B-ORG 2, I-ORG 1 -> pe = (1 + 1 + 30 + 0 + 2 + 0) / 100 = 0.34
#   kappa = (0.8 - 0.34) / (1 - 0.34) = 0.69697
#   entities A {PER 0-2, LOC 4-5, ORG 3-4 (sent 2)}, B {PER 0-2, ORG 4-5, ORG 3-5 (sent 2)}: 1 matched of 3 / 3
A = "Ann\tB-PER\nLee\tI-PER\nin\tO\nthe\tO\nParis\tB-LOC\n\nyes\tO\nand\tO\nat\tO\nIBM\tB-ORG\nnow\tO\n"
B = "Ann\tB-PER\nLee\tI-PER\nin\tO\nthe\tO\nParis\tB-ORG\n\nyes\tO\nand\tO\nat\tO\nIBM\tB-ORG\nnow\tI-ORG\n"


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_agreement_numbers_match_hand_computation(tmp_path):
    rep = check_iob(_write(tmp_path, "a.conll", A), _write(tmp_path, "b.conll", B), threshold=0.98)
    a = rep.agreement
    assert a["token_agreement"] == pytest.approx(0.8)
    assert a["kappa"] == pytest.approx(0.46 / 0.66, abs=1e-9)
    assert (a["entities_a"], a["entities_b"], a["entities_matched"]) == (3, 3, 1)
    assert a["entity_f1"] == pytest.approx(1 / 3)
    assert [(d["line_a"], d["a"], d["b"]) for d in a["disagreements"]] == [(5, "B-LOC", "B-ORG"), (11, "O", "I-ORG")]
    assert not rep.passed and not rep.issues
    same = check_iob(tmp_path / "a.conll", tmp_path / "a.conll")
    assert same.passed and same.agreement["kappa"] == pytest.approx(1.0)
    # the gate is the chosen metric: token agreement 0.8 passes a 0.75 threshold, F1 0.33 does not
    assert check_iob(tmp_path / "a.conll", tmp_path / "b.conll", threshold=0.75, gate="agreement").passed
    assert not check_iob(tmp_path / "a.conll", tmp_path / "b.conll", threshold=0.75, gate="f1").passed


def test_errors_name_file_line_and_kind(tmp_path):
    bad = ("Ann\tI-PER\n"        # 1: I- after O (sentence start)
           "Lee\tB-LOC\n"        # 2: fine
           "x\tI-PER\n"          # 3: I-PER after B-LOC
           "y\tB-\n"             # 4: empty entity type
           "z\n"                 # 5: token without tag
           "w\tX-FOO\n"          # 6: unknown tag
           "\n")
    p = _write(tmp_path, "bad.conll", bad)
    rep = check_iob(p)
    got = {(i.line, i.kind) for i in rep.issues}
    assert got == {(1, "invalid_transition"), (3, "invalid_transition"), (4, "empty_entity"),
                   (5, "count_mismatch"), (6, "unknown_tag")}
    assert all(i.source == str(p) for i in rep.issues)
    assert "I-PER after B-LOC" in next(i.message for i in rep.issues if i.line == 3)
    assert not rep.passed
    # with declared types, a well-formed but unlisted type is unknown
    ok = _write(tmp_path, "ok.conll", "a\tB-PER\nb\tI-PER\nc\tB-GPE\n")
    assert {i.kind for i in check_iob(ok, types=["PER"]).issues} == {"unknown_tag"}


def test_iobes_transitions(tmp_path):
    p = _write(tmp_path, "e.conll", "a\tB-X\nb\tO\nc\tS-Y\nd\tE-Y\ne\tB-Z\nf\tE-Z\n")
    lines = sorted(i.line for i in check_iob(p, scheme="iobes").issues)
    assert lines == [2, 4]  # B-X not closed before O; E-Y after S-Y


def test_token_mismatch_is_reported_not_scored(tmp_path):
    a = _write(tmp_path, "a.conll", A)
    b = _write(tmp_path, "b.conll", B.replace("Paris", "Rome"))
    rep = check_iob(a, b)
    assert [i.kind for i in rep.issues] == ["token_mismatch"]
    assert rep.agreement["sentences_compared"] == 1 and rep.agreement["sentences_skipped"] == 1


def test_cli_exit_codes_and_report(tmp_path):
    a, b = _write(tmp_path, "a.conll", A), _write(tmp_path, "b.conll", B)
    r = CliRunner().invoke(app, ["data", "check-iob", str(a), "--against", str(a)])
    assert r.exit_code == 0, r.output
    out = tmp_path / "rep.json"
    r = CliRunner().invoke(app, ["data", "check-iob", str(a), "--against", str(b), "--report", str(out)])
    assert r.exit_code == 1
    rep = json.loads(out.read_text())
    assert rep["passed"] is False and rep["agreement"]["kappa"] == pytest.approx(0.69697, abs=1e-5)
    r = CliRunner().invoke(app, ["data", "check-iob", str(tmp_path / "missing.conll")])
    assert r.exit_code == 2 and "not found" in r.output
