"""The toolkit's version (recorded in every saved model's metadata)."""

__version__ = "0.2.0"
