"""Model families and named sizes. `shape`, `family`, `families` and `sizes` are plain Python (the
config validates shapes with them without importing torch); `hf` builds the Hugging Face models."""
