"""Data layer: read, validate, encode, fold-split and convert exposure rows to numeric blocks."""
