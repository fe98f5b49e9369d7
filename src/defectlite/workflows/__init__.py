"""Workflows over a run folder that span the whole pipeline: pruning, comparisons, ensembles."""
