"""The ``seq2seq`` command line: parses arguments and calls the library. No logic of its own.

    seq2seq train     --workdir W [--train-src F --train-tgt F --valid-src F --valid-tgt F | --data D] [--task NAME]
                      [--config FILE] [--set SECTION.KEY=VALUE ...]
    seq2seq preprocess --out D [--train-src F --train-tgt F --valid-src F --valid-tgt F] [--config FILE]
                      [--set data.KEY=VALUE ...] [--workers N] [--workdir W]
    seq2seq translate --workdir W [--workdir W2 ...] [--beam-size K] [--input F] [--output F] [--prefix F] ...
    seq2seq evaluate  --workdir W [--workdir W2 ...] --src F --ref F [--ref F ...] [--beam-size K] [--rouge] [--json]
    seq2seq score     --workdir W [--workdir W2 ...] --src F --tgt F [--json] [--output F]
    seq2seq plot      --workdir W [--out F] [--attention "source sentence" --attention-out F]
    seq2seq average   --workdir W --out W2 [--last N | --steps S1,S2,...]
    seq2seq serve     --workdir W [--workdir W2 ...] [--host 127.0.0.1] [--port 5000] [--max-batch 64] ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
from pathlib import Path

from seq2seq_jax import compilation_cache
from seq2seq_jax.core import logs
from seq2seq_jax.core.config import ConfigError, ExperimentConfig
from seq2seq_jax.core.search_settings import decode_settings, format_line

# Modules of each optional extra (pyproject.toml): a command that fails to import one names the extra to install.
_EXTRA_OF_MODULE = {**dict.fromkeys(("jax", "jaxlib", "flax", "optax", "orbax", "ml_dtypes", "sacrebleu",
                                     "rouge_score", "tqdm", "tensorboardX", "matplotlib", "grain",
                                     "array_record"), "jax"), "torch": "torch"}
_LIBRARY_NAMES = {"jax": "JAX", "jaxlib": "JAX", "flax": "JAX", "optax": "JAX", "orbax": "JAX", "torch": "PyTorch"}


def _add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("decoding (defaults: the workdir's decode config)")
    group.add_argument("--beam-size", type=int)
    group.add_argument("--length-penalty", type=float, help="alpha of ((5 + len) / 6) ** alpha")
    group.add_argument("--n-best", type=int)
    group.add_argument("--min-len", type=int)
    group.add_argument("--max-len-a", type=float)
    group.add_argument("--max-len-b", type=float)
    group.add_argument("--no-repeat-ngram-size", type=int)
    group.add_argument("--sample", action="store_true", default=None, help="sample instead of beam search")
    group.add_argument("--temperature", type=float)
    group.add_argument("--top-k", type=int)
    group.add_argument("--top-p", type=float)
    group.add_argument("--seed", type=int)
    group.add_argument("--batch-size", type=int)
    group.add_argument("--checkpoint", default="best", help="best, latest or a step number")


def _checkpoint_arg(value: str) -> str | int:
    return int(value) if value.isdigit() else value


def _read_input(path: str | None) -> list[str]:
    from seq2seq_jax.core.reading import read_lines, split_lines

    return read_lines(path).lines if path else split_lines(sys.stdin.buffer.read())


def _load_model(args: argparse.Namespace):
    """The ``seq2seq_jax.api`` model of ``--workdir`` (repeated: an ensemble) with the command line's decoding
    settings."""
    from seq2seq_jax.api import load

    model = load(args.workdir, _checkpoint_arg(args.checkpoint))
    model.decode_config = decode_settings(model.decode_config, args)
    return model


def _load_translator(args: argparse.Namespace):
    model = _load_model(args)
    return model, model.translator()


def _plot_hypothesis_attention(trained, source: str, hypothesis, path: Path) -> None:
    """Heatmap of one hypothesis' attention, labelled with source and target tokens (and EOS rows/columns)."""
    from seq2seq_jax.training.plots import plot_attention

    src_tokens = trained.src_tokenizer.pieces(trained.src_tokenizer.encode(source)) + ["</s>"]
    tgt_tokens = trained.tgt_tokenizer.pieces(hypothesis.tokens)
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
    if args.config:
        config = ExperimentConfig.load(args.config)
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


def cmd_train(args: argparse.Namespace) -> int:
    from seq2seq_jax.training.workdir_lock import refuse_if_locked

    if not (args.coordinator or args.num_processes or args.distributed):  # one process: refuse before JAX starts
        refuse_if_locked(args.workdir)
    from seq2seq_jax.training import parallel

    # Before anything else touches a device: every process of a multi-host run joins here.
    parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    mesh = parallel.make_mesh(args.model_parallel)

    from seq2seq_jax.training.trainer import train
    from seq2seq_jax.training.workdir import Workdir

    run = Workdir(Path(args.workdir))
    if run.exists():
        if args.config:
            raise ConfigError(f"{run.config_path} exists (resuming); --config is only for a new workdir. "
                              "Change settings of a resumed run with --set.")
        config = run.load_config()
    else:
        config = ExperimentConfig.load(args.config) if args.config else ExperimentConfig()
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
    if run.exists() and config.model != run.load_config().model:
        raise ConfigError(f"{run.config_path}: model settings cannot change when resuming; use a new --workdir")
    train(config, args.workdir, mesh=mesh)
    return 0


def _translate_interactively(translator) -> int:
    """Answer each stdin line as soon as it is read (one-row searches unless --batch-size says otherwise)."""
    for number, raw in enumerate(iter(sys.stdin.buffer.readline, b""), start=1):
        try:
            line = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
        except UnicodeDecodeError as error:
            raise ValueError(f"<stdin> line {number}: not valid UTF-8 ({error.reason})") from None
        sys.stdout.write(format_line(translator.translate([line])[0], translator.config.n_best) + "\n")
        sys.stdout.flush()
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    trained, translator = _load_translator(args)
    if args.interactive:
        if args.input or args.output or args.plot_attention:
            raise ValueError("--interactive reads stdin and writes stdout: no --input, --output or --plot-attention")
        if args.batch_size is None:
            translator.config = dataclasses.replace(translator.config, batch_size=1)
        return _translate_interactively(translator)
    lines = _read_input(args.input)
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
            out.write(format_line(hypotheses, translator.config.n_best) + "\n")
    finally:
        if args.output:
            out.close()
    if args.plot_attention:
        directory = Path(args.plot_attention)
        directory.mkdir(parents=True, exist_ok=True)
        for number, (line, hypotheses) in enumerate(zip(lines, results, strict=True), start=1):
            if hypotheses:  # a blank line has no translation, so no heatmap
                _plot_hypothesis_attention(trained, line, hypotheses[0], directory / f"attention_{number:05d}.png")
    print(f"translated {len(lines)} lines with {translator.compiled_programs} compiled search programs",
          file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from seq2seq_jax.core.encoding import encode_pairs
    from seq2seq_jax.core.pair_scores import corpus_perplexity
    from seq2seq_jax.core.reading import read_lines
    from seq2seq_jax.decoding.metrics import exact_match, per_example_references, rouge, translation_scores

    model, translator = _load_translator(args)
    sources = read_lines(args.src).lines
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
    examples, report = encode_pairs(list(zip(sources, references[0], strict=True)), model.src_tokenizer,
                                             model.tgt_tokenizer, dataclasses.replace(
                                                 first.config.data, max_src_len=10**9, max_tgt_len=10**9),
                                             name="evaluate")
    if examples:  # the perplexity of the non-empty pairs, with the model's (or the ensemble's) probabilities
        kept = report.kept_indices
        result["perplexity"] = corpus_perplexity(model.score([sources[i] for i in kept],
                                                             [references[0][i] for i in kept]))
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
    scores = model.score(sources, targets)
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
    out = Path(args.out or run.path / "training_curves.png")
    plot_training_curves(read_metrics_jsonl(run.metrics_path), out)
    print(f"wrote {out}")
    if args.attention is not None:
        if not args.attention.strip():
            raise ValueError("--attention: the sentence is blank; a blank source is not translated")
        args.checkpoint = "best"
        trained, translator = _load_translator(args)
        best = translator.translate([args.attention], with_attention=True)[0][0]
        attention_out = Path(args.attention_out or run.path / "attention.png")
        _plot_hypothesis_attention(trained, args.attention, best, attention_out)
        print(f"wrote {attention_out}")
    return 0


def cmd_export_torch(args: argparse.Namespace) -> int:
    from seq2seq_jax.training.export import export_torch

    out = export_torch(args.workdir, args.out, checkpoint=_checkpoint_arg(args.checkpoint), force=args.force)
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
    from seq2seq_jax.serving.schema import ServeLimits
    from seq2seq_jax.serving.server import serve

    limits = ServeLimits(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, refill_share=args.refill_share,
                         max_chars=args.max_chars,
                         max_texts=args.max_texts, max_body_bytes=args.max_body_bytes,
                         max_beam_size=args.max_beam_size, warmup_src_len=args.warmup_src_len,
                         fixed_rows=args.fixed_rows)
    return serve(_load_model(args), args.host, args.port, limits)


COMPILING_COMMANDS = {"train", "translate", "evaluate", "score", "serve"}
CACHE_VARIABLE = compilation_cache.ENVIRONMENT_VARIABLE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seq2seq", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log compilation and checkpoint details; print the traceback of an error")
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="compile every program afresh instead of reusing those in the persistent "
                             f"compilation cache (also: {CACHE_VARIABLE}=off; {CACHE_VARIABLE}=DIR moves it)")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train or resume (built-in demo task when no data is given)")
    train.add_argument("--workdir", required=True)
    train.add_argument("--train-src")
    train.add_argument("--train-tgt")
    train.add_argument("--valid-src")
    train.add_argument("--valid-tgt")
    train.add_argument("--task", help="built-in generated task (dates, numbers, reverse)")
    train.add_argument("--data", metavar="D", help="train from this directory of seq2seq preprocess (its data "
                       "settings and tokenizers) instead of --train-src/--train-tgt or --task")
    train.add_argument("--config", help="JSON file with model/data/train/decode sections")
    train.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one setting")
    devices = train.add_argument_group(
        "devices and hosts (default: one process, every local device on the data axis)")
    devices.add_argument("--model-parallel", type=int, default=1, metavar="M",
                         help="size of the mesh's model axis, which shards the embeddings and the output "
                              "projection over the vocabulary (must divide the device count)")
    devices.add_argument("--coordinator", metavar="HOST:PORT",
                         help="multi-host: address of process 0 (jax.distributed.initialize)")
    devices.add_argument("--num-processes", type=int, metavar="N", help="multi-host: number of processes")
    devices.add_argument("--process-id", type=int, metavar="I", help="multi-host: this process, 0..N-1")
    devices.add_argument("--distributed", action="store_true",
                         help="multi-host with whatever jax.distributed.initialize detects from the cluster "
                              "(Cloud TPU pods, SLURM, Open MPI, Kubernetes); flags given beside it take precedence")
    train.set_defaults(handler=cmd_train)

    preprocess = commands.add_parser("preprocess", help="tokenize a corpus once into ArrayRecord shards "
                                     "(seq2seq train --data)")
    preprocess.add_argument("--out", required=True, metavar="D", help="new directory for the corpus")
    preprocess.add_argument("--train-src")
    preprocess.add_argument("--train-tgt")
    preprocess.add_argument("--valid-src")
    preprocess.add_argument("--valid-tgt")
    preprocess.add_argument("--task", help="built-in generated task (dates, numbers, reverse) when no files")
    preprocess.add_argument("--config", help="JSON file with a data section (the other sections are kept too)")
    preprocess.add_argument("--set", action="append", metavar="data.KEY=VALUE", help="override one setting")
    preprocess.add_argument("--workers", type=int, default=1, metavar="N", help="tokenizing processes")
    preprocess.add_argument("--workdir", metavar="W", help="reuse this workdir's tokenizers (and, without "
                            "--config, its settings)")
    preprocess.set_defaults(handler=cmd_preprocess)

    ensemble_help = "trained workdir (repeat for an ensemble; decoding defaults come from the first)"
    translate = commands.add_parser("translate", help="translate stdin (or --input) line by line")
    translate.add_argument("--workdir", required=True, action="append", help=ensemble_help)
    translate.add_argument("--input")
    translate.add_argument("--output")
    translate.add_argument("--prefix", metavar="F", help="one target prefix per input line (an empty line for none) "
                           "that every hypothesis starts with")
    translate.add_argument("--plot-attention", metavar="DIR",
                           help="write one attention heatmap PNG per non-blank line")
    translate.add_argument("--interactive", action="store_true",
                           help="answer each stdin line as soon as it is read, flushing stdout")
    _add_decode_arguments(translate)
    translate.set_defaults(handler=cmd_translate)

    evaluate = commands.add_parser("evaluate", help="BLEU, chrF (sacrebleu), perplexity, ROUGE on request")
    evaluate.add_argument("--workdir", required=True, action="append", help=ensemble_help)
    evaluate.add_argument("--src", required=True)
    evaluate.add_argument("--ref", required=True, action="append", help="reference file (repeat for several)")
    evaluate.add_argument("--rouge", action="store_true")
    evaluate.add_argument("--json", action="store_true")
    _add_decode_arguments(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)

    score = commands.add_parser("score", help="log-probability of given translations (forced decoding), one line "
                                "per pair: sum, mean, count; the corpus perplexity on stderr")
    score.add_argument("--workdir", required=True, action="append", help=ensemble_help)
    score.add_argument("--src", required=True, help="source sentences, one per line")
    score.add_argument("--tgt", required=True, help="target sentences to score, line-aligned with --src")
    score.add_argument("--json", action="store_true", help="one JSON object per line (and a JSON summary)")
    score.add_argument("--output", help="write the scores to this file instead of stdout")
    score.add_argument("--batch-size", type=int)
    score.add_argument("--checkpoint", default="best", help="best, latest or a step number")
    score.set_defaults(handler=cmd_score)

    plot = commands.add_parser("plot", help="training curves PNG; attention heatmap for one sentence")
    plot.add_argument("--workdir", required=True)
    plot.add_argument("--out")
    plot.add_argument("--attention", metavar="SENTENCE")
    plot.add_argument("--attention-out")
    plot.set_defaults(handler=cmd_plot)

    export = commands.add_parser("export-torch", help="write an export directory for PyTorch (torch_ref)")
    export.add_argument("--workdir", required=True)
    export.add_argument("--out", required=True, metavar="DIR", help="export directory (must be new or empty)")
    export.add_argument("--checkpoint", default="best", help="best, latest or a step number")
    export.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    export.set_defaults(handler=cmd_export_torch)

    import_ = commands.add_parser("import-torch", help="make a workdir from an export directory or a torch_ref "
                                                       "state_dict (.safetensors / .pt)")
    import_.add_argument("--src", required=True, help="export directory, or a .safetensors/.pt state_dict file")
    import_.add_argument("--workdir", required=True, help="new (or empty) workdir")
    import_.add_argument("--config", help="config JSON for a bare state_dict (default: config.json beside it)")
    import_.set_defaults(handler=cmd_import_torch)
    average = commands.add_parser("average", help="average the parameters of the last N checkpoints into a new "
                                  "workdir")
    average.add_argument("--workdir", required=True)
    average.add_argument("--out", required=True, metavar="W", help="new (or empty) workdir for the average")
    average.add_argument("--last", type=int, default=5, metavar="N", help="the N newest checkpoints (default 5)")
    average.add_argument("--steps", metavar="S1,S2,...", help="exactly these steps instead of --last")
    average.set_defaults(handler=cmd_average)

    serve = commands.add_parser("serve", help="HTTP translation server with dynamic batching and a web page")
    serve.add_argument("--workdir", required=True, action="append", help=ensemble_help)
    serve.add_argument("--checkpoint", default="best", help="best, latest or a step number")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=5000)
    serve.add_argument("--max-batch", type=int, default=64, help="most texts merged into one search")
    serve.add_argument("--max-wait-ms", type=float, default=10.0,
                       help="longest wait for more requests to merge with the oldest one")
    serve.add_argument("--refill-share", type=float, default=0.25, metavar="SHARE",
                       help="after a search, wait up to this share of its duration for the clients it answered to "
                            "send again, so that they join the next search (0: off)")
    serve.add_argument("--max-chars", type=int, default=2000, help="most characters per text")
    serve.add_argument("--max-texts", type=int, default=64, help="most texts per request")
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    serve.add_argument("--max-beam-size", type=int, default=16,
                       help="largest beam a request may ask for (at least the workdir's own)")
    serve.add_argument("--fixed-rows", action="store_true",
                       help="every search has --max-batch rows: scores bit-identical to a text's score alone "
                            "(default: 1, 4, 16, ... rows, whichever holds the batch; equal texts, scores within "
                            "float32 rounding)")
    serve.add_argument("--warmup-src-len", type=int, default=32, metavar="TOKENS",
                       help="compile the default settings' searches for sources up to this length at start-up")
    serve.set_defaults(handler=cmd_serve)

    for command in commands.choices.values():  # also after the command: seq2seq train ... --verbose
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="also log details (each compiled program, checkpoint internals) and print "
                                  "the traceback of an error")
        command.add_argument("--no-compile-cache", action="store_true", default=argparse.SUPPRESS,
                             help="do not use the persistent compilation cache")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.verbose, prefix="seq2seq serve: " if args.command == "serve" else "")
    try:
        if args.no_compile_cache:  # also for seq2seq_jax.load(), which the commands call
            os.environ[CACHE_VARIABLE] = compilation_cache.OFF
        elif args.command in COMPILING_COMMANDS:
            compilation_cache.enable()
        return args.handler(args)
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
              f"(pip install 'seq2seq-jax[{extra}]')", file=sys.stderr)
        return 2
