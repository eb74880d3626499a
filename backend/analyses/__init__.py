"""Analyses of a model against a dataset: conditional probability plots of its units and
typographic attacks (what the workers publish, how pages and the API show it)."""
