"""ChatDoctor's BERTScore through the real `bert-score` package, on a tiny BERT built from a config (no download).

The tiny model's weights are random, so its scores mean nothing as similarity; what the tests check are the
properties BERTScore has by definition, whatever the encoder: a pair of identical texts scores exactly 1 in P, R
and F1 (every token's best match is itself, cosine 1); P of (a, b) is R of (b, a) (P matches the candidate's
tokens against the reference's, R the other way); F1 is their harmonic mean; rescaling is (x - b) / (1 - b); an
empty side scores raw 0 (the package's rule); and the corpus value is the mean of the items.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ptst.data import DatasetRef, load
from ptst.errors import MissingExtra
from ptst.metrics import TASK_METRICS, MetricUnavailable, bertscore, chatdoctor_bertscore

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WORDS = [
    "the",
    "patient",
    "has",
    "a",
    "mild",
    "headache",
    "fever",
    "rest",
    "drink",
    "water",
    "see",
    "doctor",
    "child",
    "cough",
    "take",
    "medicine",
    "sleep",
    "hello",
    "hi",
    "this",
    "is",
    "synthetic",
    "test",
    "answer",
    "keep",
    "hydrated",
    "measure",
    "temperature",
    "again",
    "in",
    "few",
    "hours",
]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("bert_score", reason="the 'bertscore' extra (bert-score) is not installed")
    torch = pytest.importorskip("torch")
    from transformers import BertConfig, BertModel, BertTokenizer

    d = tmp_path_factory.mktemp("tiny-bert")
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(vocab_file=str(d / "vocab.txt"), model_max_length=64).save_pretrained(d)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(d)
    return str(d)


def _score(model: str, responses: list[str], references: list[str], **kw):
    return bertscore(responses, references, model_type=model, num_layers=2, device="cpu", **kw)


def test_identical_texts_score_one_and_the_settings_are_recorded(tiny_bert: str) -> None:
    s = _score(tiny_bert, ["the patient has a mild headache"], ["the patient has a mild headache"])
    assert s.n == 1
    assert (s.precision, s.recall, s.f1) == (pytest.approx(1.0, abs=1e-5),) * 3
    assert (s.model_type, s.num_layers, s.idf, s.rescale_with_baseline) == (tiny_bert, 2, False, False)
    assert s.settings is not None and s.settings.startswith(f"{tiny_bert}_L2_no-idf_version=")
    assert s.f1_ci95 is None  # one pair: no interval


def test_precision_and_recall_swap_with_the_roles(tiny_bert: str) -> None:
    a, b = "drink water and rest", "see a doctor and take medicine"
    ab = _score(tiny_bert, [a], [b])
    ba = _score(tiny_bert, [b], [a])
    assert ab.precision == pytest.approx(ba.recall, abs=1e-6)
    assert ab.recall == pytest.approx(ba.precision, abs=1e-6)
    assert ab.f1 == pytest.approx(2 * ab.precision * ab.recall / (ab.precision + ab.recall), abs=1e-6)
    assert ab.f1 < 0.9999  # different texts are not a perfect match


def test_corpus_value_is_the_mean_and_empty_sides_score_zero(tiny_bert: str) -> None:
    responses = ["the patient has a mild headache", "drink water", "", "sleep"]
    references = ["the patient has a mild headache", "rest and see a doctor", "take medicine", "  "]
    s = _score(tiny_bert, responses, references)
    one = _score(tiny_bert, responses[1:2], references[1:2]).f1
    assert s.f1_items[0] == pytest.approx(1.0, abs=1e-5)
    assert s.f1_items[1] == pytest.approx(one, abs=1e-6)  # batching does not change a pair's score
    assert s.f1_items[2:] == (0.0, 0.0)
    assert s.f1 == pytest.approx(sum(s.f1_items) / 4)
    assert s.f1_ci95 is not None and s.f1_ci95[0] < s.f1 < s.f1_ci95[1]


def test_rescaling_with_a_custom_baseline(tiny_bert: str, tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.tsv"  # bert-score's layout: header, then one row per layer
    baseline.write_text("LAYER,P,R,F\n0,0.1,0.1,0.1\n1,0.2,0.2,0.2\n2,0.5,0.4,0.25\n")
    pairs = (["drink water and rest", ""], ["see a doctor and take medicine", "take medicine"])
    raw = _score(tiny_bert, *pairs)
    scaled = _score(tiny_bert, *pairs, rescale_with_baseline=True, baseline_path=str(baseline))
    assert scaled.rescale_with_baseline and scaled.baseline_path == str(baseline)
    assert scaled.settings is not None and scaled.settings.endswith("-custom-rescaled")
    assert scaled.f1_items[0] == pytest.approx((raw.f1_items[0] - 0.25) / 0.75, abs=1e-6)
    assert scaled.f1_items[1] == pytest.approx(-0.25 / 0.75)  # an empty side: raw 0, rescaled like any score
    # P is rescaled with its own baseline (0.5): raw P of pair 0 is 2 * raw.precision (pair 1 is raw 0).
    assert scaled.precision == pytest.approx(((2 * raw.precision - 0.5) / 0.5 + (0 - 0.5) / 0.5) / 2, abs=1e-6)
    with pytest.raises(MetricUnavailable, match="no rescaling baseline"):
        _score(tiny_bert, *pairs, rescale_with_baseline=True, baseline_path=str(tmp_path / "missing.tsv"))
    with pytest.raises(MetricUnavailable, match="needs lang"):
        _score(tiny_bert, *pairs, rescale_with_baseline=True, lang=None, baseline_path=str(baseline))


def test_chatdoctor_fixture_through_the_loader_and_the_task_metric(tiny_bert: str) -> None:
    """Doctor answers from the HealthCareMagic-schema fixture, scored against themselves: F1 = 1 for each."""
    ex = load(DatasetRef(name="chatdoctor"), data_dirs=[FIXTURES], require_answer=True)
    refs = [e.answer or "" for e in ex]
    v = chatdoctor_bertscore(refs, refs, model_type=tiny_bert, num_layers=2, device="cpu")
    assert (v.metric, v.n) == ("chatdoctor_bertscore", 5)
    assert v.value == pytest.approx(1.0, abs=1e-5)
    assert v.details["precision"] == pytest.approx(1.0, abs=1e-5)
    assert (v.details["model_type"], v.details["num_layers"], v.details["rescale_with_baseline"]) == (
        tiny_bert,
        2,
        False,
    )


def test_a_model_that_cannot_be_loaded_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("bert_score", reason="the 'bertscore' extra (bert-score) is not installed")
    with pytest.raises(MetricUnavailable, match="give num_layers"):
        bertscore(["a"], ["b"], model_type=str(tmp_path / "no-such-model"))
    with pytest.raises(MetricUnavailable, match="could not be loaded") as e:
        bertscore(["a"], ["b"], model_type=str(tmp_path / "no-such-model"), num_layers=2, device="cpu")
    assert "\n" not in str(e.value)


def test_task_metric_is_corpus_level_and_empty_needs_nothing() -> None:
    metric = TASK_METRICS["chatdoctor_bertscore"]
    assert metric.level == "corpus"
    v = metric.score([], [])  # no pairs: no model is loaded, no value
    assert (v.n, v.value, v.ci95) == (0, None, None)
    with pytest.raises(ValueError):
        metric.score(["a"], [])


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bert_score", None)  # `import bert_score` now raises ImportError
    with pytest.raises(MissingExtra) as e:
        bertscore(["a"], ["b"])
    assert str(e.value) == "BERTScore (ChatDoctor's metric) needs the 'bertscore' extra: pip install 'ptst[bertscore]'"
    assert e.value.exit_code == 2


def test_roberta_family_encodes_under_this_transformers(tmp_path: Path) -> None:
    """The default model (roberta-large) takes bert-score's RoBERTa branch (byte-level BPE, add_prefix_space);
    a tiny RoBERTa built from config checks that branch works with the installed transformers."""
    pytest.importorskip("bert_score", reason="the 'bertscore' extra (bert-score) is not installed")
    torch = pytest.importorskip("torch")
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {t: i for i, t in enumerate([*specials, *"abcdefghijklmnopqrstuvwxyz", "Ġ", "Ġt", "Ġth", "Ġthe"])}
    merges = [("Ġ", "t"), ("Ġt", "h"), ("Ġth", "e")]
    RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=64).save_pretrained(tmp_path)
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=80,
        pad_token_id=1,
    )
    RobertaModel(config).save_pretrained(tmp_path)
    s = _score(str(tmp_path), ["the cat sat", "the dog"], ["the cat sat", "a dog ran"])
    assert s.f1_items[0] == pytest.approx(1.0, abs=1e-5)
    assert 0.0 < s.f1_items[1] < 0.9999  # real tokens were compared (bert-score scores all-special input as 0)
