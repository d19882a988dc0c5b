"""Frozen, typed configuration: ModelConfig, DataConfig, TrainConfig, DecodeConfig and the
ExperimentConfig that holds all four.

Variants are made with ``dataclasses.replace``; every config round-trips through JSON
(``to_dict`` / ``from_dict``), and ``ExperimentConfig.with_overrides`` applies command-line
``--set section.key=value`` pairs. Invalid combinations are rejected when the config is built,
with a message that says which fields disagree.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, get_type_hints

from seq2seq_jax.core.config_values import ConfigError, parse_value
from seq2seq_jax.core.corpora import TAG_POSITIONS, CorpusError, CorpusSpec, check_corpora
from seq2seq_jax.core.json_files import read_json
from seq2seq_jax.core.names import closest, did_you_mean
from seq2seq_jax.core.presets import PRESETS, merge_sections, preset_sections
from seq2seq_jax.core.search_settings import max_len_for

ATTENTION_SCORES = ("additive", "dot", "general")
DECODER_STYLES = ("bahdanau", "luong")
BRIDGES = ("zero", "last", "dense")
DTYPES = ("float32", "float64", "bfloat16", "float16")
MAX_NBEST_SIZE = 512  # sentencepiece refuses n-best lists longer than this


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_rate(name: str, value: float) -> None:
    _check(0.0 <= value < 1.0, f"{name} must be in [0, 1), got {value}")


def _f(default: Any, help: str) -> Any:
    """A config field with its default and its one-line meaning (``seq2seq config --describe``, the help of the
    command-line flags that set it)."""
    return dataclasses.field(default=default, metadata={"help": help})


class _JsonConfig:
    """JSON round trip shared by every config dataclass."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}{did_you_mean(unknown[0], known)}; known "
                              f"fields are {sorted(known)}")
        hints = get_type_hints(cls)
        converted = {}
        for name, value in values.items():
            if isinstance(value, list) and "tuple" in str(hints[name]):
                value = tuple(value)
            converted[name] = value
        return cls(**converted)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


@dataclasses.dataclass(frozen=True)
class ModelConfig(_JsonConfig):
    """The encoder-attention-decoder of docs/model.md (defaults: a small model, right for the built-in demo).

    Vocabulary sizes of 0 mean "not resolved yet" (they come from the tokenizer); a model can only be
    built from a config whose sizes are positive (see ``require_resolved``).
    """

    src_vocab_size: int = _f(0, "source vocabulary size (0: taken from the tokenizer, which is how a config leaves it)")
    tgt_vocab_size: int = _f(0, "target vocabulary size (0: taken from the tokenizer)")
    src_embed_size: int = _f(32, "width of the source token embeddings")
    tgt_embed_size: int = _f(32, "width of the target token embeddings")
    enc_layers: int = _f(1, "number of stacked encoder LSTM layers")
    enc_hidden_size: int = _f(64, "hidden units of each encoder LSTM direction")
    bidirectional: bool = _f(True, "encoder reads the source both ways (memory width 2 x enc_hidden_size)")
    dec_layers: int = _f(1, "number of stacked decoder LSTM layers")
    dec_hidden_size: int = _f(128, "hidden units of each decoder LSTM layer")
    attention: str = _f("additive", "attention score: additive (Bahdanau MLP), dot or general (Luong bilinear)")
    attention_size: int = _f(64, "hidden width of the additive attention's MLP (unused by dot and general)")
    decoder_style: str = _f("bahdanau", "bahdanau (attend before the step) or luong (attend after it, with input "
                                        "feeding)")
    bridge: str = _f("dense", "decoder initial state from the encoder: zero, last (copy per layer) or dense "
                              "(projected)")
    readout_size: int = _f(64, "width of the attentional readout vector r_t that feeds the output layer")
    tie_output_embedding: bool = _f(False, "share the output projection with the target embeddings (needs readout_size "
                                           "== tgt_embed_size)")
    tie_src_tgt_embedding: bool = _f(False, "one embedding matrix for source and target (needs data.joint_vocab and "
                                            "src_embed_size == tgt_embed_size)")
    copy_attention: bool = _f(False, "pointer-generator: mix copying source tokens into the output (needs "
                                     "data.joint_vocab)")
    coverage_attention: bool = _f(False, "the additive score also reads the sum of past attention weights (coverage; "
                                         "needs attention additive)")
    embed_dropout: float = _f(0.0, "dropout rate on source and target embeddings")
    rnn_dropout: float = _f(0.0, "dropout rate between stacked LSTM layers")
    readout_dropout: float = _f(0.0, "dropout rate on the readout vector r_t")
    param_dtype: str = _f("float32", "dtype of the parameters (and the optimizer state): float32, float64, bfloat16 or "
                                     "float16")
    compute_dtype: str = _f("float32", "dtype of the matmuls (bfloat16: mixed precision; softmax and loss stay "
                                       "float32)")
    init_scale: float = _f(0.1, "parameters are initialised uniformly in [-init_scale, init_scale]")

    def __post_init__(self):
        for name in ("src_embed_size", "tgt_embed_size", "enc_layers", "enc_hidden_size", "dec_layers",
                     "dec_hidden_size", "attention_size", "readout_size"):
            _check(getattr(self, name) > 0, f"model.{name} must be positive, got {getattr(self, name)}")
        for name in ("src_vocab_size", "tgt_vocab_size"):
            _check(getattr(self, name) >= 0, f"model.{name} must be >= 0, got {getattr(self, name)}")
        _check(self.attention in ATTENTION_SCORES,
               f"model.attention must be one of {ATTENTION_SCORES}, got {self.attention!r}")
        _check(self.decoder_style in DECODER_STYLES,
               f"model.decoder_style must be one of {DECODER_STYLES}, got {self.decoder_style!r}")
        _check(self.bridge in BRIDGES, f"model.bridge must be one of {BRIDGES}, got {self.bridge!r}")
        _check(self.param_dtype in DTYPES, f"model.param_dtype must be one of {DTYPES}")
        _check(self.compute_dtype in DTYPES, f"model.compute_dtype must be one of {DTYPES}")
        for name in ("embed_dropout", "rnn_dropout", "readout_dropout"):
            _check_rate(f"model.{name}", getattr(self, name))
        _check(self.init_scale > 0, "model.init_scale must be positive")
        if self.attention == "dot":
            _check(self.dec_hidden_size == self.memory_size,
                   f"attention 'dot' needs dec_hidden_size == memory size (enc_hidden_size x directions = "
                   f"{self.memory_size}), got dec_hidden_size={self.dec_hidden_size}; use 'general' or 'additive'")
        if self.bridge == "last":
            _check(self.enc_layers == self.dec_layers,
                   f"bridge 'last' needs enc_layers == dec_layers, got {self.enc_layers} and {self.dec_layers}")
            _check(self.dec_hidden_size == self.memory_size,
                   f"bridge 'last' needs dec_hidden_size == enc_hidden_size x directions = {self.memory_size}, "
                   f"got dec_hidden_size={self.dec_hidden_size}; use bridge 'dense' or 'zero'")
        if self.tie_output_embedding:
            _check(self.readout_size == self.tgt_embed_size,
                   f"tie_output_embedding needs readout_size == tgt_embed_size, got {self.readout_size} "
                   f"and {self.tgt_embed_size}")
        if self.tie_src_tgt_embedding:
            _check(self.src_embed_size == self.tgt_embed_size, f"tie_src_tgt_embedding needs src_embed_size == "
                   f"tgt_embed_size, got {self.src_embed_size} and {self.tgt_embed_size}")
            _check(not (self.src_vocab_size and self.tgt_vocab_size) or self.src_vocab_size == self.tgt_vocab_size,
                   f"tie_src_tgt_embedding shares the embedding of one (joint, data.joint_vocab) vocabulary; got "
                   f"src_vocab_size={self.src_vocab_size}, tgt_vocab_size={self.tgt_vocab_size}")
        if self.coverage_attention:
            _check(self.attention == "additive", f"model.coverage_attention adds a term to the additive score; "
                   f"it needs attention 'additive', got {self.attention!r}")
        if self.copy_attention and self.src_vocab_size and self.tgt_vocab_size:
            _check(self.src_vocab_size == self.tgt_vocab_size,
                   f"copy_attention copies source ids into the target vocabulary, so both must be one (joint) "
                   f"vocabulary; got src_vocab_size={self.src_vocab_size}, tgt_vocab_size={self.tgt_vocab_size}")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def memory_size(self) -> int:
        """Width of the encoder memory M_j: enc_hidden_size times the number of directions."""
        return self.enc_hidden_size * self.num_directions

    def require_resolved(self) -> ModelConfig:
        _check(self.src_vocab_size > 0 and self.tgt_vocab_size > 0,
               "model vocabulary sizes are not resolved (0); build the tokenizers first "
               f"(src_vocab_size={self.src_vocab_size}, tgt_vocab_size={self.tgt_vocab_size})")
        return self


@dataclasses.dataclass(frozen=True)
class DataConfig(_JsonConfig):
    """Where the parallel text comes from and how it becomes batches.

    ``user_symbols``: strings a sentencepiece tokenizer keeps as single pieces, with or without the word
    boundary before them (speaker tags such as ``#Person1#``). ``src_spm_model`` / ``tgt_spm_model``: an
    existing sentencepiece ``.model`` for that side instead of training one (its pieces renumbered to this
    toolkit's special ids; the workdir keeps its own copy; with ``joint_vocab`` one model serves both sides).
    ``tgt_bucket_width``: the padding multiple of target lengths when it should differ from the source's
    ``bucket_width`` (0: the same).

    ``max_tokens``: a token budget for training and validation batches instead of ``batch_size`` rows (0: off).
    Each batch holds one (source bucket, target bucket) of padded lengths ``(S, T)`` and the largest multiple
    of the mesh's data-axis size of rows with ``rows * max(S, T) <= max_tokens``, so long sentences come in
    fewer rows and short ones in more; the shapes are known before training (``data.batch_shapes``).

    ``preprocessed_dir``: train from this directory of ``seq2seq preprocess`` (``train --data``) instead of
    preprocessing the files or task above into the workdir. ``tokenizer_sample_size``: the tokenizers are
    trained on a reservoir sample of at most this many training pairs (all of them when there are fewer).
    """

    task: str = _f("dates", "built-in generated task when no files are given: dates, numbers or reverse")
    task_train_size: int = _f(20000, "training pairs generated for the built-in task")
    task_valid_size: int = _f(500, "validation pairs generated for the built-in task")
    task_seed: int = _f(1234, "seed of the built-in task's generator")
    train_src: str = _f("", "training source file, one sentence per line (with train_tgt)")
    train_tgt: str = _f("", "training target file, line-aligned with train_src")
    train_tsv: str = _f("", "training pairs as one tab-separated file (source<TAB>target) instead of "
                            "train_src/train_tgt")
    valid_src: str = _f("", "validation source file, one sentence per line (with valid_tgt)")
    valid_tgt: str = _f("", "validation target file, line-aligned with valid_src")
    valid_tsv: str = _f("", "validation pairs as one tab-separated file instead of valid_src/valid_tgt")
    tokenizer: str = _f("char", "char, word, unigram (sentencepiece) or bpe (sentencepiece)")
    vocab_size: int = _f(8000, "sentencepiece vocabulary size per side (joint: of the shared one)")
    min_freq: int = _f(1, "char/word tokenizers: least count for a token to get its own id")
    max_vocab_size: int = _f(50000, "char/word tokenizers: most ids per side (the most frequent tokens)")
    joint_vocab: bool = _f(False, "one tokenizer and vocabulary shared by source and target")
    character_coverage: float = _f(1.0, "sentencepiece character_coverage (1.0 for small alphabets, 0.9995 for CJK)")
    user_symbols: tuple[str, ...] = _f((), "strings a sentencepiece tokenizer keeps as single pieces (comma-separated "
                                           "with --set)")
    src_spm_model: str = _f("", "an existing sentencepiece .model for the source side instead of training one")
    tgt_spm_model: str = _f("", "an existing sentencepiece .model for the target side instead of training one")
    max_src_len: int = _f(100, "longest source in tokens; longer pairs are dropped or cropped (long_pair_policy)")
    max_tgt_len: int = _f(100, "longest target in tokens; longer pairs are dropped or cropped (long_pair_policy)")
    long_pair_policy: str = _f("drop", "what happens to a training pair over max_src_len/max_tgt_len: drop or crop")
    encoding_errors: str = _f("strict", "invalid UTF-8 in a data file: strict (an error naming file and line) or "
                                        "replace")
    batch_size: int = _f(64, "sentence pairs per training batch (the global batch, over all devices)")
    bucket_width: int = _f(8, "sources (and targets) are padded to a multiple of this many tokens")
    tgt_bucket_width: int = _f(0, "padding multiple of target lengths when it differs from bucket_width (0: the same)")
    max_tokens: int = _f(0, "token budget per batch instead of batch_size rows (0: off)")
    seed: int = _f(0, "seed of the data order (shuffling and batch order)")
    preprocessed_dir: str = _f("", "train from this seq2seq preprocess directory (train --data) instead of the files "
                                   "above")
    tokenizer_sample_size: int = _f(1_000_000, "tokenizers are trained on a reservoir sample of at most this many "
                                               "pairs")
    corpora: tuple[CorpusSpec, ...] = _f((), "several corpora instead of train_src/valid_src, each with its tgt_lang "
                                           "(docs/multilingual.md)")
    sampling_temperature: float = _f(1.0, "corpora are drawn at rates p_i ~ n_i ** (1 / T): 1 proportional, large T "
                                          "uniform")
    tag_position: str = _f("first", "where a corpus's language tag goes in its sources: first, or last (before the "
                                    "EOS)")
    subword_alpha: float = _f(0.0, "subword sampling of training pairs each epoch (unigram: smoothing alpha; bpe: "
                                   "dropout rate); 0: off")
    subword_nbest_size: int = _f(-1, "unigram subword sampling draws from the n best segmentations (-1: all; at "
                                     "most 512)")

    def __post_init__(self):
        self._check_corpora()
        _check(self.tokenizer in ("char", "word", "unigram", "bpe"),
               f"data.tokenizer must be one of char, word, unigram, bpe; got {self.tokenizer!r}")
        _check(self.long_pair_policy in ("drop", "crop"),
               f"data.long_pair_policy must be 'drop' or 'crop', got {self.long_pair_policy!r}")
        _check(self.encoding_errors in ("strict", "replace"),
               f"data.encoding_errors must be 'strict' or 'replace', got {self.encoding_errors!r}")
        for name in ("batch_size", "bucket_width", "max_src_len", "max_tgt_len", "vocab_size", "min_freq",
                     "max_vocab_size", "tokenizer_sample_size"):
            _check(getattr(self, name) > 0, f"data.{name} must be positive, got {getattr(self, name)}")
        _check(self.max_tokens >= 0, f"data.max_tokens must be >= 0 (0: batches of batch_size rows), "
               f"got {self.max_tokens}")
        _check(self.tgt_bucket_width >= 0,
               f"data.tgt_bucket_width must be positive (or 0: bucket_width), got {self.tgt_bucket_width}")
        _check(0 <= self.subword_alpha <= 1, f"data.subword_alpha must be in [0, 1] (0: off), got {self.subword_alpha}")
        _check(not self.subword_alpha or self.tokenizer in ("unigram", "bpe"),
               f"data.subword_alpha samples sentencepiece segmentations: needs data.tokenizer unigram or bpe, not "
               f"{self.tokenizer!r}")
        _check(self.subword_nbest_size == -1 or 1 < self.subword_nbest_size <= MAX_NBEST_SIZE,
               f"data.subword_nbest_size must be -1 (every segmentation) or from 2 to {MAX_NBEST_SIZE} "
               f"(sentencepiece's n-best limit), got {self.subword_nbest_size}")
        if self.user_symbols:
            _check(self.tokenizer in ("unigram", "bpe"),
                   f"data.user_symbols needs a sentencepiece tokenizer (unigram or bpe), not {self.tokenizer!r}")
            for symbol in self.user_symbols:
                _check(bool(symbol) and not any(ch.isspace() for ch in symbol),
                       f"data.user_symbols must be non-empty and without whitespace, got {symbol!r}")
        _check(not (self.joint_vocab and self.src_spm_model and self.tgt_spm_model
                    and self.src_spm_model != self.tgt_spm_model),
               "data.joint_vocab shares one tokenizer: give one sentencepiece model, not "
               f"{self.src_spm_model} and {self.tgt_spm_model}")
        _check(bool(self.train_src) == bool(self.train_tgt),
               "data.train_src and data.train_tgt must be given together")
        _check(bool(self.valid_src) == bool(self.valid_tgt),
               "data.valid_src and data.valid_tgt must be given together")

    def _check_corpora(self) -> None:
        try:
            object.__setattr__(self, "corpora", tuple(CorpusSpec.from_value(value, position)
                                                      for position, value in enumerate(self.corpora)))
            check_corpora(self.corpora)
        except CorpusError as error:
            raise ConfigError(str(error)) from None
        _check(self.sampling_temperature > 0, f"data.sampling_temperature must be positive, got "
               f"{self.sampling_temperature}")
        _check(self.tag_position in TAG_POSITIONS,
               f"data.tag_position must be 'first' or 'last', got {self.tag_position!r}")
        given = [name for name in ("train_src", "train_tsv", "valid_src", "valid_tsv") if getattr(self, name)]
        _check(not (self.corpora and given), f"data.corpora replaces data.{given[0] if given else ''}: give the "
               "files in the corpora list (each corpus its own valid_src/valid_tgt)")

    @property
    def uses_files(self) -> bool:
        return bool(self.train_src or self.train_tsv or self.corpora)

    @property
    def languages(self) -> dict[str, str]:
        """``{target language: tag}`` of ``corpora`` ({} for a run without language tags)."""
        from seq2seq_jax.core.corpora import languages_of

        return languages_of(self.corpora)

    @property
    def bucket_widths(self) -> tuple[int, int]:
        """``(source, target)`` padding multiples of training and validation batches."""
        return self.bucket_width, self.tgt_bucket_width or self.bucket_width


@dataclasses.dataclass(frozen=True)
class TrainConfig(_JsonConfig):
    """Optimizer, schedule, loop length, validation, checkpointing and the NaN guard.

    ``grad_accum_steps``: batches per update (1: one). With k > 1 a step takes k batches and applies one update
    with the gradient of the mean token loss over all their tokens, as one batch k times larger would; steps
    (``max_steps``, the schedule, logging, validation and checkpoints) count updates.
    """

    optimizer: str = _f("adam", "adam or adamw (decoupled weight decay)")
    learning_rate: float = _f(3e-3, "peak learning rate of the schedule")
    adam_b1: float = _f(0.9, "Adam's beta1")
    adam_b2: float = _f(0.999, "Adam's beta2")
    adam_eps: float = _f(1e-8, "Adam's epsilon")
    weight_decay: float = _f(0.0, "adamw's decoupled weight decay (0: none)")
    schedule: str = _f("inverse_sqrt", "learning-rate schedule after warm-up: constant, inverse_sqrt, cosine or linear "
                                       "(decay to 0)")
    warmup_steps: int = _f(100, "steps of linear warm-up from 0 to learning_rate")
    max_grad_norm: float = _f(1.0, "clip the global gradient norm to this (0: no clipping)")
    label_smoothing: float = _f(0.0, "label smoothing epsilon of the cross-entropy loss")
    coverage_loss_weight: float = _f(0.0, "weight of the coverage loss, sum_j min(attention_j, coverage_j) per target "
                                          "token (needs coverage_attention)")
    max_steps: int = _f(1000, "updates to train for")
    log_every: int = _f(50, "log the training loss and speed every this many steps")
    eval_every: int = _f(250, "validate every this many steps")
    save_every: int = _f(250, "save a checkpoint every this many steps")
    keep_checkpoints: int = _f(3, "newest checkpoints kept (besides the best); seq2seq average can average them")
    best_metric: str = _f("valid_loss", "what picks the best checkpoint: valid_loss, valid_bleu or valid_exact_match")
    patience: int = _f(0, "stop after this many validations without a better best_metric (0: never)")
    max_nonfinite_steps: int = _f(5, "stop after this many consecutive steps with a non-finite loss or gradient")
    grad_accum_steps: int = _f(1, "batches per update: the gradient of k batches as one batch k times larger")
    valid_sample_size: int = _f(200, "validation sentences decoded (greedy) for valid_bleu and valid_exact_match")
    seed: int = _f(0, "seed of parameter initialisation and dropout")

    def __post_init__(self):
        _check(self.optimizer in ("adam", "adamw"), f"train.optimizer must be adam or adamw, got {self.optimizer!r}")
        _check(self.schedule in ("constant", "inverse_sqrt", "cosine", "linear"),
               f"train.schedule must be constant, inverse_sqrt, cosine or linear; got {self.schedule!r}")
        _check(self.learning_rate > 0, "train.learning_rate must be positive")
        _check(self.max_steps > 0, "train.max_steps must be positive")
        _check(self.warmup_steps >= 0, "train.warmup_steps must be >= 0")
        _check(self.max_grad_norm >= 0, "train.max_grad_norm must be >= 0 (0 disables clipping)")
        _check_rate("train.label_smoothing", self.label_smoothing)
        _check(self.coverage_loss_weight >= 0, "train.coverage_loss_weight must be >= 0 (0: off)")
        for name in ("log_every", "eval_every", "save_every", "keep_checkpoints", "max_nonfinite_steps",
                     "grad_accum_steps"):
            _check(getattr(self, name) > 0, f"train.{name} must be positive")
        _check(self.best_metric in ("valid_loss", "valid_bleu", "valid_exact_match"),
               f"train.best_metric must be valid_loss, valid_bleu or valid_exact_match; got {self.best_metric!r}")
        _check(self.patience >= 0, "train.patience must be >= 0 (0 disables early stopping)")

    @property
    def best_mode(self) -> str:
        return "min" if self.best_metric == "valid_loss" else "max"


@dataclasses.dataclass(frozen=True)
class DecodeConfig(_JsonConfig):
    """Search settings: beam search (K=1 is greedy) or sampling."""

    beam_size: int = _f(1, "beam width (1: greedy search)")
    length_penalty: float = _f(0.0, "alpha of the GNMT length penalty ((5 + len) / 6) ** alpha (0: none)")
    n_best: int = _f(1, "hypotheses output per sentence, best first (at most beam_size)")
    min_len: int = _f(0, "EOS is not allowed before this many target tokens")
    max_len_a: float = _f(1.5, "output limit: at most max_len_a * source tokens + max_len_b tokens")
    max_len_b: float = _f(10.0, "output limit: at most max_len_a * source tokens + max_len_b tokens")
    no_repeat_ngram_size: int = _f(0, "no n-gram of this size appears twice in a hypothesis (0: off)")
    sample: bool = _f(False, "sample instead of beam search (one sample per sentence)")
    temperature: float = _f(1.0, "sampling: divide the logits by this")
    top_k: int = _f(0, "sampling: only the k most probable tokens (0: all)")
    top_p: float = _f(1.0, "sampling: only the smallest set of tokens holding this probability (nucleus; 1: all)")
    seed: int = _f(0, "sampling: random seed")
    batch_size: int = _f(64, "sentences per search (a batch of source lines, not tokens)")
    banned_ids: tuple[int, ...] = _f((), "target ids the search never outputs (the workdir's language tags add theirs)")

    def __post_init__(self):
        _check(self.beam_size >= 1, "decode.beam_size must be >= 1")
        _check(1 <= self.n_best <= self.beam_size,
               f"decode.n_best must be between 1 and beam_size={self.beam_size}, got {self.n_best}")
        _check(self.min_len >= 0, "decode.min_len must be >= 0")
        _check(self.max_len_a >= 0 and self.max_len_b >= 0, "decode.max_len_a and max_len_b must be >= 0")
        _check(self.no_repeat_ngram_size >= 0, "decode.no_repeat_ngram_size must be >= 0")
        _check(self.temperature > 0, "decode.temperature must be positive")
        _check(self.top_k >= 0, "decode.top_k must be >= 0 (0 disables)")
        _check(0.0 < self.top_p <= 1.0, "decode.top_p must be in (0, 1]")
        _check(self.batch_size >= 1, "decode.batch_size must be >= 1")
        _check(all(isinstance(i, int) and i > 3 for i in self.banned_ids), "decode.banned_ids must be ids above "
               f"the 4 special ids, got {self.banned_ids}")

    def max_len(self, src_len: int) -> int:
        """Largest number of generated tokens (EOS included) for a source of ``src_len`` tokens."""
        return max_len_for(src_len, self.max_len_a, self.max_len_b)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "decode": DecodeConfig}


def preset_values(name: str) -> dict[str, dict[str, Any]]:
    """The sections of preset ``name`` (``core/presets.py``); an unknown name is an error listing them."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}{did_you_mean(name, PRESETS)}; presets are "
                          f"{', '.join(PRESETS)}")
    return preset_sections(name)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig(_JsonConfig):
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)

    def __post_init__(self):
        _check(not self.model.copy_attention or self.data.joint_vocab,
               "model.copy_attention needs data.joint_vocab: copying puts a source token's id into the target "
               "distribution, so source and target must share one vocabulary")
        _check(not self.model.tie_src_tgt_embedding or self.data.joint_vocab,
               "model.tie_src_tgt_embedding needs data.joint_vocab=true: one embedding row per token id serves "
               "both sides only when source and target share one vocabulary")
        _check(not self.train.coverage_loss_weight or self.model.coverage_attention,
               "train.coverage_loss_weight needs model.coverage_attention=true: the loss penalises attending again "
               "where the coverage the score reads is already high")

    @classmethod
    def from_dict(cls, values: dict[str, Any], preset: str | None = None) -> ExperimentConfig:
        """The config of ``values`` (sections of fields) over the defaults, or over ``preset``'s fields when
        given; ``values`` may name its own preset (``"preset": NAME``), which must then be the same."""
        values = dict(values)
        named = values.pop("preset", None)
        if named is not None and preset is not None and named != preset:
            raise ConfigError(f"preset {preset!r} was asked for, but the config names preset {named!r}")
        preset = preset if preset is not None else named
        unknown = sorted(set(values) - set(_SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}{did_you_mean(unknown[0], _SECTIONS)}; "
                              f"sections are {sorted(_SECTIONS)} (and \"preset\")")
        if preset is not None:
            values = merge_sections(preset_values(preset), values)
        return cls(**{name: section.from_dict(values.get(name, {})) for name, section in _SECTIONS.items()})

    @classmethod
    def from_preset(cls, name: str) -> ExperimentConfig:
        """The defaults with preset ``name``'s fields (``core/presets.py``)."""
        return cls.from_dict({}, preset=name)

    @classmethod
    def load(cls, path: str | Path, preset: str | None = None) -> ExperimentConfig:
        """The config file ``path`` (over ``preset``, or over the preset it names, when either is given)."""
        values = read_json(path, ConfigError)
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a JSON object of sections, got {type(values).__name__}")
        try:
            return cls.from_dict(values, preset)
        except (ConfigError, TypeError) as error:
            raise ConfigError(f"{path}: {error}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    def with_vocab_sizes(self, src_vocab_size: int, tgt_vocab_size: int) -> ExperimentConfig:
        """This config with the model's vocabulary sizes set (from the tokenizers, which the config leaves at 0)."""
        model = dataclasses.replace(self.model, src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size)
        return dataclasses.replace(self, model=model)

    def with_overrides(self, pairs: list[str]) -> ExperimentConfig:
        """Apply ``section.key=value`` strings (the command line's ``--set``); all changes to one section are
        applied together, so fields that must change together (train_src and train_tgt) can."""
        changes: dict[str, dict[str, Any]] = {}
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            section_name, dot, field_name = key.partition(".")
            if not sep or not dot:
                raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {pair!r}")
            if section_name not in _SECTIONS:
                raise ConfigError(f"--set {key}: unknown section {section_name!r}"
                                  f"{did_you_mean(section_name, _SECTIONS)}; sections are {sorted(_SECTIONS)}")
            hints = {f.name: f.type for f in dataclasses.fields(_SECTIONS[section_name])}
            if field_name not in hints:
                match = closest(field_name, hints)  # this section's field, else one of another section
                elsewhere = [name for name, section in _SECTIONS.items()
                             if field_name in {f.name for f in dataclasses.fields(section)}]
                meant = (f"{section_name}.{match}" if match else f"{elsewhere[0]}.{field_name}" if elsewhere
                         else None)
                hint = f" (did you mean {meant!r}?)" if meant else ""
                raise ConfigError(f"--set {key}: unknown field{hint}; {section_name} has {sorted(hints)}")
            changes.setdefault(section_name, {})[field_name] = parse_value(raw, str(hints[field_name]), key)
        return dataclasses.replace(self, **{name: dataclasses.replace(getattr(self, name), **fields)
                                            for name, fields in changes.items()})
