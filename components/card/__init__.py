"""The model card (README.md) in the seed cards' layout."""
