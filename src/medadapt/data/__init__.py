"""Data sets, few-shot protocol and class texts."""
