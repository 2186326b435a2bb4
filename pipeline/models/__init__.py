"""Model families and named sizes. `sizes` is plain Python (the config validates shapes with it without
importing torch); `hf` builds the Hugging Face models."""
