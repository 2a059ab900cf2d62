"""Helpers the tests and bench/ share, kept out of the greenmon package (and its wheel):
``synthetic`` (experiments with known truth) and ``plans`` (plan TOML for the fake engine).
bench/ scripts import them as ``tests.support.*`` with the repository on sys.path
(bench/_common.py puts it there)."""
