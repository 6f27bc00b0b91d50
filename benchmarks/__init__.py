"""hfllm-nb's benchmark: ``python benchmarks/run.py [--quick] [--output FILE]``; one module per section."""
