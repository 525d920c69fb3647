"""What every layer above the kernels shares: argument checks (:mod:`.validation`), named profiles
(:mod:`.profiles`), files written atomically (:mod:`.files`) and the representation similarities
``diff_cos`` / ``poison_cos`` (:mod:`.similarity`)."""
