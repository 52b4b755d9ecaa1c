"""Using a trained model: find and load it from a run or checkpoint (`load`), sample from it
(`generate`), and the one evaluation loop (`evaluate`: validation loss and bits per byte), which
training calls too. Below training: the checkpoint format it reads is superpose/checkpoint.py."""
