"""``seq2seq serve``: request schema and limits (``schema``), the batching policy (``policy``), the compiled
programs and warm-up plan (``programs``), the batching decoder (``decoder``), error handling (``middleware``),
the FastAPI app (``app``), its page (``page``) and the process (``server``). Stands on ``core`` and
``decoding``; the command line loads the model and hands it over."""
