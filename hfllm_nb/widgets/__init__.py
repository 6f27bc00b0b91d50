"""The notebook widgets, the only modules that import ipywidgets: panels, explorer, memory readout."""
