"""Translate text with PyTorch alone, from an export directory (``seq2seq export-torch``)::

    python -m torch_ref.translate DIR [DIR ...] [decode flags of seq2seq translate] [--input F] [--output F]
        [--tgt-lang L]

Reads stdin (or ``--input``) and writes exactly one line per input line, in order (a blank input line gives an
empty output line). Decoding settings default to the export's ``decode`` section. The output equals ``seq2seq
translate`` on the workdir the export came from: the same tokenization (source ids + EOS), the same beam search
(``torch_ref.search``, rules of docs/search.md; greedy is beam 1), the same output line. Several directories
decode as an ensemble (settings from the first); ``--prefix F`` gives one target prefix per line; ``--tgt-lang``
the target language of a multilingual export (its tag starts every source, tags are never output). Sampling is
not supported here (beam search is used). No JAX: this module imports torch, ``torch_ref`` and the JAX-free
``seq2seq_jax.core``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from seq2seq_jax.core.config import ConfigError, DecodeConfig
from seq2seq_jax.core.decode_flags import add_decode_flags, add_language_flag, add_output_flags
from seq2seq_jax.core.reading import check_same_line_count, split_lines
from seq2seq_jax.core.search_settings import Hypothesis, decode_settings, format_output, max_len_for, output_ids
from seq2seq_jax.core.tokenizer import Tokenizer, TokenizerError
from seq2seq_jax.core.tokens import EOS_ID, PAD_ID
from torch_ref.ensemble import Ensemble, load_ensemble
from torch_ref.load import decode_config as read_decode_config
from torch_ref.load import languages as read_languages
from torch_ref.model import Seq2Seq
from torch_ref.search import beam_search


def source_batches(src_ids: Sequence[Sequence[int]], batch_size: int):
    """``(src [b, S] long, src_len [b] long, indices)`` batches, sorted by length; EOS appended to every
    source, padded with PAD to the batch's longest source."""
    lengths = [len(ids) + 1 for ids in src_ids]
    order = sorted(range(len(src_ids)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        width = max(lengths[i] for i in indices)
        src = torch.full((len(indices), width), PAD_ID, dtype=torch.long)
        for row, index in enumerate(indices):
            src[row, :lengths[index]] = torch.tensor(list(src_ids[index]) + [EOS_ID], dtype=torch.long)
        yield src, torch.tensor([lengths[i] for i in indices], dtype=torch.long), indices


def _prefix_batch(prefix_ids: list[list[int]] | None, indices: Sequence[int]):
    """``(prefix [b, P] long, prefix_len [b] long)`` for a batch's lines, or ``(None, None)`` without prefixes."""
    if prefix_ids is None:
        return None, None
    lengths = [len(prefix_ids[i]) for i in indices]
    prefix = torch.full((len(indices), max(lengths)), PAD_ID, dtype=torch.long)
    for row, index in enumerate(indices):
        prefix[row, :lengths[row]] = torch.tensor(prefix_ids[index], dtype=torch.long)
    return prefix, torch.tensor(lengths, dtype=torch.long)


@torch.no_grad()
def translate(model: Seq2Seq | Ensemble, src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer, lines: Sequence[str],
              config: DecodeConfig, prefixes: Sequence[str] | None = None,
              prefix_name: str = "prefix") -> list[list[Hypothesis]]:
    """Translate ``lines`` (order kept, one entry per line, each a list of ``config.n_best`` hypotheses; an empty
    list for a blank line, whatever its prefix).

    ``prefixes``: one target prefix per line (``""`` for none) that every hypothesis starts with; a prefix with
    more pieces than its line's output limit (``DecodeConfig.max_len``) is an error naming ``prefix_name`` and
    the line."""
    model.eval()
    device = next(model.parameters()).device
    results: list[list[Hypothesis] | None] = [[] if not line.strip() else None for line in lines]
    sources = [i for i, result in enumerate(results) if result is None]  # the lines that are translated
    encoded = [src_tokenizer.encode(lines[i]) for i in sources]
    prefix_ids = None
    if prefixes is not None:
        if len(prefixes) != len(lines):
            raise ValueError(f"{len(prefixes)} prefixes for {len(lines)} lines: give one per line")
        prefix_ids = [tgt_tokenizer.encode(prefixes[i]) for i in sources]
        for i, ids, pieces in zip(sources, encoded, prefix_ids, strict=True):
            if len(pieces) > config.max_len(len(ids) + 1):
                raise ValueError(f"{prefix_name}:{i + 1}: the prefix has {len(pieces)} target pieces, more than the "
                                 f"{config.max_len(len(ids) + 1)} tokens this line's output may have")
    for src, src_len, indices in source_batches(encoded, config.batch_size):
        state = model.init_decode_state(src.to(device), src_len.to(device))
        bound = max(max_len_for(int(n), config.max_len_a, config.max_len_b) for n in src_len)
        prefix, prefix_len = _prefix_batch(prefix_ids, indices)
        result = beam_search(model.decode_step, state, src_len, config, max_len_bound=bound, prefix=prefix,
                             prefix_len=prefix_len)
        for row, index in enumerate(indices):
            hypotheses = []
            for rank in range(result.tokens.shape[1]):
                ids = output_ids(result.tokens[row, rank].tolist(), int(result.lengths[row, rank]))
                hypotheses.append(Hypothesis(tgt_tokenizer.decode(ids), ids, float(result.scores[row, rank])))
            results[sources[index]] = hypotheses
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise RuntimeError(f"internal error: no output for input lines {missing[:10]}")
    return results  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m torch_ref.translate",
                                     description="Translate stdin line by line with PyTorch alone, from an export "
                                                 "directory (seq2seq export-torch).")
    parser.add_argument("directories", nargs="+", metavar="DIR",
                        help="export directory (several: an ensemble; decode settings from the first)")
    add_decode_flags(parser, sampling=False, defaults_from="the (first) export's decode config")
    parser.add_argument("--src", "--input", dest="input", metavar="F",
                        help="read source lines from this file instead of stdin")
    parser.add_argument("--output", metavar="F", help="write translations to this file instead of stdout")
    parser.add_argument("--prefix", metavar="F", help="one target prefix per input line (an empty line for none) "
                        "that every hypothesis starts with")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    add_language_flag(parser)
    add_output_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        config = decode_settings(read_decode_config(args.directories[0]), args)
        if config.sample:
            print("torch_ref.translate: sampling is not supported; using beam search "
                  f"(beam size {config.beam_size})", file=sys.stderr)
        model, src_tokenizer, tgt_tokenizer = load_ensemble(args.directories)
        languages = read_languages(args.directories[0])
        src_tokenizer = languages.source_tokenizer(src_tokenizer, args.tgt_lang)
        config = languages.decode_config(config, tgt_tokenizer)
        if args.input:
            with open(args.input, "rb") as handle:
                lines = split_lines(handle.read(), args.input)
        else:
            lines = split_lines(sys.stdin.buffer.read())
        prefixes = None
        if args.prefix:
            with open(args.prefix, "rb") as handle:
                prefixes = split_lines(handle.read(), args.prefix)
            check_same_line_count(args.input or "<stdin>", lines, args.prefix, prefixes)
        results = translate(model, src_tokenizer, tgt_tokenizer, lines, config, prefixes, args.prefix)
    except (ConfigError, TokenizerError, ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"torch_ref.translate: error: {error}", file=sys.stderr)
        return 2
    text = "".join(format_output(hypotheses, config.n_best, with_score=args.with_score,
                                 one_line_per_input=args.one_line_per_input) for hypotheses in results)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode("utf-8"))
        sys.stdout.buffer.flush()
    print(f"translated {len(lines)} lines", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
