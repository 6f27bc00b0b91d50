"""Look-inside computations, their results and static HTML: explain, logit lens, attention, the decoding lab.

No widgets here (those live in ``hfllm_nb.widgets``); each result draws itself as HTML.
"""
