"""Evaluation: perplexity, lm-eval bridge, reports."""
