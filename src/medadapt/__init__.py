"""medadapt: adapt medical vision-language models with few labels.

Layers (data flows downward only): cli -> engine -> methods -> backbones / data -> metrics.
"""
__version__ = "0.1.0"
