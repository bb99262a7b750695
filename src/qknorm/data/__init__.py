"""Token data: where text and tokens come from, how they become a stream, and how a run draws its batches.

  sources.py      the files a data argument names (text, token files, the embedded corpus) and how they are read
  tokenizer.py    Hugging Face tokenizers (text -> ids), imported only when used
  tokens.py       load_tokens -> TokenData: the stream split into train and validation
  fingerprint.py  DataFingerprint: what identifies a stream (a run's record, a study's runs)
  batcher.py      Batcher: the (seed, step) -> global batch function, rank slices

Used by training, studies, retrofitting and the commands; it imports nothing of theirs.
"""
