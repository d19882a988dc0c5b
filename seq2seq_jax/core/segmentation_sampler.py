"""Random segmentations of a text under a sentencepiece model, drawn from a numpy generator.

sentencepiece samples from one generator per thread, seeded once when the thread first samples, so its draws
cannot be replayed pair by pair, and they differ from process to process. This module draws the same
segmentations sentencepiece would, with the model's own pieces and scores, from a ``numpy.random.Generator``
the caller seeds: the draws are a function of the text, the model and the generator's state alone.

- **Unigram, whole lattice** (``nbest_size`` -1; Kudo 2018): the lattice of every vocabulary piece over the
  normalized text (unknown characters as UNK nodes scored ``min_score - 10``, unused pieces left out, as
  sentencepiece builds it; user-defined symbols with the bonus score the installed sentencepiece gives them,
  read from it, since its versions differ), then forward filtering with scores times ``alpha`` and backward
  sampling: a segmentation ``x`` is drawn with probability ``exp(alpha * score(x)) / Z``.
- **Unigram, n best** (``nbest_size`` > 1): sentencepiece's deterministic n-best list with its scores, one of
  them drawn with probability proportional to ``exp(alpha * score)``.
- **BPE-dropout** (Provilkov et al. 2020): sentencepiece's BPE merge loop (best-scoring adjacent pair first,
  leftmost on ties; user-defined symbols never merged), each merge skipped with probability ``alpha``; at
  ``alpha`` 0 it is the model's deterministic segmentation.

Unknown characters become their UTF-8 byte pieces with byte fallback, else one UNK per run of them, as in
sentencepiece. Numpy, sentencepiece and its model's protobuf (``sentencepiece_model_pb2``) only.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import sentencepiece

UNK_PENALTY = 10.0  # sentencepiece's kUnkPenalty: an unknown character scores the lowest piece minus this
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # ModelProto.SentencePiece.Type
UNIGRAM, BPE = 1, 2  # TrainerSpec.ModelType


class SegmentationSampler:
    """``draw(text, alpha, nbest_size, rng) -> ids``: one random segmentation of ``text`` (no BOS/EOS) under
    the sentencepiece model ``model_proto`` (unigram or BPE)."""

    def __init__(self, model_proto: bytes):
        from sentencepiece import sentencepiece_model_pb2

        model = sentencepiece_model_pb2.ModelProto.FromString(model_proto)
        if model.trainer_spec.model_type not in (UNIGRAM, BPE):
            raise ValueError(f"subword sampling needs a unigram or BPE sentencepiece model, not model type "
                             f"{model.trainer_spec.model_type}")
        self.is_unigram = model.trainer_spec.model_type == UNIGRAM
        self._processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        self._byte_fallback = model.trainer_spec.byte_fallback
        self._unk_id = self._processor.unk_id()
        self._ids: dict[str, int] = {}  # the pieces text can be segmented into: normal, user-defined, unused
        self._user_defined: set[int] = set()
        self._unused: set[int] = set()
        self._scores = [piece.score for piece in model.pieces]
        self._min_score = min((piece.score for piece in model.pieces if piece.type == NORMAL), default=0.0)
        self._byte_ids = {}
        for piece_id, piece in enumerate(model.pieces):
            if piece.type in (NORMAL, USER_DEFINED, UNUSED):
                self._ids.setdefault(piece.piece, piece_id)
            if piece.type == USER_DEFINED:
                self._user_defined.add(piece_id)
            elif piece.type == UNUSED:
                self._unused.add(piece_id)
            elif piece.type == BYTE:
                self._byte_ids[int(piece.piece[3:5], 16)] = piece_id
        symbol_scores = _user_symbol_scores(model) if self.is_unigram else {}
        # character -> [children, piece id, lattice score]: the id -1 where no piece ends or an unused one does
        self._trie: dict = {}
        for piece, piece_id in self._ids.items():
            node = self._trie
            for position, character in enumerate(piece):
                entry = node.setdefault(character, [{}, -1, 0.0])
                if position == len(piece) - 1 and piece_id not in self._unused:
                    entry[1] = piece_id
                    entry[2] = symbol_scores.get(piece_id, self._scores[piece_id])
                node = entry[0]
        symbols = [piece for piece, piece_id in self._ids.items() if piece_id in self._user_defined]
        self._longest_symbol = max(map(len, symbols), default=0)
        self._symbol_starts = {symbol[0] for symbol in symbols}

    def draw(self, text: str, alpha: float, nbest_size: int, rng: np.random.Generator) -> list[int]:
        """One segmentation of ``text``: unigram from the whole lattice (``nbest_size`` < 0) or the
        ``nbest_size`` best with smoothing ``alpha``, the deterministic one at ``nbest_size`` 0 or 1; BPE with
        each merge dropped with probability ``alpha`` (``nbest_size`` unused)."""
        if self.is_unigram and nbest_size in (0, 1):
            return self._processor.encode(text, out_type=int)
        if self.is_unigram and nbest_size > 1:
            return self._draw_from_nbest(text, alpha, nbest_size, rng)
        normalized = self._processor.normalize(text)
        if not normalized:
            return []
        pieces = self._lattice_sample(normalized, alpha, rng) if self.is_unigram else \
            self._bpe_dropout(normalized, alpha, rng)
        return self._ids_of(pieces)

    def _draw_from_nbest(self, text: str, alpha: float, nbest_size: int, rng: np.random.Generator) -> list[int]:
        nbests = self._processor.nbest_encode_as_proto(text, nbest_size=nbest_size).nbests
        if not nbests:
            return []
        log_weights = np.array([alpha * nbest.score for nbest in nbests], dtype=np.float64)
        weights = np.exp(log_weights - log_weights.max())
        chosen = nbests[_index_by_weight(weights.tolist(), rng.random())]
        return [piece.id for piece in chosen.pieces]

    def _lattice_sample(self, normalized: str, alpha: float, rng: np.random.Generator) -> list[tuple[str, int]]:
        """Forward filtering, backward sampling over the lattice of ``normalized`` (characters as positions)."""
        length = len(normalized)
        unk_score = self._min_score - UNK_PENALTY
        ending: list[list[tuple[int, int, float]]] = [[] for _ in range(length + 1)]  # (begin, id, score)
        for begin in range(length):
            node, end, has_single = self._trie, begin, False
            while end < length:
                entry = node.get(normalized[end])
                if entry is None:
                    break
                node, piece_id, score = entry
                end += 1
                if piece_id >= 0:
                    ending[end].append((begin, piece_id, alpha * score))
                    has_single = has_single or end == begin + 1
            if not has_single:
                ending[begin + 1].append((begin, self._unk_id, alpha * unk_score))
        forward = [0.0] * (length + 1)
        for end in range(1, length + 1):
            terms = [forward[begin] + score for begin, _, score in ending[end]]
            top = max(terms)
            forward[end] = top + math.log(sum([math.exp(term - top) for term in terms]))
        pieces: list[tuple[str, int]] = []
        uniforms = rng.random(length).tolist()  # at most one draw per character: the walk takes a piece each
        end = length
        while end > 0:
            candidates = ending[end]
            weights = [math.exp(forward[begin] + score - forward[end]) for begin, _, score in candidates]
            begin, piece_id, _ = candidates[_index_by_weight(weights, uniforms.pop())]
            pieces.append((normalized[begin:end], piece_id))
            end = begin
        pieces.reverse()
        return pieces

    def _bpe_dropout(self, normalized: str, alpha: float, rng: np.random.Generator) -> list[tuple[str, int]]:
        """sentencepiece's BPE merge loop with each merge skipped with probability ``alpha``."""
        symbols: list[str] = []
        frozen: list[bool] = []
        position = 0
        while position < len(normalized):
            width = self._user_symbol_at(normalized, position)
            symbols.append(normalized[position: position + (width or 1)])
            frozen.append(bool(width))
            position += width or 1
        previous = list(range(-1, len(symbols) - 1))
        following = list(range(1, len(symbols))) + [-1]
        unmerge: dict[str, tuple[str, str]] = {}
        agenda: list[tuple[float, int, int, int]] = []  # (-score, left, right, length of the merged piece)

        def consider(left: int, right: int) -> None:
            if left == -1 or right == -1 or frozen[left] or frozen[right]:
                return
            merged = symbols[left] + symbols[right]
            piece_id = self._ids.get(merged)
            if piece_id is None:
                return
            heapq.heappush(agenda, (-self._scores[piece_id], left, right, len(merged)))
            if piece_id in self._unused:
                unmerge[merged] = (symbols[left], symbols[right])

        for index in range(1, len(symbols)):
            consider(index - 1, index)
        uniforms: list[float] = []  # drawn a block at a time, used one per merge in the order of the merges
        while agenda:
            _, left, right, merged_length = heapq.heappop(agenda)
            if not symbols[left] or not symbols[right] or len(symbols[left]) + len(symbols[right]) != merged_length:
                continue  # one side has changed since this pair was considered
            if 0.0 < alpha < 1.0 and not uniforms:
                uniforms = rng.random(len(symbols)).tolist()
            if alpha >= 1.0 or (alpha > 0.0 and uniforms.pop() < alpha):
                continue
            symbols[left] += symbols[right]
            symbols[right] = ""
            following[left] = following[right]
            if following[right] >= 0:
                previous[following[right]] = left
            consider(previous[left], left)
            consider(left, following[left])
        pieces: list[tuple[str, int]] = []
        index = 0
        while index != -1:
            self._resegment(symbols[index], unmerge, pieces)
            index = following[index]
        return pieces

    def _user_symbol_at(self, text: str, position: int) -> int:
        """The length of the longest user-defined symbol starting at ``position`` (0: none)."""
        if text[position] not in self._symbol_starts:
            return 0
        node, best = self._trie, 0
        for end in range(position, min(len(text), position + self._longest_symbol)):
            entry = node.get(text[end])
            if entry is None:
                break
            node, piece_id, _ = entry
            if piece_id in self._user_defined:
                best = end + 1 - position
        return best

    def _resegment(self, piece: str, unmerge: dict[str, tuple[str, str]], out: list[tuple[str, int]]) -> None:
        """``piece`` with its id; an unused piece is split back into the two it was merged from."""
        piece_id = self._ids.get(piece, self._unk_id)
        if piece_id in self._unused and piece in unmerge:
            left, right = unmerge[piece]
            self._resegment(left, unmerge, out)
            self._resegment(right, unmerge, out)
        else:
            out.append((piece, piece_id))

    def _ids_of(self, pieces: list[tuple[str, int]]) -> list[int]:
        """Ids of the drawn pieces: an unknown one as its UTF-8 bytes (byte fallback) or one UNK per run."""
        ids: list[int] = []
        previous_unknown = False
        for piece, piece_id in pieces:
            unknown = piece_id == self._unk_id
            if unknown and self._byte_fallback:
                ids.extend(self._byte_ids[byte] for byte in piece.encode("utf-8"))
            elif not (unknown and previous_unknown):
                ids.append(piece_id)
            previous_unknown = unknown
        return ids


def _user_symbol_scores(model) -> dict[int, float]:
    """``{piece id: lattice score}`` of a unigram model's user-defined pieces, as the installed sentencepiece
    scores them (0.2.0: ``length * max(normal scores, FLT_MIN) - 0.1``; 0.2.3: ``0.1 * (length - 1)``): the
    score of the one-piece segmentation of each symbol's own text, in the n-best list of a copy of the model
    that adds no dummy prefix."""
    probe = type(model).FromString(model.SerializeToString())
    probe.normalizer_spec.add_dummy_prefix = False
    processor = sentencepiece.SentencePieceProcessor(model_proto=probe.SerializeToString())
    scores = {}
    for piece_id, piece in enumerate(model.pieces):
        if piece.type != USER_DEFINED:
            continue
        whole = [nbest.score for nbest in processor.nbest_encode_as_proto(piece.piece, nbest_size=16).nbests
                 if [p.id for p in nbest.pieces] == [piece_id]]
        if not whole:
            raise ValueError(f"cannot read sentencepiece's score of the user-defined piece {piece.piece!r}")
        scores[piece_id] = whole[0]
    return scores


def _index_by_weight(weights: list[float], uniform: float) -> int:
    """The index that ``uniform`` (drawn from [0, 1)) picks with probability proportional to ``weights``."""
    threshold = uniform * sum(weights)
    total = 0.0
    for index, weight in enumerate(weights):
        total += weight
        if threshold < total:
            return index
    return len(weights) - 1


__all__ = ["SegmentationSampler"]
