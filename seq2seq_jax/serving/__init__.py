"""``seq2seq serve``: request limits, the batching decoder, the FastAPI app and its page. Stands on ``core``
and ``decoding``; the command line loads the model and hands it over."""
