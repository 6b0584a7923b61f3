"""Policies: rules that map a user's covariates to a segment or creative (assignment first)."""
