"""Training loops and the utilities they share (EMA, checkpoints, logs, guards)."""
