"""Named starting points for a config: ``seq2seq train --preset NAME``, ``seq2seq config --preset NAME``, and
``"preset": NAME`` in a config file (the recipes' files in ``scripts/recipes/`` are a preset and their changes).

A preset is a partial config: the fields it names, over the defaults of ``core/config.py`` (the built-in dates
demo's character-level model). What a command line resolves, lowest first: the defaults, the preset, a config
file, ``--set``; ``seq2seq config --preset NAME`` prints the result, every field of every section.
``translation`` is a 2-layer 512-unit sentence translation model (README, "Command line", tabulates what each sets),
``summarization`` a copy-attention summarizer for long sources, ``small`` a laptop-sized first run.
Pure data: this module imports nothing of the package (``core/config.py`` imports it).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "translation": {
        "model": {"src_embed_size": 512, "tgt_embed_size": 512, "enc_layers": 2, "enc_hidden_size": 256,
                  "bidirectional": True, "dec_layers": 2, "dec_hidden_size": 512, "attention": "general",
                  "decoder_style": "luong", "bridge": "dense", "readout_size": 512, "embed_dropout": 0.1,
                  "rnn_dropout": 0.3, "readout_dropout": 0.3},
        "data": {"tokenizer": "unigram", "vocab_size": 8000, "joint_vocab": False, "max_src_len": 100,
                 "max_tgt_len": 100, "long_pair_policy": "drop", "batch_size": 64, "bucket_width": 8},
        "train": {"optimizer": "adam", "learning_rate": 1e-3, "schedule": "cosine", "warmup_steps": 1000,
                  "max_grad_norm": 1.0, "label_smoothing": 0.1, "max_steps": 30000, "log_every": 100,
                  "eval_every": 1000, "save_every": 1000, "keep_checkpoints": 5, "best_metric": "valid_bleu",
                  "valid_sample_size": 500},
        "decode": {"beam_size": 5, "length_penalty": 1.0, "max_len_a": 1.5, "max_len_b": 10, "batch_size": 64},
    },
    "summarization": {
        "model": {"src_embed_size": 128, "tgt_embed_size": 128, "enc_layers": 1, "enc_hidden_size": 128,
                  "bidirectional": True, "dec_layers": 1, "dec_hidden_size": 256, "attention": "additive",
                  "attention_size": 128, "decoder_style": "bahdanau", "bridge": "dense", "readout_size": 128,
                  "tie_output_embedding": True, "copy_attention": True, "embed_dropout": 0.2, "rnn_dropout": 0.2,
                  "readout_dropout": 0.3},
        "data": {"tokenizer": "unigram", "vocab_size": 8000, "joint_vocab": True, "max_src_len": 400,
                 "max_tgt_len": 100, "long_pair_policy": "crop", "batch_size": 32, "bucket_width": 48,
                 "tgt_bucket_width": 16},
        "train": {"optimizer": "adam", "learning_rate": 2e-3, "schedule": "cosine", "warmup_steps": 200,
                  "max_grad_norm": 1.0, "label_smoothing": 0.1, "max_steps": 20000, "log_every": 100,
                  "eval_every": 1000, "save_every": 1000, "keep_checkpoints": 5, "best_metric": "valid_bleu",
                  "valid_sample_size": 200},
        "decode": {"beam_size": 5, "length_penalty": 1.0, "no_repeat_ngram_size": 3, "max_len_a": 0.0,
                   "max_len_b": 100, "batch_size": 32},
    },
    "small": {
        "model": {"src_embed_size": 64, "tgt_embed_size": 64, "enc_layers": 1, "enc_hidden_size": 128,
                  "bidirectional": True, "dec_layers": 1, "dec_hidden_size": 256, "attention": "additive",
                  "attention_size": 128, "decoder_style": "bahdanau", "bridge": "dense", "readout_size": 128,
                  "embed_dropout": 0.1, "rnn_dropout": 0.1, "readout_dropout": 0.2},
        "data": {"tokenizer": "unigram", "vocab_size": 4000, "max_src_len": 60, "max_tgt_len": 60,
                 "batch_size": 32, "bucket_width": 8},
        "train": {"learning_rate": 2e-3, "schedule": "cosine", "warmup_steps": 200, "label_smoothing": 0.1,
                  "max_steps": 3000, "log_every": 100, "eval_every": 500, "save_every": 500, "keep_checkpoints": 5,
                  "best_metric": "valid_bleu", "valid_sample_size": 200},
        "decode": {"beam_size": 5, "length_penalty": 1.0, "batch_size": 32},
    },
}

# One line each, for the command line's help and ``seq2seq config --presets``.
SUMMARIES = {
    "translation": "unigram 8k per side, 2-layer biLSTM encoder (512), 2-layer decoder, general attention with "
                   "input feeding, dropout 0.3, label smoothing 0.1, beam 5, keeps 5 checkpoints to average",
    "summarization": "copy attention over a joint unigram 8k vocabulary, sources up to 400 pieces (cropped), "
                     "beam 5 without repeated trigrams",
    "small": "a laptop-sized model for a quick first run on your own files: unigram 4k, 128/256 units, "
             "3000 steps",
}


def preset_sections(name: str) -> dict[str, dict[str, Any]]:
    """A copy of preset ``name``'s sections (``KeyError`` for an unknown name)."""
    return {section: dict(fields) for section, fields in PRESETS[name].items()}


def merge_sections(base: dict[str, dict[str, Any]], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s fields put over it, section by section (a section of ``over`` that is not a
    mapping replaces nothing and is left for the config to reject)."""
    merged: dict[str, Any] = {section: dict(fields) for section, fields in base.items()}
    for section, fields in over.items():
        if isinstance(fields, dict) and isinstance(merged.get(section, {}), dict):
            merged[section] = {**merged.get(section, {}), **fields}
        else:
            merged[section] = fields
    return merged
