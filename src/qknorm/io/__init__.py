"""Files on disk: model directories, training checkpoints, and the careful reading and writing under both.

  names.py        the names of the files qknorm reads and writes (config.json, model.safetensors, run.json, ...)
  files.py        atomic writes, fsync, JSON and safetensors reading with errors that name the file, paths kept
                  inside the directory given
  safe_pickle.py  the one allow-list unpickler (DCP .metadata) and weights-only torch.load
  dcp_reader.py   torch.distributed.checkpoint folders (ours and OLMo-core's) read through it
  model_dir.py    our model directories: save_model / load_model (also any training checkpoint or run)
  checkpoints/    crash-safe full and sharded training checkpoints: their layout, formats and verification

Reading any other model format (Hugging Face, OLMo-core) is interop/; opening a model from any source is
pretrained.py. This package imports neither, nor training.
"""
