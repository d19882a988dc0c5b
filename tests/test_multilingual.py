"""Multilingual training (docs/multilingual.md): several corpora in one run, each source starting with its target
language's tag, mixed by temperature-based sampling; per-direction validation; ``tgt_lang`` everywhere a model
translates or scores, on both sides of the export.

The corpora are generated: one source text, reversed for target language ``rev`` and upper-cased for ``up`` (two
thirds of the pairs), in ``tmp_path``. One tiny model is trained once for the module (a joint character
vocabulary, so that the tags are target pieces too and the search must ban them).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from run_support import TINY, captured_log, step_losses

import torch_ref
from seq2seq_jax import cli
from seq2seq_jax.core.batching import BatchPolicy
from seq2seq_jax.core.config import ConfigError, DataConfig, ExperimentConfig
from seq2seq_jax.core.encoding import Example
from seq2seq_jax.core.languages import LanguageError, Languages, TaggedTokenizer
from seq2seq_jax.core.mixing import ConcatSource, Mixture, sampling_rates, stream_positions
from seq2seq_jax.core.tokenizer import VocabularyTokenizer, train_tokenizer
from seq2seq_jax.training.batch_iterator import BatchIterator
from seq2seq_jax.training.checkpoint import Checkpointer

WORDS = ["ab", "cd", "ef", "gh", "ij", "kl"]
SOURCES = ["ab cd", "kl", "ef ij gh", ""]  # a blank line gives an empty output line


def write_corpora(root: Path, train_size: int = 150, valid_size: int = 12) -> list[dict]:
    """The two corpora's files under ``root``; returns their ``data.corpora`` entries."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, size in (("train", train_size), ("val", valid_size)):
        src = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in range(size)]
        files = {"en": src, "rev": [s[::-1] for s in src], "en2": src[: size * 2 // 3],
                 "up": [s.upper() for s in src[: size * 2 // 3]]}
        for suffix, lines in files.items():
            (root / f"{split}.{suffix}").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return [{"src": str(root / f"train.{src}"), "tgt": str(root / f"train.{tgt}"), "tgt_lang": tgt, "src_lang": "en",
             "valid_src": str(root / f"val.{src}"), "valid_tgt": str(root / f"val.{tgt}")}
            for src, tgt in (("en", "rev"), ("en2", "up"))]


def multi_config(root: Path, *overrides: str) -> ExperimentConfig:
    config = ExperimentConfig().with_overrides(TINY + ["data.joint_vocab=true", "train.max_steps=12",
                                                       "train.eval_every=6", *overrides])
    data = dataclasses.replace(config.data, corpora=tuple(write_corpora(root)), sampling_temperature=2.0)
    return dataclasses.replace(config, data=data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(workdir, config, log messages)`` of the tiny multilingual model, trained 12 steps."""
    from seq2seq_jax.training.trainer import train

    root = tmp_path_factory.mktemp("multilingual")
    config = multi_config(root / "data")
    with captured_log() as messages:
        train(config, root / "run")
    return root / "run", config, messages


# --- sampling -------------------------------------------------------------------------------------------------


def test_sampling_rates_follow_the_temperature():
    np.testing.assert_allclose(sampling_rates([100, 300], 1.0), [0.25, 0.75])  # proportional
    np.testing.assert_allclose(sampling_rates([100, 400], 2.0), [1 / 3, 2 / 3])  # square roots
    np.testing.assert_allclose(sampling_rates([100, 400], 1e6), [0.5, 0.5], atol=1e-5)  # uniform
    assert sampling_rates([0, 5], 1.0).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="positive"):
        sampling_rates([1], 0.0)


def test_a_corpus_stream_shows_every_pair_before_repeating_and_draws_reproducibly():
    mixture = Mixture((10, 40), temperature=100.0)  # nearly uniform: 25 draws each, the small corpus 2.5 times
    assert mixture.draws == [25, 25]
    first = mixture.epoch_indices(seed=3, epoch=0)
    assert np.array_equal(first, mixture.epoch_indices(seed=3, epoch=0))
    assert not np.array_equal(first, mixture.epoch_indices(seed=4, epoch=0))
    small = first[first < 10]
    assert len(small) == 25 and sorted(small[:10]) == list(range(10)) and sorted(small[10:20]) == list(range(10))
    # the large corpus goes on where the last epoch stopped: epochs 0 and 1 take 50 distinct pairs of 40 + 10
    two_epochs = np.concatenate([first[first >= 10], mixture.epoch_indices(3, 1)[mixture.epoch_indices(3, 1) >= 10]])
    assert sorted(two_epochs[:40]) == list(range(10, 50))
    np.testing.assert_array_equal(stream_positions(7, 5, 4, 0, 1), np.concatenate(
        [stream_positions(7, 0, 7, 0, 1), stream_positions(7, 7, 7, 0, 1)])[5:9])


def _examples(count: int, offset: int) -> list[Example]:
    rng = np.random.default_rng(offset)
    return [Example(np.arange(offset, offset + rng.integers(1, 12), dtype=np.int32) % 50 + 4,
                    np.arange(rng.integers(1, 12), dtype=np.int32) + 4) for _ in range(count)]


@pytest.mark.parametrize("max_tokens", [0, 64])
def test_a_mixed_iterator_draws_the_rates_and_resumes_exactly(max_tokens):
    """Row batches and token budgets, one process's rows of each global batch: the batches of a restored iterator
    are those of an uninterrupted one, and an epoch holds each corpus's draws."""
    source = ConcatSource([_examples(30, 0), _examples(90, 100)])
    mixture = Mixture((30, 90), temperature=2.0, names=("a", "b"))
    policy = BatchPolicy(8, 4, max_tokens=max_tokens, row_quantum=2)

    def iterator(local_rows=None):
        return BatchIterator(source, policy, seed=5, local_rows=local_rows, mixture=mixture)

    whole = iterator()
    epoch = [next(whole) for _ in range(whole.batches_per_epoch)]
    drawn = np.concatenate([batch.index[batch.index >= 0] for batch in epoch])
    assert [(drawn < 30).sum(), (drawn >= 30).sum()] == mixture.draws == [44, 76]
    half = lambda rows: slice(rows // 2, rows)  # noqa: E731 - the second of two processes
    uninterrupted = iterator(half)
    expected = [next(uninterrupted) for _ in range(25)]
    first = iterator(half)
    for _ in range(11):
        next(first)
    resumed = iterator(half)
    resumed.restore(json.loads(json.dumps(first.state())))
    for want in expected[11:]:
        got = next(resumed)
        assert np.array_equal(got.src, want.src) and np.array_equal(got.index, want.index)
    other = BatchIterator(source, policy, seed=5, mixture=Mixture((30, 90), temperature=1.0))
    with pytest.raises(ValueError, match="mixture"):
        other.restore(first.state())


# --- configuration, tags, languages ---------------------------------------------------------------------------


def test_config_checks_the_corpora():
    corpus = {"src": "a.en", "tgt": "a.de", "tgt_lang": "de"}
    with pytest.raises(ConfigError, match="replaces data.train_src"):
        DataConfig(corpora=(corpus,), train_src="x", train_tgt="y")
    with pytest.raises(ConfigError, match="'de' is used twice"):
        DataConfig(corpora=(corpus, corpus))
    with pytest.raises(ConfigError, match=r"corpus 'b' has no tgt_lang"):
        DataConfig(corpora=(corpus, {"src": "b", "tgt": "c", "name": "b"}))
    with pytest.raises(ConfigError, match=r"data.corpora\[0\]: unknown field\(s\) \['tgt_language'\]"):
        DataConfig(corpora=({"src": "a", "tgt": "b", "tgt_language": "de"},))
    with pytest.raises(ConfigError, match="config file"):
        ExperimentConfig().with_overrides(["data.corpora=a.en"])
    config = ExperimentConfig(data=DataConfig(corpora=(corpus, {**corpus, "tgt": "a.fr", "tgt_lang": "fr"})))
    assert ExperimentConfig.from_json(config.to_json()) == config
    assert config.data.languages == {"de": "<2de>", "fr": "<2fr>"}


@pytest.mark.parametrize("kind", ["char", "word", "unigram"])
def test_tags_are_single_pieces_of_every_tokenizer_kind(kind):
    lines = [" ".join(random.Random(i).choices(WORDS, k=5)) for i in range(200)]
    data = DataConfig(tokenizer=kind, vocab_size=300)
    tokenizer = train_tokenizer(data, lines, reserved=("<2de>", "<2fr>"))
    ids = [tokenizer.piece_id(tag) for tag in ("<2de>", "<2fr>")]
    assert None not in ids and len(set(ids)) == 2 and tokenizer.piece_id("<2xx>") is None
    tagged = TaggedTokenizer(tokenizer, ids[:1])
    assert tagged.encode("ab cd") == ids[:1] + tokenizer.encode("ab cd")
    assert tokenizer.decode(tagged.encode("ab cd")[1:]) == "ab cd"
    if kind == "unigram":  # the tag in text is one piece too, never split
        assert tokenizer.pieces(tokenizer.encode("ab <2fr>"))[-1] == "<2fr>"


def test_languages_resolve_or_list_the_model_languages():
    tokenizer = VocabularyTokenizer("char", ["<2de>", "<2fr>", "a", "b"])
    several = Languages({"de": "<2de>", "fr": "<2fr>"}, "W")
    with pytest.raises(LanguageError, match="W translates into de, fr: give the target language"):
        several.source_tokenizer(tokenizer, None)
    with pytest.raises(LanguageError, match="W does not translate into 'cs'; its languages are de, fr"):
        several.source_tokenizer(tokenizer, "cs")
    assert several.source_tokenizer(tokenizer, "fr").encode("ab") == [5, 6, 7]
    assert several.banned_ids(tokenizer) == (4, 5)
    assert Languages({"de": "<2de>"}, "W").resolve(None) == "de"  # the only one
    plain = Languages({}, "W")
    assert plain.source_tokenizer(tokenizer, None) is tokenizer
    with pytest.raises(LanguageError, match="W has no language tags"):
        plain.source_tokenizer(tokenizer, "de")
    with pytest.raises(LanguageError, match="<2cs> is not one piece"):
        Languages({"cs": "<2cs>"}, "W").source_tokenizer(tokenizer, "cs")


def test_a_tag_goes_first_or_last_and_survives_cropping():
    from seq2seq_jax.core.encoding import EOS_ID, encode_pair, new_report

    tokenizer = VocabularyTokenizer("char", ["<2de>", "<2fr>", "a", "b"])
    first = Languages({"de": "<2de>", "fr": "<2fr>"}, "W").source_tokenizer(tokenizer, "fr")
    last = Languages({"de": "<2de>", "fr": "<2fr>"}, "W", "last").source_tokenizer(tokenizer, "fr")
    assert first.encode("ab") == [5, 6, 7] and last.encode("ab") == [6, 7, 5]
    assert first.crop([5, 6, 7], 2) == [5, 6] and last.crop([6, 7, 5], 2) == [6, 5]  # the text is cropped
    data = DataConfig(max_src_len=3, max_tgt_len=10, long_pair_policy="crop", tag_position="last")
    report = new_report(data, "train")
    example = encode_pair("abab", "ab", last, tokenizer, data, report)
    assert example.src.tolist() == [6, 5, EOS_ID] and report.cropped == 1
    with pytest.raises(ConfigError, match="data.tag_position must be 'first' or 'last', got 'middle'"):
        DataConfig(tag_position="middle")
    with pytest.raises(LanguageError, match="first or last in the source, not 'middle'"):
        TaggedTokenizer(tokenizer, [5], "middle")


def test_preprocess_writes_one_tagged_split_per_corpus_whatever_the_workers(tmp_path):
    from seq2seq_jax.training.preprocess import preprocess

    config = multi_config(tmp_path / "data")
    one = preprocess(config, tmp_path / "one", progress=False)
    two = preprocess(config, tmp_path / "two", workers=2, progress=False)
    assert one.splits == ["train.en-rev", "train.en-up", "valid.en-rev", "valid.en-up"]
    src_tok, _ = one.tokenizers()
    for name, tag in (("en-rev", "<2rev>"), ("en-up", "<2up>")):
        train = one.split(f"train.{name}")
        assert {int(example.src[0]) for example in train} == {src_tok.piece_id(tag)}
        assert one.valid_pairs(f"valid.{name}")[0] == tuple(json.loads(
            (tmp_path / "one" / f"valid.{name}.pairs.jsonl").read_text().splitlines()[0]))
    assert one.reports()["train.en-up"].kept == 100
    assert two.manifest["splits"] == one.manifest["splits"]
    for path in sorted((tmp_path / "one").glob("*.array_record")):
        assert path.read_bytes() == (tmp_path / "two" / path.name).read_bytes()


# --- a trained multilingual model -----------------------------------------------------------------------------


def test_training_reports_each_corpus_and_validates_each_direction(trained):
    workdir, _, messages = trained
    saved = ExperimentConfig.load(workdir / "config.json")
    assert saved.data.languages == {"rev": "<2rev>", "up": "<2up>"}  # the workdir records its languages
    rates = sampling_rates([150, 100], 2.0)
    for name, pairs, rate in (("en-rev", 150, rates[0]), ("en-up", 100, rates[1])):
        assert any(m.startswith(f"  corpus {name}: {pairs} pairs, {pairs} kept, rate {rate:.3f}") for m in messages)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if "valid_bleu" in r]
    assert [r["step"] for r in valid] == [6, 12]
    for record in valid:
        assert record["valid_bleu"] == pytest.approx((record["valid_bleu.en-rev"] + record["valid_bleu.en-up"]) / 2)
        assert {"valid_loss.en-rev", "valid_loss.en-up", "valid_exact_match.en-up"} <= set(record)
    with Checkpointer(workdir, keep=3) as checkpoints:
        assert "valid_bleu.en-up" in checkpoints.step_metrics(12)


def test_the_api_takes_tgt_lang_and_never_outputs_a_tag(trained):
    import seq2seq_jax

    workdir, _, _ = trained
    model = seq2seq_jax.load(workdir, beam_size=3)
    tags = [model.tgt_tokenizer.piece_id(tag) for tag in ("<2rev>", "<2up>")]
    assert model.languages.names == ["rev", "up"] and model.decode_config.banned_ids == tuple(sorted(tags))
    for language in ("rev", "up"):
        results = model.translate(SOURCES, tgt_lang=language, n_best=3)
        assert results[-1] == [] and all(len(hyps) == 3 for hyps in results[:-1])
        assert not {token for hyps in results for hyp in hyps for token in hyp.tokens} & set(tags)
    with pytest.raises(LanguageError, match="translates into rev, up"):
        model.translate("ab")
    with pytest.raises(LanguageError, match="does not translate into 'fr'; its languages are rev, up"):
        model.score("ab", "ba", tgt_lang="fr")
    tagged, plain = model.score("ab cd", "DC BA", tgt_lang="up"), model.score("ab cd", "DC BA", tgt_lang="rev")
    assert tagged.count == plain.count and tagged.log_prob != plain.log_prob  # the tag changes the source


def test_cli_translate_evaluate_and_score_take_tgt_lang(trained, tmp_path, capsys):
    import seq2seq_jax

    workdir, _, _ = trained
    model = seq2seq_jax.load(workdir)
    src = tmp_path / "src.txt"
    src.write_text("".join(line + "\n" for line in SOURCES))
    ref = tmp_path / "ref.txt"
    ref.write_text("".join(line.upper() + "\n" for line in SOURCES))
    capsys.readouterr()
    assert cli.main(["translate", "--workdir", str(workdir), "--src", str(src), "--tgt-lang", "up"]) == 0
    expected = [hyps[0].text if hyps else "" for hyps in model.translate(SOURCES, tgt_lang="up")]
    assert capsys.readouterr().out.splitlines() == expected
    assert cli.main(["score", "--workdir", str(workdir), "--src", str(src), "--tgt", str(ref), "--tgt-lang", "up",
                     "--json"]) == 0
    scores = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert scores[0]["log_prob"] == pytest.approx(model.score(SOURCES[0], SOURCES[0].upper(), "up").log_prob)
    assert cli.main(["evaluate", "--workdir", str(workdir), "--src", str(src), "--ref", str(ref), "--tgt-lang",
                     "up", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sentences"] == len(SOURCES)
    assert cli.main(["translate", "--workdir", str(workdir), "--src", str(src)]) == 2
    assert "translates into rev, up: give the target language (--tgt-lang" in capsys.readouterr().err


def test_a_tagged_export_translates_the_same_in_torch_ref(trained, tmp_path, capsys):
    """Parity of a tagged model: torch_ref's beam search from the export, with the tag of --tgt-lang first and
    the tags banned, gives the n-best of the JAX search."""
    import seq2seq_jax
    from seq2seq_jax.training.export import export_torch
    from torch_ref import translate as torch_translate_module

    workdir, _, _ = trained
    export = export_torch(workdir, tmp_path / "export")
    languages = torch_ref.load.languages(export)
    assert languages.names == ["rev", "up"]
    model = seq2seq_jax.load(workdir, beam_size=4, n_best=2)
    torch_model, src_tok, tgt_tok = torch_ref.load_pretrained(export)
    inputs = SOURCES + [" ".join(random.Random(i).choices(WORDS, k=3)) for i in range(30)]
    for language in ("rev", "up"):
        jax_results = model.translate(inputs, tgt_lang=language)
        config = languages.decode_config(model.decode_config, tgt_tok)
        torch_results = torch_translate_module.translate(
            torch_model, languages.source_tokenizer(src_tok, language), tgt_tok, inputs, config)
        for jax_hyps, torch_hyps in zip(jax_results, torch_results, strict=True):
            assert [h.tokens for h in jax_hyps] == [h.tokens for h in torch_hyps]
            np.testing.assert_allclose([h.score for h in jax_hyps], [h.score for h in torch_hyps], atol=1e-4)
    src = tmp_path / "src.txt"
    src.write_text("".join(line + "\n" for line in inputs))
    capsys.readouterr()
    assert torch_translate_module.main([str(export), "--src", str(src), "--tgt-lang", "up", "--beam-size", "4"]) == 0
    assert capsys.readouterr().out.splitlines() == [hyps[0].text if hyps else ""
                                                    for hyps in model.translate(inputs, tgt_lang="up")]
    assert torch_translate_module.main([str(export), "--src", str(src)]) == 2
    assert "translates into rev, up" in capsys.readouterr().err


def test_resume_of_a_mixed_run_is_bit_identical(trained, tmp_path):
    from seq2seq_jax.training.trainer import train

    workdir, config, _ = trained
    run = tmp_path / "run"
    train(dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=6)), run)
    shutil.rmtree(run / "checkpoints" / "6")  # killed after step 6, before its save: resume from step 4
    train(config, run)
    resumed, uninterrupted = step_losses(run), step_losses(workdir)
    assert sorted(resumed) == list(range(1, 13))
    for step in range(5, 13):
        assert resumed[step] == uninterrupted[step], step


def test_a_model_with_the_tag_last_trains_translates_and_exports_with_it_last(trained, tmp_path):
    """``data.tag_position=last``: the training records hold the tag before the EOS, the workdir and the export
    record the position, and the API and torch_ref put the tag there (the same n-best from both)."""
    import seq2seq_jax
    from seq2seq_jax.core.encoding import EOS_ID
    from seq2seq_jax.training.corpus import open_corpus
    from seq2seq_jax.training.export import export_torch
    from seq2seq_jax.training.trainer import train
    from torch_ref import translate as torch_translate_module

    config = multi_config(tmp_path / "data", "data.tag_position=last", "train.max_steps=4", "train.eval_every=4")
    train(config, tmp_path / "run")
    assert ExperimentConfig.load(tmp_path / "run" / "config.json").data.tag_position == "last"
    corpus = open_corpus(tmp_path / "run" / "data")
    src_tok, _ = corpus.tokenizers()
    for name, tag in (("en-rev", "<2rev>"), ("en-up", "<2up>")):
        sources = [example.src for example in corpus.split(f"train.{name}")]
        assert {(int(src[-2]), int(src[-1])) for src in sources} == {(src_tok.piece_id(tag), EOS_ID)}
        assert all(src_tok.piece_id(tag) not in src[:-2].tolist() for src in sources)
    model = seq2seq_jax.load(tmp_path / "run", beam_size=3, n_best=2)
    tagged = model.source_tokenizer("up")
    assert tagged.encode("ab") == src_tok.encode("ab") + [src_tok.piece_id("<2up>")]
    export = export_torch(tmp_path / "run", tmp_path / "export")
    languages = torch_ref.load.languages(export)
    torch_model, torch_src_tok, tgt_tok = torch_ref.load_pretrained(export)
    assert languages.source_tokenizer(torch_src_tok, "up").encode("ab") == tagged.encode("ab")
    inputs = SOURCES + [" ".join(random.Random(i).choices(WORDS, k=3)) for i in range(10)]
    jax_results = model.translate(inputs, tgt_lang="up")
    torch_results = torch_translate_module.translate(
        torch_model, languages.source_tokenizer(torch_src_tok, "up"), tgt_tok, inputs,
        languages.decode_config(model.decode_config, tgt_tok))
    for jax_hyps, torch_hyps in zip(jax_results, torch_results, strict=True):
        assert [h.tokens for h in jax_hyps] == [h.tokens for h in torch_hyps]
        np.testing.assert_allclose([h.score for h in jax_hyps], [h.score for h in torch_hyps], atol=1e-4)
    first = seq2seq_jax.load(tmp_path / "run")
    first.languages = dataclasses.replace(first.languages, position="first")
    assert first.score("ab cd", "AB CD", "up").log_prob != model.score("ab cd", "AB CD", "up").log_prob
    with pytest.raises(ValueError, match="its language tags in one place: .* puts them last, .* first"):
        seq2seq_jax.load([trained[0], tmp_path / "run"])


def test_the_server_takes_tgt_lang_and_lists_the_languages(trained):
    """``tgt_lang`` in /v1/translate and /v1/score (422 listing the languages when missing or unknown); /v1/info
    lists them (the page's language selector); requests into two languages decode alike to the API's answers."""
    from fastapi.testclient import TestClient

    import seq2seq_jax
    from seq2seq_jax.serving.app import create_app
    from seq2seq_jax.serving.schema import ServeLimits

    workdir, _, _ = trained
    model = seq2seq_jax.load(workdir)
    with TestClient(create_app(model, ServeLimits(max_batch=8, warmup_src_len=16), quiet=True)) as client:
        assert client.get("/v1/info").json()["languages"] == ["rev", "up"]
        for language in ("rev", "up"):
            answer = client.post("/v1/translate", json={"texts": SOURCES[:3], "tgt_lang": language, "beam_size": 1,
                                                        "n_best": 1, "attention": True})
            assert answer.status_code == 200, answer.text
            expected = model.translate(SOURCES[:3], tgt_lang=language, beam_size=1, n_best=1)
            translations = answer.json()["translations"]
            assert [t[0]["text"] for t in translations] == [hyps[0].text for hyps in expected]
            assert translations[0][0]["attention"]["source"][0] == f"<2{language}>"
        missing = client.post("/v1/translate", json={"texts": ["ab"]})
        assert missing.status_code == 422 and "translates into rev, up" in missing.text
        unknown = client.post("/v1/score", json={"pairs": [{"src": "ab", "tgt": "BA"}], "tgt_lang": "fr"})
        assert unknown.status_code == 422 and "its languages are rev, up" in unknown.text
        scored = client.post("/v1/score", json={"pairs": [{"src": "ab", "tgt": "AB"}], "tgt_lang": "up"}).json()
        assert scored["scores"][0]["log_prob"] == pytest.approx(model.score("ab", "AB", "up").log_prob)
        page = client.get("/").text
        assert 'id="lang"' in page and "body.tgt_lang" in page


def test_the_page_shows_a_language_selector_and_translates_into_the_chosen_language(trained, tmp_path):
    """Headless chromium on a real server of the multilingual workdir: the selector lists the workdir's
    languages, and each choice gives the server's answer for that language."""
    from test_serve import post, running_server, system_chromium

    executable = system_chromium()
    from playwright.sync_api import sync_playwright

    workdir, _, _ = trained
    with running_server(workdir, tmp_path) as (url, _, _), sync_playwright() as playwright:
        expected = {language: post(f"{url}/v1/translate", {"texts": [SOURCES[2]], "tgt_lang": language,
                                                           "beam_size": 1, "n_best": 1}).json()
                    ["translations"][0][0]["text"] for language in ("rev", "up")}
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            sent = []
            page.on("request", lambda request: sent.append(json.loads(request.post_data))
                    if request.url.endswith("/v1/translate") else None)
            page.goto(url, timeout=60_000)
            page.wait_for_selector("#langbox:not([hidden])", timeout=60_000)
            assert page.locator("#lang option").all_inner_texts() == ["rev", "up"]
            page.fill("#source", SOURCES[2])
            page.fill("#beam", "1")
            page.fill("#nbest", "1")
            for language in ("up", "rev"):
                page.select_option("#lang", language)
                page.click("#submit")
                page.wait_for_function("want => [...document.querySelectorAll('li.hyp .text')]"
                                       ".map(node => node.textContent).join('|') === want",
                                       arg=expected[language], timeout=60_000)
            assert [body["tgt_lang"] for body in sent] == ["up", "rev"]
        finally:
            browser.close()
