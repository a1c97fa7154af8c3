"""Console entry points (installed as seq2seq-* commands; tools/ holds thin wrappers)."""
