"""Evaluation: suites as YAML, the lm_eval command builder, the runner and the results parser."""
