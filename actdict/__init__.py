"""actdict: sparse dictionaries of language-model activations (harvest -> train -> analyze)."""

__version__ = "0.1.0"
