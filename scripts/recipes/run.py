"""Run a recipe end to end: train, average checkpoints, tune decoding on the validation set, score once.

    python scripts/recipes/run.py NAME [--data DIR] [--workdir DIR] [--results DIR] [--ensemble-seed S ...]
        [--select validation|average] [--average-window K ...] [--set SECTION.KEY=VALUE ...] [--validation-only]
        [--label L] [--init-from W]

NAME is one of ``RECIPES`` (``multi30k-de-en``, ``multi30k-en-de``, ``multi30k-en-fr``, ``multi30k-en-cs``,
``multi30k-en-x``, ``dialogsum``, ``webnlg``); its settings are the config file beside this script: a preset
(``seq2seq_jax/core/presets.py``) and the recipe's changes to it, which ``seq2seq train --config`` resolves
(``seq2seq config --config FILE`` prints the result). ``--data`` is the folder holding the corpora (default
``../shared/data``, relative to the repository). The steps:

1. ``seq2seq train`` on the training split, validating (greedy BLEU) on the validation split; an existing
   workdir is resumed, not restarted. ``--init-from W`` starts a new workdir from the best checkpoint of the
   trained workdir ``W`` (``seq2seq train --init-from``: a fine-tuning phase, e.g. coverage added to a model
   trained without it).
2. ``seq2seq average`` of the last ``train.keep_checkpoints`` checkpoints; the best checkpoint and the average
   are both scored on validation (beam 5) and the better one is kept (``--select average``: the average, without
   the comparison); ``--average-window K`` (repeatable) averages the last K instead, one candidate per K, so the
   window is chosen on validation too. A multilingual recipe (``multi30k-en-x``: one model En->{De,Fr,Cs},
   docs/multilingual.md) scores each direction with its ``--tgt-lang`` and compares the mean over directions, in
   steps 2-4 alike.
3. The decoding settings of the recipe (length penalty α; for summaries also no-repeat n-gram size and
   minimum length) are searched on the validation set only, one after the other.
4. Translation recipes score ``test_2016_flickr`` once, with the chosen model and settings (sacrebleu
   defaults: BLEU and chrF on detokenized, cased text). The summarization recipe reports validation ROUGE
   (rouge-score, stemming, F-measure), the set its targets are stated on, beside the Lead-3 and Longest-3
   extractive baselines. ``--validation-only`` (with ``--label``) skips this step: a trial of other
   settings (``--set``) reports its validation scores only, so settings are chosen without seeing the test set.
5. ``RESULTS/NAME.json`` (scores, signatures, chosen settings, training time, tokens/s, versions),
   ``RESULTS/NAME_curves.png`` (training curves), the final hypotheses (``NAME.test.hyp`` or
   ``NAME.valid.hyp``) and ``RESULTS/README.md`` (tables of every recipe's results) are written; default
   ``RESULTS`` is ``docs/results``. A run stopped before ``train.max_steps`` (SIGTERM) stops here with an
   error; the same command resumes it.
6. With ``--ensemble-seed S`` (repeatable), steps 1-5 run again for each seed ``S`` (``--set train.seed=S``,
   workdir ``WORKDIR.seedS``, results ``NAME-seedS.json``), then the models each run chose decode as one
   ensemble (``seq2seq translate --workdir A --workdir B``): its decoding settings are searched on validation
   as in step 3 and the test set is scored once. For the decoding speed, the ensemble and the first model
   alone, with the ensemble's settings, each translate the test set twice: the first time compiles, the
   second is the compiled speed. ``RESULTS/NAME-ensemble.json`` holds the members' and the ensemble's
   validation and test scores, and the summary a table of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPE_DIR = Path(__file__).resolve().parent
if str(RECIPE_DIR) not in sys.path:  # the summary tables module beside this script, also when loaded by a test
    sys.path.insert(0, str(RECIPE_DIR))

from summary_tables import write_summary  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Recipe:
    config: str                       # file beside this script
    train: tuple[str, str]            # (source, target), relative to --data
    valid: tuple[str, str]
    test: tuple[str, str] | None      # scored once at the end; None: report validation (summarization)
    metric: str                       # "bleu" or "rouge"
    search: dict[str, tuple]          # decode settings searched on validation, one after the other
    decode_bucket_width: int          # source padding granularity when decoding: one program per width
    beam_size: int = 5
    published: dict[str, float] = dataclasses.field(default_factory=dict)
    extractive_baselines: bool = False
    input_format: str = "text"        # "triples": every source file linearized first (seq2seq_jax.core.triples)
    valid_sets: tuple[str, tuple[str, ...]] | None = None  # (sources, reference files): steps 2-4 score these,
    #                                   multi-reference, instead of ``valid`` (which training validates on)
    languages: tuple[str, ...] = ()   # multilingual: "{lang}" in train/valid/test is each target language; the
    #                                   config's data.corpora names the files relative to --data


RECIPES = {
    "multi30k-de-en": Recipe(
        config="multi30k_de_en.json",
        train=("multi30k/train.de", "multi30k/train.en"), valid=("multi30k/val.de", "multi30k/val.en"),
        test=("multi30k/test_2016_flickr.de", "multi30k/test_2016_flickr.en"), metric="bleu",
        search={"length_penalty": (0.0, 0.5, 1.0, 1.5)}, decode_bucket_width=32,
        published={"attention GRU, greedy": 28.3, "Transformer": 36.5}),
    "multi30k-en-de": Recipe(
        config="multi30k_en_de.json",
        train=("multi30k/train.en", "multi30k/train.de"), valid=("multi30k/val.en", "multi30k/val.de"),
        test=("multi30k/test_2016_flickr.en", "multi30k/test_2016_flickr.de"), metric="bleu",
        search={"length_penalty": (0.0, 0.5, 1.0, 1.5)}, decode_bucket_width=32),
    # the first Multi30k settings (multi30k_baseline.json: a vocabulary per side, 3000 steps) with another
    # target: the bilingual baselines of multilingual training, measured with the settings multi30k-en-x has
    **{f"multi30k-en-{target}": Recipe(
        config="multi30k_baseline.json",
        train=("multi30k/train.en", f"multi30k/train.{target}"), valid=("multi30k/val.en", f"multi30k/val.{target}"),
        test=("multi30k/test_2016_flickr.en", f"multi30k/test_2016_flickr.{target}"), metric="bleu",
        search={"length_penalty": (0.0, 0.5, 1.0, 1.5)}, decode_bucket_width=32) for target in ("fr", "cs")},
    # one model for the three directions above (tagged multilingual training), the En->De recipe's settings
    "multi30k-en-x": Recipe(
        config="multi30k_en_x.json",
        train=("multi30k/train.en", "multi30k/train.{lang}"), valid=("multi30k/val.en", "multi30k/val.{lang}"),
        test=("multi30k/test_2016_flickr.en", "multi30k/test_2016_flickr.{lang}"), metric="bleu",
        search={"length_penalty": (0.0, 0.5, 1.0, 1.5)}, decode_bucket_width=32, languages=("de", "fr", "cs")),
    "dialogsum": Recipe(
        config="dialogsum.json",
        train=("dialogsum/train.src", "dialogsum/train.tgt"), valid=("dialogsum/valid.src", "dialogsum/valid.tgt"),
        test=None, metric="rouge",
        # n-grams and lengths are of subword pieces (a speaker tag is one, ``▁#Person2#``: data.user_symbols);
        # a reference summary has ~29 pieces. Last, beam 5 against greedy with the settings found: an
        # undertrained model's beam finds short generic summaries.
        search={"no_repeat_ngram_size": (0, 3, 4), "length_penalty": (0.0, 1.0), "min_len": (0, 15, 25),
                "beam_size": (5, 1)},
        decode_bucket_width=200, extractive_baselines=True),
    "webnlg": Recipe(
        config="webnlg.json",
        train=("webnlg/train.src", "webnlg/train.tgt"), valid=("webnlg/dev.src", "webnlg/dev.tgt"),
        test=None, metric="bleu", input_format="triples",
        valid_sets=("webnlg/dev_sets.src", tuple(f"webnlg/dev_sets.ref{k}" for k in range(1, 9))),
        search={"length_penalty": (0.0, 0.5, 1.0, 2.0), "beam_size": (5, 1)}, decode_bucket_width=16),
}


def log(message: str) -> None:
    print(f"[{datetime.datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def score(metric: str, hyps: list[str], refs: list[str]) -> dict:
    from seq2seq_jax.decoding.metrics import rouge, translation_scores

    if metric == "rouge":
        result = rouge(hyps, refs)
        result["score"] = result["rouge1"] + result["rouge2"] + result["rougeL"]
        return result
    result = translation_scores(hyps, refs)
    result["score"] = result["bleu"]
    return result


def directions(recipe: Recipe, pair: tuple[str, str]) -> dict[str | None, tuple[str, str]]:
    """``pair`` of each target language of a multilingual recipe (``{lang}`` filled in); ``{None: pair}`` else."""
    if not recipe.languages:
        return {None: pair}
    return {lang: (pair[0].format(lang=lang), pair[1].format(lang=lang)) for lang in recipe.languages}


def corpora_config(recipe: Recipe, data: Path, out: Path) -> Path:
    """The recipe's config file with its ``data.corpora`` files under ``data``, written to ``out``."""
    values = json.loads((RECIPE_DIR / recipe.config).read_text(encoding="utf-8"))
    values["data"]["corpora"] = [{key: str(data / value) if key in ("src", "tgt", "valid_src", "valid_tgt") else value
                                  for key, value in corpus.items()} for corpus in values["data"]["corpora"]]
    out.write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
    return out


def load_translator(workdir: Path | tuple[Path, ...], decode: dict, bucket_width: int, tgt_lang: str | None = None):
    """A ``Translator`` of the best checkpoint of ``workdir`` (a tuple of workdirs: their ensemble, with the first
    one's decoding defaults) with ``decode`` settings and sources padded to multiples of ``bucket_width``, into
    ``tgt_lang`` (a multilingual model's)."""
    from seq2seq_jax.api import load
    from seq2seq_jax.decoding.translate import Translator

    model = load(list(workdir) if isinstance(workdir, tuple) else workdir)
    config = dataclasses.replace(model.decode_config, **decode)  # with the banned language tags, if any
    graphdefs, params = [m.graphdef for m in model.models], [m.params for m in model.models]
    if not model.is_ensemble:
        graphdefs, params = graphdefs[0], params[0]
    return Translator(graphdefs, params, model.source_tokenizer(tgt_lang), model.tgt_tokenizer, config, bucket_width)


def decode_seconds(workdir: Path | tuple[Path, ...], decode: dict, sources: list[str], bucket_width: int) -> dict:
    """Seconds to translate ``sources``: the first time (compilation included) and again, compiled."""
    translator = load_translator(workdir, decode, bucket_width)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        translator.translate_best(sources)
        seconds.append(round(time.perf_counter() - start, 1))
    return {"first_seconds": seconds[0], "compiled_seconds": seconds[1]}


def decode_and_score(workdir: Path | tuple[Path, ...], decode: dict, sources: list[str], refs: list[str],
                     metric: str, bucket_width: int, tgt_lang: str | None = None) -> tuple:
    """``(scores, hypotheses, seconds)`` of ``load_translator(workdir, decode, bucket_width, tgt_lang)`` on
    ``sources``."""
    translator = load_translator(workdir, decode, bucket_width, tgt_lang)
    start = time.perf_counter()
    hyps = translator.translate_best(sources)
    return score(metric, hyps, refs), hyps, time.perf_counter() - start


def decode_directions(workdir: Path | tuple[Path, ...], decode: dict, sets: dict, metric: str, bucket_width: int
                      ) -> tuple:
    """``decode_and_score`` of each direction of ``sets`` (``{tgt_lang or None: (sources, refs)}``): one
    direction's own result; several give each one's scores under ``by_language``, their means beside them (the
    ``score`` compared), and the hypotheses per language."""
    if list(sets) == [None]:
        return decode_and_score(workdir, decode, *sets[None], metric, bucket_width)
    results = {lang: decode_and_score(workdir, decode, src, refs, metric, bucket_width, tgt_lang=lang)
               for lang, (src, refs) in sets.items()}
    first = next(iter(results.values()))[0]
    scores = {key: statistics.mean(r[0][key] for r in results.values()) if isinstance(value, float) else value
              for key, value in first.items()}
    scores["by_language"] = {lang: r[0] for lang, r in results.items()}
    return scores, {lang: r[1] for lang, r in results.items()}, sum(r[2] for r in results.values())


def read_sets(recipe: Recipe, data: Path, pair: tuple[str, str]) -> dict:
    """``{tgt_lang or None: (sources, references)}`` of ``pair`` (each direction of a multilingual recipe)."""
    return {lang: read_pair(data, files) for lang, files in directions(recipe, pair).items()}


def score_test_set(recipe: Recipe, data: Path, workdir: Path | tuple[Path, ...], decode: dict, hyp_path: Path
                   ) -> tuple[dict, list[str]]:
    """Decode ``recipe.test`` once with ``decode`` (each direction), write the hypotheses to ``hyp_path`` (one file
    a language, ``NAME.test.LANG.hyp``); returns the report entry and the (first direction's) sources."""
    sets = read_sets(recipe, data, recipe.test)
    scores, hyps, seconds = decode_directions(workdir, decode, sets, recipe.metric, recipe.decode_bucket_width)
    for lang, lines in (hyps.items() if isinstance(hyps, dict) else [(None, hyps)]):
        path = hyp_path if lang is None else hyp_path.with_suffix(f".{lang}.hyp")
        path.write_text("".join(h + "\n" for h in lines), encoding="utf-8")
    for lang, entry in scores.get("by_language", {}).items():
        entry["set"] = directions(recipe, recipe.test)[lang][1]
    target = recipe.test[1].replace("{lang}", "{" + ",".join(recipe.languages) + "}")
    test_src = next(iter(sets.values()))[0]
    return {"set": target, **scores, "sentences": len(test_src), "seconds": round(seconds, 1)}, test_src


def prepare_sources(recipe: Recipe, data: Path, relative: str, prepared: Path) -> Path:
    """The source file the model reads: ``data / relative`` itself, or (``input_format`` triples) its linearized
    copy in ``prepared``, written by ``seq2seq_jax.core.triples`` (the same as ``translate --input-format
    triples``)."""
    if recipe.input_format == "text":
        return data / relative
    from seq2seq_jax.core.reading import read_lines
    from seq2seq_jax.core.triples import prepare_sources as linearized

    out = prepared / Path(relative).name
    prepared.mkdir(parents=True, exist_ok=True)
    lines = linearized(read_lines(data / relative).lines, recipe.input_format, str(data / relative))
    out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return out


def validation_set(recipe: Recipe, data: Path, prepared: Path) -> tuple[list[str], list]:
    """What steps 2-4 score: ``valid`` (one reference a line), or ``valid_sets`` with every reference of a set
    (empty reference lines left out)."""
    from seq2seq_jax.core.reading import read_lines
    from seq2seq_jax.decoding.metrics import per_example_references

    if recipe.valid_sets is None:
        return read_pair(data, recipe.valid)
    sources, reference_files = recipe.valid_sets
    src = read_lines(prepare_sources(recipe, data, sources, prepared)).lines
    streams = [read_lines(data / name).lines for name in reference_files]
    return src, per_example_references(streams, [str(data / name) for name in reference_files])


def by_triple_count(recipe: Recipe, data: Path, hyps: list[str], refs: list) -> dict:
    """BLEU of the sets of each size (1-7 triples) of ``valid_sets``, and how many sets each size has."""
    from seq2seq_jax.core.reading import read_lines
    from seq2seq_jax.core.triples import parse_triples

    sizes = [len(parse_triples(line)) for line in read_lines(data / recipe.valid_sets[0]).lines]
    table = {}
    for size in sorted(set(sizes)):
        chosen = [i for i, n in enumerate(sizes) if n == size]
        table[str(size)] = {"sets": len(chosen), **{key: value for key, value in score(
            "bleu", [hyps[i] for i in chosen], [refs[i] for i in chosen]).items() if key in ("bleu", "chrf_pp")}}
    return table


def read_pair(data: Path, pair: tuple[str, str]) -> tuple[list[str], list[str]]:
    from seq2seq_jax.core.reading import read_lines

    return read_lines(data / pair[0]).lines, read_lines(data / pair[1]).lines


def training_summary(workdir: Path) -> dict:
    from seq2seq_jax.training.plots import read_metrics_jsonl

    records = read_metrics_jsonl(workdir / "metrics.jsonl")
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]  # the first window holds compilation
    valid = [r for r in records if "valid_bleu" in r]
    return {"steps": max((r["step"] for r in records), default=0),
            "tokens_per_s_median": statistics.median(rates) if rates else None,
            "valid_bleu_greedy_by_step": {r["step"]: round(r["valid_bleu"], 2) for r in valid}}


def search_decoding(recipe: Recipe, try_settings) -> dict:
    """Step 3: the recipe's decode settings, one at a time, the others at their best so far; ``try_settings(decode)``
    returns the validation scores of a setting."""
    current = {"beam_size": recipe.beam_size, "n_best": 1, **{key: values[0] for key, values in recipe.search.items()}}
    for setting, values in recipe.search.items():
        current = max((dict(current, **{setting: value}) for value in values),
                      key=lambda decode: try_settings(decode)["score"])
    return current


def train_recipe(name: str, data: Path, workdir: Path, prepared: Path, overrides,
                 init_from: Path | None = None) -> tuple:
    """Step 1: ``seq2seq train`` of recipe ``name`` in ``workdir`` (resumed when it exists; linearized sources
    in ``prepared``; a new one from ``init_from``'s parameters when given); ``(config, training report)`` once
    it reached ``train.max_steps``, an error otherwise."""
    from seq2seq_jax import cli
    from seq2seq_jax.core.config import ExperimentConfig
    from seq2seq_jax.training.workdir import Workdir

    recipe = RECIPES[name]
    config_file = RECIPE_DIR / recipe.config
    argv = ["train", "--workdir", str(workdir)]
    if not recipe.languages:  # a multilingual recipe's files are its config's data.corpora
        argv += ["--train-src", str(prepare_sources(recipe, data, recipe.train[0], prepared)),
                 "--train-tgt", str(data / recipe.train[1]),
                 "--valid-src", str(prepare_sources(recipe, data, recipe.valid[0], prepared)),
                 "--valid-tgt", str(data / recipe.valid[1])]
    resumed = (workdir / "config.json").is_file()
    if not resumed:
        if recipe.languages:
            config_file = corpora_config(recipe, data, workdir.with_name(workdir.name + ".config.json"))
        argv += ["--config", str(config_file)]
        if init_from is not None:
            argv += ["--init-from", str(init_from)]
    for override in overrides:
        argv += ["--set", override]
    log(f"{name}: training in {workdir}" + (" (resuming)" if resumed else ""))
    start = time.perf_counter()
    if cli.main(argv) != 0:
        raise RuntimeError(f"{name}: training failed")
    config = ExperimentConfig.load(workdir / "config.json")
    timing_file = workdir / "recipe_training_seconds.json"  # one entry per invocation (resumed runs add up)
    previous = json.loads(timing_file.read_text()) if timing_file.is_file() else []
    runs = previous + [round(time.perf_counter() - start, 1)]
    timing_file.write_text(json.dumps(runs) + "\n")  # a stopped invocation's time counts too
    with Workdir(workdir).checkpointer(config) as checkpoints:
        reached = checkpoints.latest_step()
    if reached != config.train.max_steps:  # SIGTERM (or early stopping): not the recipe's model
        raise RuntimeError(f"{name}: training stopped at step {reached} of {config.train.max_steps}; run the "
                           "same command again to resume")
    training = {"seconds": round(sum(runs), 1), "invocations_seconds": runs, **training_summary(workdir)}
    log(f"{name}: trained in {training['seconds']:.0f} s")
    return config, training


def final_scores(name: str, data: Path, chosen: Path, current: dict, best: dict, valid_src: list[str],
                 valid_ref: list, out: Path) -> dict:
    """Step 4: the report's final scores of the ``chosen`` model with the ``current`` settings: the test set
    scored once, or (no test split) validation, whose ``best`` decoding is already done; the hypotheses go to
    ``OUT.test.hyp`` / ``OUT.valid.hyp``, and summarization adds the extractive baselines."""
    recipe = RECIPES[name]
    scores: dict = {}
    if recipe.test is not None:
        scores["test"], _ = score_test_set(recipe, data, chosen, current, Path(f"{out}.test.hyp"))
        log(f"{name}: test BLEU {scores['test']['bleu']:.2f} chrF {scores['test']['chrf']:.2f}")
    else:
        scores["valid"] = best["valid"]
        if recipe.metric == "rouge":
            # The same numbers without the validation dialogues that also occur (up to whitespace) in train.
            train_sources = {" ".join(line.split()) for line in read_pair(data, recipe.train)[0]}
            unseen = [i for i, line in enumerate(valid_src) if " ".join(line.split()) not in train_sources]
            scores["valid_unseen"] = {"examples": len(unseen), **score(
                recipe.metric, [best["hyps"][i] for i in unseen], [valid_ref[i] for i in unseen])}
        if recipe.valid_sets is not None:
            scores["valid"]["set"] = recipe.valid_sets[0]
            scores["valid_by_triple_count"] = by_triple_count(recipe, data, best["hyps"], valid_ref)
            scores["samples"] = [{"source": valid_src[i], "output": best["hyps"][i], "references": valid_ref[i]}
                                 for i in range(0, len(valid_src), max(1, len(valid_src) // 8))]
        Path(f"{out}.valid.hyp").write_text("".join(h + "\n" for h in best["hyps"]), encoding="utf-8")
    if recipe.extractive_baselines:
        from seq2seq_jax.decoding.extractive import lead, longest

        scores["baselines"] = {"Lead-3": score("rouge", [lead(s, 3) for s in valid_src], valid_ref),
                               "Longest-3": score("rouge", [longest(s, 3) for s in valid_src], valid_ref)}
    return scores


def run(name: str, data: Path, workdir: Path, results: Path, overrides: list[str] = (), label: str | None = None,
        select: str = "validation", validation_only: bool = False, average_windows: tuple[int, ...] = (),
        init_from: Path | None = None) -> dict:
    """Steps 1-5 of recipe ``name``; ``validation_only``: no final score (step 4), for trials and ablations whose
    settings are chosen on validation while the test set stays unseen. ``average_windows``: the numbers of last
    checkpoints averaged as candidates of step 2 (default: ``train.keep_checkpoints``)."""
    from seq2seq_jax.training.averaging import average_checkpoints
    from seq2seq_jax.training.plots import plot_training_curves, read_metrics_jsonl

    recipe = RECIPES[name]
    sets = (recipe.valid_sets[0], *recipe.valid_sets[1]) if recipe.valid_sets else ()
    files = [f for pair in (recipe.train, recipe.valid, *([recipe.test] if recipe.test else []))
             for pairs in directions(recipe, pair).values() for f in pairs]
    for relative in dict.fromkeys(files + list(sets)):
        if not (data / relative).is_file():
            raise FileNotFoundError(f"{data / relative} not found: pass --data, the folder holding "
                                    f"{relative.split('/')[0]}/")
    label = label or name  # the results files' name: NAME, or NAME-seedS for an ensemble member
    command = " ".join(["python scripts/recipes/run.py", name, *(f"--set {o}" for o in overrides),
                        *([f"--select {select}"] if select != "validation" else []),
                        *(f"--average-window {k}" for k in average_windows),
                        *(["--validation-only"] if validation_only else []),
                        *([f"--label {label}"] if label and validation_only else []),
                        *([f"--init-from {init_from}"] if init_from is not None else [])])
    report: dict = {"recipe": name, "label": label, "command": command, "data": str(data),
                    **({"init_from": str(init_from)} if init_from is not None else {})}

    # 1. train (resumes an existing workdir); only a run that reached train.max_steps goes on
    prepared = workdir.with_name(workdir.name + ".sources")  # linearized sources (input_format triples)
    config, report["training"] = train_recipe(name, data, workdir, prepared, overrides, init_from)
    report["config"] = config.to_dict()

    # 2. best checkpoint or the average of the last ones, chosen on validation
    valid = (read_sets(recipe, data, recipe.valid) if recipe.languages
             else {None: validation_set(recipe, data, prepared)})
    valid_src, valid_ref = valid.get(None, ([], []))
    candidates = {} if select == "average" else {"best checkpoint": workdir}
    for window in average_windows or (config.train.keep_checkpoints,):
        if not 1 <= window <= config.train.keep_checkpoints:
            raise ValueError(f"--average-window {window}: the run keeps {config.train.keep_checkpoints} checkpoints")
        suffix = ".avg" if window == config.train.keep_checkpoints else f".avg{window}"
        averaged = candidates[f"average of last {window}"] = workdir.with_name(workdir.name + suffix)
        shutil.rmtree(averaged, ignore_errors=True)  # always from the checkpoints the run has now
        average_checkpoints(workdir, averaged, last=window)
    tried: dict[str, dict] = {}  # (model, resolved decode settings) -> scores on validation

    def valid_result(model: Path, decode: dict) -> dict:
        resolved = dataclasses.replace(config.decode, **decode).to_dict()
        key = json.dumps([str(model), resolved], sort_keys=True)
        if key not in tried:
            scores, hyps, seconds = decode_directions(model, decode, valid, recipe.metric, recipe.decode_bucket_width)
            tried[key] = {"model": str(model), "decode": decode, "valid": scores, "seconds": round(seconds, 1),
                          "hyps": hyps}
            log(f"{name}: {model.name} {decode}: valid {recipe.metric} {scores['score']:.2f} ({seconds:.0f} s)")
        return tried[key]

    base_decode = {"beam_size": recipe.beam_size, "n_best": 1}
    chosen_label = max(candidates, key=lambda label: valid_result(candidates[label], base_decode)["valid"]["score"])
    chosen = candidates[chosen_label]
    report["model_selection"] = {"chosen": chosen_label, "candidates": {
        label: {key: value for key, value in valid_result(model, base_decode).items() if key != "hyps"}
        for label, model in candidates.items()}}

    # 3. decoding settings, searched on validation only: one setting at a time, the others at their best so far
    current = search_decoding(recipe, lambda decode: valid_result(chosen, decode)["valid"])
    best = valid_result(chosen, current)
    report["chosen_model"] = str(chosen)
    report["valid_chosen"] = best["valid"]  # the chosen model and settings on validation
    report["decode_search"] = {"order": list(recipe.search), "chosen": current, "tried": [
        {key: value for key, value in entry.items() if key != "hyps"} for entry in tried.values()
        if entry["model"] == str(chosen)]}

    # 4. the final score: test once, or validation for the summarization and data-to-text recipes
    if validation_only:
        report["validation_only"] = True
    else:
        report.update(final_scores(name, data, chosen, current, best, valid_src, valid_ref, results / label))
    report["published"] = recipe.published
    report["translate_command"] = ("seq2seq translate --workdir " + str(chosen) + "".join(
        f" --{key.replace('_', '-')} {value}" for key, value in current.items()))

    # 5. results
    report["environment"] = environment()
    plot_training_curves(read_metrics_jsonl(workdir / "metrics.jsonl"), results / f"{label}_curves.png")
    write_report(results / f"{label}.json", report, data)
    summary_file = write_summary(results)
    log(f"{name}: wrote {results / (label + '.json')}, {results / (label + '_curves.png')} and {summary_file}")
    return report


def run_ensemble(name: str, data: Path, workdir: Path, results: Path, seeds: list[int],
                 overrides: list[str] = (), select: str = "validation", average_windows: tuple[int, ...] = ()) -> dict:
    """Step 6: the recipe for the config's seed and for each of ``seeds``, then the chosen models as one ensemble
    (``select``: how each run chooses its model, step 2)."""
    recipe = RECIPES[name]
    if recipe.metric != "bleu" or recipe.languages:
        raise ValueError(f"{name}: ensembles are a step of the bilingual translation recipes (BLEU)")
    members = [run(name, data, workdir, results, overrides, select=select, average_windows=average_windows)]
    for seed in seeds:
        members.append(run(name, data, workdir.with_name(f"{workdir.name}.seed{seed}"), results,
                           [*overrides, f"train.seed={seed}"], label=f"{name}-seed{seed}", select=select,
                           average_windows=average_windows))
    models = tuple(Path(member["chosen_model"]) for member in members)
    valid_src, valid_ref = read_pair(data, recipe.valid)
    tried: dict[str, dict] = {}

    def valid_scores(decode: dict) -> dict:
        key = json.dumps(decode, sort_keys=True)
        if key not in tried:
            scores, _, seconds = decode_and_score(models, decode, valid_src, valid_ref, recipe.metric,
                                                  recipe.decode_bucket_width)
            tried[key] = {"decode": decode, "valid": scores, "seconds": round(seconds, 1)}
            log(f"{name}: ensemble {decode}: valid {recipe.metric} {scores['score']:.2f} ({seconds:.0f} s)")
        return tried[key]["valid"]

    current = search_decoding(recipe, valid_scores)
    seed_flags = "".join(f" --ensemble-seed {seed}" for seed in seeds)
    report: dict = {
        "recipe": name, "label": f"{name}-ensemble", "data": str(data),
        "command": " ".join(["python scripts/recipes/run.py", name + seed_flags, *(f"--set {o}" for o in overrides),
                             *([f"--select {select}"] if select != "validation" else []),
                             *(f"--average-window {k}" for k in average_windows)]),
        "members": [{"label": m["label"], "model": m["chosen_model"], "selection": m["model_selection"]["chosen"],
                     "decode": m["decode_search"]["chosen"], "valid": m["valid_chosen"], "test": m.get("test")}
                    for m in members],
        "decode_search": {"order": list(recipe.search), "chosen": current, "tried": list(tried.values())},
        "valid": valid_scores(current),
        "translate_command": "seq2seq translate" + "".join(f" --workdir {model}" for model in models) + "".join(
            f" --{key.replace('_', '-')} {value}" for key, value in current.items())}
    if recipe.test is not None:
        report["test"], test_src = score_test_set(recipe, data, models, current, results / f"{name}-ensemble.test.hyp")
        log(f"{name}: ensemble test BLEU {report['test']['bleu']:.2f}")
        report["speed"] = {"sentences": len(test_src), "decode": current, "bucket_width": recipe.decode_bucket_width,
                           "ensemble": decode_seconds(models, current, test_src, recipe.decode_bucket_width),
                           "first_model": decode_seconds(models[0], current, test_src, recipe.decode_bucket_width)}
        log(f"{name}: decoding speed on test (first / compiled seconds): ensemble {report['speed']['ensemble']}, "
            f"first model alone {report['speed']['first_model']}")
    report["environment"] = environment()
    out = results / f"{name}-ensemble.json"
    write_report(out, report, data)
    log(f"{name}: wrote {out} and {write_summary(results)}")
    return report


def write_report(path: Path, report: dict, data: Path) -> None:
    """``report`` as JSON, with no machine's paths in it: the checkout's own paths relative to it, the corpora's
    folder as ``path/to/data``."""
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    for root, shown in ((str(data.resolve()), "path/to/data"), (str(data), "path/to/data"), (str(REPO) + "/", "")):
        text = text.replace(root, shown)
    path.write_text(text, encoding="utf-8")


def environment() -> dict:
    import importlib.metadata
    import os
    import subprocess

    versions = {}
    for package in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "sentencepiece", "sacrebleu", "rouge-score"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(), "cpus_usable": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "versions": versions,
            "commit": commit.stdout.strip() or None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder holding the corpora")
    parser.add_argument("--workdir", help="training workdir (default: runs/NAME)")
    parser.add_argument("--results", default=str(REPO / "docs" / "results"), help="where results are written")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a setting of the recipe's config (a quick trial; results then differ)")
    parser.add_argument("--ensemble-seed", type=int, action="append", default=[], metavar="S",
                        help="also run the recipe with train.seed=S (repeatable) and score the chosen models as "
                             "one ensemble (step 6)")
    parser.add_argument("--validation-only", action="store_true",
                        help="steps 1-3 and 5 without the final score (step 4): a trial or an ablation, chosen on "
                             "validation while the test set stays unseen")
    parser.add_argument("--label", help="name of the results files (default NAME): one per trial")
    parser.add_argument("--average-window", type=int, action="append", default=[], metavar="K",
                        help="step 2: also try the average of the last K checkpoints (repeatable; default "
                             "train.keep_checkpoints alone): a trial of the averaging window")
    parser.add_argument("--init-from", type=Path, metavar="W",
                        help="step 1 starts a new workdir from trained workdir W's best checkpoint (seq2seq train "
                             "--init-from): a fine-tuning phase")
    parser.add_argument("--select", choices=["validation", "average"], default="validation",
                        help="step 2: the better of the best checkpoint and the checkpoint average on validation "
                             "(default), or the average")
    args = parser.parse_args(argv)
    if args.ensemble_seed and args.init_from:
        parser.error("--init-from is a trial of one run: it cannot be combined with --ensemble-seed")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir or REPO / "runs" / args.name)
    if args.ensemble_seed:
        run_ensemble(args.name, Path(args.data), workdir, results, args.ensemble_seed, args.set, args.select,
                     tuple(args.average_window))
    else:
        run(args.name, Path(args.data), workdir, results, args.set, label=args.label, select=args.select,
            validation_only=args.validation_only, average_windows=tuple(args.average_window),
            init_from=args.init_from)
    return 0


if __name__ == "__main__":
    sys.exit(main())
