"""lm: LSTM language models on PTB, and their compression with ttlayers."""
