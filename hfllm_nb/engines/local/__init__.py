"""The in-process engine: a transformers model on this machine, every torch op on one model thread."""
