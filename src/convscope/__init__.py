"""convscope: reproducible reports that explain CNN image classifiers."""

__version__ = "0.1.0"
