"""Evaluation: the language-model interface, tasks, scoring, summaries and effects."""
