"""The GPU check: one command on a CUDA machine (check.sh), its sections, and the figures it publishes."""
