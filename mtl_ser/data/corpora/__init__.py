"""Corpus preparers: one module per corpus, all through `base.prepare_corpus`; the CLI reads
`registry.CORPORA`."""
