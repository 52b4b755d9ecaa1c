"""Using a trained model: find and load it from a run or checkpoint (`load`), sample from it
(`generate`), and score it (`evaluate`: validation loss and bits per byte, lm-eval tasks)."""
