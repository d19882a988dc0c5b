"""The model: LSTM layers and attention (``layers``), the encoder-decoder (``seq2seq``), and the name map
between its parameters and the PyTorch reference's state_dict (``convert``). Stands on ``core`` only."""
