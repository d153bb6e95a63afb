"""Data: sources in the original formats, LAVIS processors, tokenisation, grain pipelines."""
