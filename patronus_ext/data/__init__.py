"""Data: corpora and labelled tasks (:mod:`.corpora`, whose reading API is exported here), tokenizer facts
(:mod:`.tokens`), trigger insertion and matching (:mod:`.triggers`) and instruction data (:mod:`.instructions`).

    from patronus_ext import data
    texts = data.read_corpus("wikitext2", limit=100)
    sst2 = data.read_task("sst2", "dev")           # LabeledData: texts, labels, num_labels
"""

from .corpora import (
                      BUILTIN_CORPORA,
                      BUILTIN_TASKS,
                      LabeledData,
                      builtin_source,
                      data_dir,
                      data_sources,
                      read_corpus,
                      read_task,
)

__all__ = ["BUILTIN_CORPORA", "BUILTIN_TASKS", "LabeledData", "builtin_source", "data_dir", "data_sources",
           "read_corpus", "read_task"]
