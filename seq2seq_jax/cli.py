"""The ``seq2seq`` command line: parses arguments and calls the library. No logic of its own.

    seq2seq train     --workdir W [--train-src F --train-tgt F --valid-src F --valid-tgt F | --data D] [--task NAME]
                      [--preset NAME] [--config FILE] [--set SECTION.KEY=VALUE ...] [--init-from W0]
    seq2seq preprocess --out D [--train-src F --train-tgt F --valid-src F --valid-tgt F] [--config FILE]
                      [--set data.KEY=VALUE ...] [--workers N] [--workdir W]
    seq2seq translate --workdir W [--workdir W2 ...] [--beam-size K] [--input F] [--output F] [--prefix F] ...
    seq2seq evaluate  --workdir W [--workdir W2 ...] --src F --ref F [--ref F ...] [--beam-size K] [--rouge] [--json]
    seq2seq score     --workdir W [--workdir W2 ...] --src F --tgt F [--json] [--output F]
    seq2seq plot      --workdir W [--output F] [--attention "source sentence" --attention-output F]
    seq2seq config    [--preset NAME] [--config FILE | --workdir W] [--set SECTION.KEY=VALUE ...] [--describe]
    seq2seq average   --workdir W --out W2 [--last N | --steps S1,S2,...]
    seq2seq serve     --workdir W [--workdir W2 ...] [--host 127.0.0.1] [--port 5000] [--max-batch 64] ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from seq2seq_jax import cli_parser, compilation_cache
from seq2seq_jax.core import logs
from seq2seq_jax.core.config import ConfigError, ExperimentConfig
from seq2seq_jax.core.field_docs import describe_fields
from seq2seq_jax.core.install_hint import install_command
from seq2seq_jax.core.search_settings import decode_settings, format_output

logger = logging.getLogger(__name__)

# Modules of each optional extra (pyproject.toml): a command that fails to import one names the extra to install.
_EXTRA_OF_MODULE = {**dict.fromkeys(("jax", "jaxlib", "flax", "optax", "orbax", "ml_dtypes", "sacrebleu",
                                     "rouge_score", "tqdm", "tensorboardX", "matplotlib", "grain",
                                     "array_record"), "jax"), "torch": "torch"}
_LIBRARY_NAMES = {"jax": "JAX", "jaxlib": "JAX", "flax": "JAX", "optax": "JAX", "orbax": "JAX", "torch": "PyTorch"}


def _read_input(path: str | None, input_format: str = "text") -> list[str]:
    """The source lines of ``path`` (stdin when None), as the model reads them (``--input-format``)."""
    from seq2seq_jax.core.reading import read_lines, split_lines
    from seq2seq_jax.core.triples import prepare_sources

    lines = read_lines(path).lines if path else split_lines(sys.stdin.buffer.read())
    return prepare_sources(lines, input_format, path or "<stdin>")


def _load_model(args: argparse.Namespace):
    """The ``seq2seq_jax.api`` model of ``--workdir`` (repeated: an ensemble) with the command line's decoding
    settings."""
    from seq2seq_jax.api import load

    model = load(args.workdir, args.checkpoint)
    model.decode_config = decode_settings(model.decode_config, args)
    return model


def _load_translator(args: argparse.Namespace):
    """The model of ``_load_model`` and its translator into ``--tgt-lang``."""
    model = _load_model(args)
    return model, model.translator(tgt_lang=args.tgt_lang)


def _plot_hypothesis_attention(translator, source: str, hypothesis, path: Path) -> None:
    """Heatmap of one hypothesis' attention, labelled with source and target tokens (and EOS rows/columns)."""
    from seq2seq_jax.training.plots import plot_attention

    src_tokens = translator.src_tokenizer.pieces(translator.src_tokenizer.encode(source)) + ["</s>"]
    tgt_tokens = translator.tgt_tokenizer.pieces(hypothesis.tokens)
    weights = hypothesis.attention
    tgt_tokens += ["</s>"] * (weights.shape[0] - len(tgt_tokens))  # the EOS step, when the hypothesis has one
    plot_attention(weights, src_tokens, tgt_tokens, path)


_DATA_FLAGS = (("train_src", "data.train_src"), ("train_tgt", "data.train_tgt"), ("valid_src", "data.valid_src"),
               ("valid_tgt", "data.valid_tgt"), ("task", "data.task"))


def _data_flag_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` pairs of the data flags given (``--train-src F`` is ``--set data.train_src=F``)."""
    return [f"{key}={getattr(args, flag)}" for flag, key in _DATA_FLAGS if getattr(args, flag, None) is not None]


def cmd_preprocess(args: argparse.Namespace) -> int:
    from seq2seq_jax.training.preprocess import preprocess
    from seq2seq_jax.training.workdir import Workdir

    run = Workdir(Path(args.workdir)) if args.workdir else None
    if args.config or args.preset:
        config = _new_config(args)
    else:  # the workdir's settings (its tokenizers' kind and limits), or the defaults
        config = run.load_config() if run is not None else ExperimentConfig()
    config = config.with_overrides(list(args.set or []) + _data_flag_overrides(args))
    start = time.perf_counter()
    corpus = preprocess(config, args.out, workers=args.workers,
                        tokenizer_dir=run.tokenizer_dir if run is not None else None)
    elapsed = time.perf_counter() - start
    pairs = sum(report.total for report in corpus.reports().values())
    counts = ", ".join(f"{name} {entry['records']} records in {len(entry['shards'])} shards"
                       for name, entry in corpus.manifest["splits"].items())
    print(f"wrote {corpus.path}: {counts}; {pairs} pairs in {elapsed:.1f} s ({pairs / max(elapsed, 1e-9):.0f} "
          f"pairs/s) (train with: seq2seq train --data {corpus.path} --workdir W)")
    return 0


def _new_config(args: argparse.Namespace) -> ExperimentConfig:
    """The config of a new run: the defaults, ``--preset``'s fields over them, ``--config``'s over those (``--set``
    comes last, from the caller)."""
    if args.config:
        return ExperimentConfig.load(args.config, preset=args.preset)
    return ExperimentConfig.from_preset(args.preset) if args.preset else ExperimentConfig()


DEMO_DEFAULTS = ("the model is the built-in demo's defaults (a character-level tokenizer, a 32-128 unit model sized "
                 "for the dates task); for your own files start from a preset: --preset translation, summarization "
                 "or small (seq2seq config --preset NAME prints it)")


def _train_config(args: argparse.Namespace, run) -> ExperimentConfig:
    """The resolved config of ``seq2seq train``: the workdir's when resuming, else ``_new_config``; then the
    corpus of ``--data``, ``--set`` and the data flags."""
    if run.exists():
        if args.config or args.preset:
            raise ConfigError(f"{run.config_path} exists (resuming); --config and --preset are only for a new "
                              "workdir. Change settings of a resumed run with --set.")
        config = run.load_config()
    else:
        config = _new_config(args)
    overrides = list(args.set or [])
    if args.data is not None:
        given = [flag for flag, _ in _DATA_FLAGS if getattr(args, flag) is not None]
        if given:
            raise ConfigError(f"--data trains from a preprocessed corpus: no --{given[0].replace('_', '-')} "
                              "beside it (its data settings are the corpus's)")
        if not run.exists():  # the corpus's data section; --set may change how batches are cut
            from seq2seq_jax.training.corpus import open_corpus

            config = dataclasses.replace(config, data=open_corpus(args.data).config().data)
        overrides.insert(0, f"data.preprocessed_dir={Path(args.data).resolve()}")
    config = config.with_overrides(overrides + _data_flag_overrides(args))
    if run.exists():
        if config.model != run.load_config().model:
            raise ConfigError(f"{run.config_path}: model settings cannot change when resuming; use a new --workdir")
    elif (config.data.uses_files and not (args.preset or args.config or args.init_from)
          and config.model == ExperimentConfig().model):
        logger.warning(DEMO_DEFAULTS)
    return config


def cmd_train(args: argparse.Namespace) -> int:
    from seq2seq_jax.training.workdir_lock import refuse_if_locked

    if not (args.coordinator or args.num_processes or args.distributed):  # one process: refuse before JAX starts
        refuse_if_locked(args.workdir)
    from seq2seq_jax.training import parallel

    # Before anything else touches a device: every process of a multi-host run joins here.
    parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    mesh = parallel.make_mesh(args.model_parallel)

    from seq2seq_jax.training.fine_tune import InitFrom
    from seq2seq_jax.training.trainer import train
    from seq2seq_jax.training.workdir import Workdir

    config = _train_config(args, Workdir(Path(args.workdir)))
    init_from = InitFrom(Path(args.init_from), args.init_checkpoint) if args.init_from else None
    train(config, args.workdir, mesh=mesh, init_from=init_from)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved config as JSON (every section, every field), or with ``--describe`` every field."""
    if args.describe:
        docs = describe_fields()
        key_width, type_width = max(len(d.key) for d in docs), max(len(d.type) for d in docs)
        defaults = [json.dumps(d.default) for d in docs]
        default_width = max(map(len, defaults))
        for doc, default in zip(docs, defaults, strict=True):
            print(f"{doc.key:<{key_width}}  {doc.type:<{type_width}}  {default:<{default_width}}  {doc.help}")
        return 0
    if args.workdir:
        if args.config or args.preset:
            raise ConfigError("--workdir prints that workdir's config: no --config or --preset beside it")
        config = ExperimentConfig.load(Path(args.workdir) / "config.json")
    else:
        config = _new_config(args)
    print(config.with_overrides(list(args.set or [])).to_json())
    return 0


def _output_text(hypotheses, translator, args: argparse.Namespace) -> str:
    return format_output(hypotheses, translator.config.n_best, with_score=args.with_score,
                         one_line_per_input=args.one_line_per_input)


def _translate_interactively(translator, args: argparse.Namespace) -> int:
    """Answer each stdin line as soon as it is read (one-row searches unless --batch-size says otherwise)."""
    from seq2seq_jax.core.triples import prepare_sources

    for number, raw in enumerate(iter(sys.stdin.buffer.readline, b""), start=1):
        try:
            line = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
        except UnicodeDecodeError as error:
            raise ValueError(f"<stdin> line {number}: not valid UTF-8 ({error.reason})") from None
        line = prepare_sources([line], args.input_format, f"<stdin> line {number}")[0]
        sys.stdout.write(_output_text(translator.translate([line])[0], translator, args))
        sys.stdout.flush()
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    if args.interactive and (args.input or args.output or args.plot_attention or args.prefix):
        given = next(flag for flag in ("input", "output", "plot_attention", "prefix") if getattr(args, flag))
        raise ValueError(f"--interactive reads stdin and writes stdout: no --{given.replace('_', '-')} beside it "
                         "(without --interactive, --input and --output translate a file)")
    _, translator = _load_translator(args)
    if args.interactive:
        if args.batch_size is None:
            translator.config = dataclasses.replace(translator.config, batch_size=1)
        return _translate_interactively(translator, args)
    lines = _read_input(args.input, args.input_format)
    if args.batch_size is None:
        from seq2seq_jax.core.batching import rows_for

        translator.config = dataclasses.replace(translator.config,
                                                batch_size=rows_for(len(lines), translator.config.batch_size))
    prefixes = None
    if args.prefix:
        from seq2seq_jax.core.reading import check_same_line_count, read_lines

        prefixes = read_lines(args.prefix).lines
        check_same_line_count(args.input or "<stdin>", lines, args.prefix, prefixes)
    results = translator.translate(lines, with_attention=bool(args.plot_attention), prefixes=prefixes,
                                   prefix_name=args.prefix or "prefix")
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for hypotheses in results:
            out.write(_output_text(hypotheses, translator, args))
    finally:
        if args.output:
            out.close()
    if args.plot_attention:
        directory = Path(args.plot_attention)
        directory.mkdir(parents=True, exist_ok=True)
        for number, (line, hypotheses) in enumerate(zip(lines, results, strict=True), start=1):
            if hypotheses:  # a blank line has no translation, so no heatmap
                _plot_hypothesis_attention(translator, line, hypotheses[0], directory / f"attention_{number:05d}.png")
    print(f"translated {len(lines)} lines with {translator.compiled_programs} compiled search programs",
          file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from seq2seq_jax.core.encoding import encode_pairs
    from seq2seq_jax.core.pair_scores import corpus_perplexity
    from seq2seq_jax.core.reading import read_lines
    from seq2seq_jax.decoding.metrics import exact_match, per_example_references, rouge, translation_scores

    model, translator = _load_translator(args)
    sources = _read_input(args.src, args.input_format)
    references = [read_lines(path).lines for path in args.ref]
    for path, refs in zip(args.ref, references, strict=True):
        if len(refs) != len(sources):
            raise ValueError(f"{args.src} has {len(sources)} lines but {path} has {len(refs)}")
    per_example = per_example_references(references, args.ref)  # empty reference lines left out
    hyps = translator.translate_best(sources)
    steps = [trained.step for trained in model.models]
    result = {**translation_scores(hyps, per_example), "exact_match": exact_match(hyps, per_example),
              "sentences": len(sources), "step": steps[0] if len(steps) == 1 else steps}
    first = model.models[0]
    examples, report = encode_pairs(list(zip(sources, references[0], strict=True)), translator.src_tokenizer,
                                             model.tgt_tokenizer, dataclasses.replace(
                                                 first.config.data, max_src_len=10**9, max_tgt_len=10**9),
                                             name="evaluate")
    if examples:  # the perplexity of the non-empty pairs, with the model's (or the ensemble's) probabilities
        kept = report.kept_indices
        result["perplexity"] = corpus_perplexity(model.score([sources[i] for i in kept],
                                                             [references[0][i] for i in kept], args.tgt_lang))
        result["perplexity_pairs"] = report.kept
    if args.rouge:
        result.update(rouge(hyps, per_example))
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print("BLEU {bleu:.2f}  ({bleu_signature})".format(**result))
        print("chrF {chrf:.2f}  ({chrf_signature})".format(**result))
        print("chrF++ {chrf_pp:.2f}  ({chrf_pp_signature})".format(**result))
        print("TER {ter:.2f}  ({ter_signature})".format(**result))
        if "perplexity" in result:
            print(f"perplexity {result['perplexity']:.3f} over {result['perplexity_pairs']} non-empty pairs")
        print(f"exact match {result['exact_match']:.2f}%")
        if args.rouge:
            print("ROUGE-1 {rouge1:.2f}  ROUGE-2 {rouge2:.2f}  ROUGE-L {rougeL:.2f}".format(**result))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from seq2seq_jax.core.pair_scores import format_score, format_summary, read_pairs

    sources, targets = read_pairs(args.src, args.tgt)
    model = _load_model(args)
    scores = model.score(sources, targets, args.tgt_lang)
    text = "".join(format_score(pair, args.json) + "\n" for pair in scores)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    print(format_summary(scores, args.json), file=sys.stderr)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from seq2seq_jax.training.plots import plot_training_curves, read_metrics_jsonl
    from seq2seq_jax.training.workdir import Workdir

    run = Workdir(Path(args.workdir))
    out = Path(args.output or run.path / "training_curves.png")
    plot_training_curves(read_metrics_jsonl(run.metrics_path), out)
    print(f"wrote {out}")
    if args.attention is not None:
        if not args.attention.strip():
            raise ValueError("--attention: the sentence is blank; a blank source is not translated")
        args.checkpoint = "best"
        _, translator = _load_translator(args)
        best = translator.translate([args.attention], with_attention=True)[0][0]
        attention_out = Path(args.attention_output or run.path / "attention.png")
        _plot_hypothesis_attention(translator, args.attention, best, attention_out)
        print(f"wrote {attention_out}")
    return 0


def cmd_export_torch(args: argparse.Namespace) -> int:
    from seq2seq_jax.training.export import export_torch

    out = export_torch(args.workdir, args.out, checkpoint=args.checkpoint, force=args.force)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    print(f"exported step {meta['step']} of {args.workdir} to {out} "
          f"(load with torch_ref.load_pretrained, translate with python -m torch_ref.translate {out})")
    return 0


def cmd_import_torch(args: argparse.Namespace) -> int:
    from seq2seq_jax.training.export import import_torch

    step = import_torch(args.src, args.workdir, config=args.config)
    print(f"imported {args.src} into {args.workdir} at step {step} "
          f"(continue training with seq2seq train --workdir {args.workdir})")
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from seq2seq_jax.training.averaging import average_checkpoints

    steps = None if args.steps is None else [int(step) for step in args.steps.split(",") if step.strip()]
    chosen = average_checkpoints(args.workdir, args.out, last=None if steps else args.last, steps=steps)
    print(f"averaged the parameters of steps {', '.join(map(str, chosen))} of {args.workdir} into {args.out} "
          f"(translate, evaluate or export it like any workdir)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from seq2seq_jax.serving.access import resolve_api_key
    from seq2seq_jax.serving.schema import ServeLimits
    from seq2seq_jax.serving.server import serve

    api_key = resolve_api_key(args.api_key, args.api_key_file)

    limits = ServeLimits(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, refill_share=args.refill_share,
                         max_chars=args.max_chars,
                         max_texts=args.max_texts, max_body_bytes=args.max_body_bytes,
                         max_beam_size=args.max_beam_size, warmup_src_len=args.warmup_src_len,
                         fixed_rows=args.fixed_rows, max_queue=args.max_queue,
                         request_timeout=args.request_timeout, shutdown_timeout=args.shutdown_timeout)
    return serve(_load_model(args), args.host, args.port, limits, args.checkpoint, api_key,
                 args.cors_origin or (), args.quiet)


COMPILING_COMMANDS = {"train", "translate", "evaluate", "score", "serve"}
CACHE_VARIABLE = compilation_cache.ENVIRONMENT_VARIABLE
HANDLERS = {"train": cmd_train, "preprocess": cmd_preprocess, "config": cmd_config, "translate": cmd_translate,
            "evaluate": cmd_evaluate, "score": cmd_score, "plot": cmd_plot, "export-torch": cmd_export_torch,
            "import-torch": cmd_import_torch, "average": cmd_average, "serve": cmd_serve}


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (``cli_parser``); ``HANDLERS[args.command]`` runs what it parsed."""
    return cli_parser.build_parser()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results_on_stdout = args.command in ("translate", "score") and not args.output
    logs.configure(args.verbose, prefix="seq2seq serve: " if args.command == "serve" else "",
                   results_on_stdout=results_on_stdout)
    try:
        if args.no_compile_cache:  # also for seq2seq_jax.load(), which the commands call
            os.environ[CACHE_VARIABLE] = compilation_cache.OFF
        elif args.command in COMPILING_COMMANDS:
            compilation_cache.enable()
        return HANDLERS[args.command](args)
    except (ConfigError, ValueError, OSError, RuntimeError) as error:  # one line; the traceback with --verbose
        print(f"seq2seq {args.command}: error: {error}", file=sys.stderr)
        if args.verbose:
            traceback.print_exc(file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:  # an install without the extra this command needs
        module = (error.name or "").split(".")[0]
        if module not in _EXTRA_OF_MODULE:
            raise
        extra = _EXTRA_OF_MODULE[module]
        print(f"seq2seq {args.command} needs {_LIBRARY_NAMES.get(module, module)}: install the {extra} extra "
              f"({install_command(extra)})", file=sys.stderr)
        return 2
