"""The ``seq2seq`` command line's arguments: one function per subcommand, every option with its help
(``tests/test_cli_help.py`` walks them). Imports no JAX: ``seq2seq --help`` and ``seq2seq config`` start fast.

``cli.main`` parses with ``build_parser()`` and runs ``cli.HANDLERS[args.command]``.
"""

from __future__ import annotations

import argparse

from seq2seq_jax import __version__, compilation_cache
from seq2seq_jax.core.decode_flags import add_decode_flags, add_language_flag, add_output_flags, checkpoint_arg
from seq2seq_jax.core.presets import PRESETS, SUMMARIES
from seq2seq_jax.core.triples import INPUT_FORMATS

CACHE_VARIABLE = compilation_cache.ENVIRONMENT_VARIABLE
ENSEMBLE_HELP = "trained workdir (repeat for an ensemble; decoding defaults come from the first)"
CHECKPOINT_HELP = "which checkpoint: best (by train.best_metric), latest or a step number (default: best)"
PRESET_HELP = ("start from a named config for real data (" + "; ".join(f"{name}: {SUMMARIES[name]}"
                                                                      for name in PRESETS)
               + "); order: preset < --config < --set")


def _add_checkpoint(parser, help_text: str = CHECKPOINT_HELP) -> None:
    parser.add_argument("--checkpoint", type=checkpoint_arg, default="best", metavar="best|latest|STEP",
                        help=help_text)


def _add_config_sources(parser, config_help: str) -> None:
    """``--preset``, ``--config`` and ``--set``: what a command line resolves a config from."""
    parser.add_argument("--preset", choices=sorted(PRESETS), help=PRESET_HELP)
    parser.add_argument("--config", metavar="FILE", help=config_help)
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override one setting (repeatable; seq2seq config --describe lists them)")


def _add_data_files(parser, task_help: str) -> None:
    parser.add_argument("--train-src", metavar="F", help="training source file, one sentence per line")
    parser.add_argument("--train-tgt", metavar="F", help="training target file, line-aligned with --train-src")
    parser.add_argument("--valid-src", metavar="F", help="validation source file, one sentence per line")
    parser.add_argument("--valid-tgt", metavar="F", help="validation target file, line-aligned with --valid-src")
    parser.add_argument("--task", metavar="NAME", help=task_help)


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="train or resume (built-in demo task when no data is given)")
    train.add_argument("--workdir", required=True, metavar="W",
                       help="the run's directory: new to start, existing to resume exactly")
    _add_data_files(train, "built-in generated task when no files are given: dates (default), numbers, reverse")
    train.add_argument("--data", metavar="D", help="train from this directory of seq2seq preprocess (its data "
                       "settings and tokenizers) instead of --train-src/--train-tgt or --task")
    _add_config_sources(train, "JSON file with model/data/train/decode sections (and optionally \"preset\")")
    init = train.add_argument_group("fine-tuning")
    init.add_argument("--init-from", metavar="W0", help="start from the parameters (and tokenizers and model) of "
                      "this trained workdir, with a fresh optimizer and step 0")
    init.add_argument("--init-checkpoint", type=checkpoint_arg, default="best", metavar="best|latest|STEP",
                      help="which checkpoint of --init-from (default: best)")
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


def _add_preprocess(commands) -> None:
    preprocess = commands.add_parser("preprocess", help="tokenize a corpus once into ArrayRecord shards "
                                     "(seq2seq train --data)")
    preprocess.add_argument("--out", required=True, metavar="D", help="new directory for the corpus")
    _add_data_files(preprocess, "built-in generated task (dates, numbers, reverse) when no files")
    _add_config_sources(preprocess, "JSON file with a data section (the other sections are kept too)")
    preprocess.add_argument("--workers", type=int, default=1, metavar="N", help="tokenizing processes (default 1)")
    preprocess.add_argument("--workdir", metavar="W", help="reuse this workdir's tokenizers (and, without "
                            "--config or --preset, its settings)")


def _add_config(commands) -> None:
    config = commands.add_parser("config", help="print a resolved config (JSON, every field), or --describe "
                                 "every field")
    config.add_argument("--workdir", metavar="W", help="the config of this workdir (its config.json)")
    _add_config_sources(config, "JSON config file (over --preset, under --set)")
    config.add_argument("--describe", action="store_true",
                        help="list every field instead: section.name, type, default and meaning")


def _add_input_format(parser) -> None:
    parser.add_argument("--input-format", choices=INPUT_FORMATS, default="text",
                        help="text: source lines as given; triples: data-to-text, each line a set of "
                             "'subject | predicate | object' triples joined by ' <TSP> ', linearized as the "
                             "webnlg recipe trains on (docs/data-to-text.md)")


def _add_translate(commands) -> None:
    translate = commands.add_parser("translate", help="translate stdin (or --input) line by line")
    translate.add_argument("--workdir", required=True, action="append", metavar="W", help=ENSEMBLE_HELP)
    translate.add_argument("--src", "--input", dest="input", metavar="F",
                           help="read source lines from this file instead of stdin")
    translate.add_argument("--output", metavar="F", help="write translations to this file instead of stdout")
    translate.add_argument("--prefix", metavar="F", help="one target prefix per input line (an empty line for none) "
                           "that every hypothesis starts with")
    translate.add_argument("--plot-attention", metavar="DIR",
                           help="write one attention heatmap PNG per non-blank line")
    translate.add_argument("--interactive", action="store_true",
                           help="answer each stdin line as soon as it is read, flushing stdout")
    _add_input_format(translate)
    add_language_flag(translate)
    add_output_flags(translate)
    add_decode_flags(translate)
    _add_checkpoint(translate)


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="BLEU, chrF (sacrebleu), perplexity, ROUGE on request")
    evaluate.add_argument("--workdir", required=True, action="append", metavar="W", help=ENSEMBLE_HELP)
    evaluate.add_argument("--src", required=True, metavar="F", help="source sentences, one per line")
    evaluate.add_argument("--ref", required=True, action="append", metavar="F",
                          help="reference translations, line-aligned with --src (repeat for several references)")
    evaluate.add_argument("--rouge", action="store_true", help="also report ROUGE-1/2/L (rouge-score, stemmed F1)")
    evaluate.add_argument("--json", action="store_true", help="print every score as one JSON object")
    _add_input_format(evaluate)
    add_language_flag(evaluate)
    add_decode_flags(evaluate)
    _add_checkpoint(evaluate)


def _add_score(commands) -> None:
    score = commands.add_parser("score", help="log-probability of given translations (forced decoding), one line "
                                "per pair: sum, mean, count; the corpus perplexity on stderr")
    score.add_argument("--workdir", required=True, action="append", metavar="W", help=ENSEMBLE_HELP)
    score.add_argument("--src", required=True, metavar="F", help="source sentences, one per line")
    score.add_argument("--tgt", required=True, metavar="F", help="target sentences to score, line-aligned with --src")
    score.add_argument("--json", action="store_true", help="one JSON object per line (and a JSON summary)")
    score.add_argument("--output", metavar="F", help="write the scores to this file instead of stdout")
    score.add_argument("--batch-size", type=int, metavar="N",
                       help="sentence pairs per forced-decoding batch (default: the workdir's decode.batch_size)")
    add_language_flag(score)
    _add_checkpoint(score)


def _add_plot(commands) -> None:
    plot = commands.add_parser("plot", help="training curves PNG; attention heatmap for one sentence")
    plot.add_argument("--workdir", required=True, metavar="W", help="trained workdir (its metrics.jsonl)")
    plot.add_argument("--output", "--out", dest="output", metavar="F",
                      help="training-curves PNG to write (default: W/training_curves.png)")
    plot.add_argument("--attention", metavar="SENTENCE",
                      help="also translate this sentence with the best checkpoint and plot its attention")
    plot.add_argument("--attention-output", "--attention-out", dest="attention_output", metavar="F",
                      help="attention PNG to write (default: W/attention.png)")
    add_language_flag(plot)


def _add_export_import(commands) -> None:
    export = commands.add_parser("export-torch", help="write an export directory for PyTorch (torch_ref)")
    export.add_argument("--workdir", required=True, metavar="W", help="trained workdir to export")
    export.add_argument("--out", required=True, metavar="DIR", help="export directory (must be new or empty)")
    _add_checkpoint(export)
    export.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    import_ = commands.add_parser("import-torch", help="make a workdir from an export directory or a torch_ref "
                                                       "state_dict (.safetensors / .pt)")
    import_.add_argument("--src", required=True, metavar="PATH",
                         help="export directory, or a .safetensors/.pt state_dict file")
    import_.add_argument("--workdir", required=True, metavar="W", help="new (or empty) workdir")
    import_.add_argument("--config", metavar="FILE",
                         help="config JSON for a bare state_dict (default: config.json beside it)")


def _add_average(commands) -> None:
    average = commands.add_parser("average", help="average the parameters of the last N checkpoints into a new "
                                  "workdir")
    average.add_argument("--workdir", required=True, metavar="W", help="trained workdir whose checkpoints to average")
    average.add_argument("--out", required=True, metavar="W", help="new (or empty) workdir for the average")
    average.add_argument("--last", type=int, default=5, metavar="N", help="the N newest checkpoints (default 5)")
    average.add_argument("--steps", metavar="S1,S2,...", help="exactly these steps instead of --last")


def _add_serve(commands) -> None:
    serve = commands.add_parser("serve", help="HTTP translation server with dynamic batching and a web page")
    serve.add_argument("--workdir", required=True, action="append", metavar="W", help=ENSEMBLE_HELP)
    _add_checkpoint(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000)")
    serve.add_argument("--max-batch", type=int, default=64, metavar="N",
                       help="most texts merged into one search (default 64)")
    serve.add_argument("--max-wait-ms", type=float, default=10.0, metavar="MS",
                       help="longest wait for more requests to merge with the oldest one (default 10)")
    serve.add_argument("--refill-share", type=float, default=0.25, metavar="SHARE",
                       help="after a search, wait up to this share of its duration for the clients it answered to "
                            "send again, so that they join the next search (0: off)")
    serve.add_argument("--max-chars", type=int, default=2000, metavar="N", help="most characters per text")
    serve.add_argument("--max-texts", type=int, default=64, metavar="N", help="most texts per request")
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N",
                       help="larger request bodies get 413")
    serve.add_argument("--max-beam-size", type=int, default=16, metavar="K",
                       help="largest beam a request may ask for (at least the workdir's own)")
    serve.add_argument("--fixed-rows", action="store_true",
                       help="every search has --max-batch rows: scores bit-identical to a text's score alone "
                            "(default: 1, 4, 16, ... rows, whichever holds the batch; equal texts, scores within "
                            "float32 rounding)")
    serve.add_argument("--max-queue", type=int, default=256, metavar="N",
                       help="most texts waiting for a search; a request past it gets 429 with Retry-After")
    serve.add_argument("--request-timeout", type=float, default=60.0, metavar="SECONDS",
                       help="a request not answered this long after it was accepted gets 503 (0: no limit)")
    serve.add_argument("--api-key", metavar="KEY",
                       help="require Authorization: Bearer KEY on every route but the health probes and the static "
                            "pages (visible in ps: prefer --api-key-file or $SEQ2SEQ_JAX_API_KEY)")
    serve.add_argument("--api-key-file", metavar="F", help="the API key, the first line of F")
    serve.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                       help="allow browsers on ORIGIN (e.g. https://app.example.com) to call the server; repeatable "
                            "(default: no cross-origin calls)")
    serve.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="after SIGTERM, requests still unanswered this long get 503 and the server exits "
                            "(0: wait for all)")
    serve.add_argument("--quiet", action="store_true",
                       help="no access log (one line per request: method, route, status, texts, seconds, id)")
    serve.add_argument("--warmup-src-len", type=int, default=32, metavar="TOKENS",
                       help="compile the default settings' searches for sources up to this length at start-up")


SUBCOMMANDS = (_add_train, _add_preprocess, _add_config, _add_translate, _add_evaluate, _add_score, _add_plot,
               _add_export_import, _add_average, _add_serve)


DESCRIPTION = ("Train attention encoder-decoder (seq2seq) models on your own parallel text with JAX, then "
               "translate, evaluate, serve, and use them from PyTorch. A first run: seq2seq train --workdir "
               "runs/demo (a built-in demo task); your own corpus: seq2seq train --workdir W --preset small "
               "--train-src F --train-tgt F (docs/tutorial.md walks through it). seq2seq COMMAND --help "
               "explains each command.")


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, where it has one worth saying (not None or off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if ("default" in help_text or default in (None, False, argparse.SUPPRESS) or not action.option_strings
                or isinstance(action, argparse._HelpAction)):
            return help_text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{help_text} (default: {shown})"


def build_parser(description: str = DESCRIPTION) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seq2seq", description=description, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"seq2seq-jax {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log compilation and checkpoint details; print the traceback of an error")
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="compile every program afresh instead of reusing those in the persistent "
                             f"compilation cache (also: {CACHE_VARIABLE}=off; {CACHE_VARIABLE}=DIR moves it)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(commands)
    summaries = {action.dest: action.help for action in commands._choices_actions}
    for name, command in commands.choices.items():  # also after the command: seq2seq train ... --verbose
        command.formatter_class = HelpFormatter
        if command.description is None:
            command.description = summaries[name][:1].upper() + summaries[name][1:] + "."
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="also log details (each compiled program, checkpoint internals) and print "
                                  "the traceback of an error")
        command.add_argument("--no-compile-cache", action="store_true", default=argparse.SUPPRESS,
                             help="do not use the persistent compilation cache")
    return parser
