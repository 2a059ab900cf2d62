"""Analysis: tables, statistical tests, plots and reports over per-unit results."""
