"""The special token ids every tokenizer, batch, search and model shares (pad, unknown, begin, end)."""

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
SPECIAL_PIECES = ("<pad>", "<unk>", "<s>", "</s>")  # the pieces of ids 0..3, in order

__all__ = ["PAD_ID", "UNK_ID", "BOS_ID", "EOS_ID", "SPECIAL_PIECES"]
