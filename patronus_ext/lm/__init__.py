"""Models: where they come from, how they load safely, whether they can be judged at all (:mod:`.sanity`),
the folders the package writes, the representation a backdoor lives in (:class:`ModelAdapter`), and how
they train (the one training loop, classifier fine-tuning, prompting, instruction tuning and generation
for causal LMs).

    from patronus_ext import lm
    adapter = lm.load_adapter("all-MiniLM-L6-v2")     # model + tokenizer, safe loading
    reps = adapter.encode(["a clean sentence"])        # [1, d] backdoor-relevant representation

The training pieces live in their modules: :mod:`.training`, :mod:`.finetune`, :mod:`.prompting`,
:mod:`.instruction_tuning`, :mod:`.generation`.
"""

from .adapter import POSITIONS, ModelAdapter, last_real_index
from .folders import check_new_model_folder, save_model_folder
from .loading import (
                      PICKLE_PATTERNS,
                      UnsafeCheckpointError,
                      backbone_extras,
                      check_checkpoint_safety,
                      default_device,
                      lm_head_kind,
                      load_adapter,
                      load_config,
                      load_lm_model,
                      load_model,
                      load_tokenizer,
                      resolve_device,
)
from .sanity import (
                      BrokenModelError,
                      check_model_sanity,
                      check_model_source,
                      require_finite,
)
from .sources import (
                      DEFAULT_MODEL,
                      GGUF_SOURCE_FILE,
                      SMOLLM2_MODEL,
                      ModelLoadError,
                      convert_gguf,
                      converted_gguf_folder,
                      packaged_minilm_path,
                      packaged_smollm2_path,
                      resolve_model_source,
)

__all__ = [
    "DEFAULT_MODEL", "GGUF_SOURCE_FILE", "PICKLE_PATTERNS", "POSITIONS", "SMOLLM2_MODEL", "BrokenModelError",
    "ModelAdapter", "ModelLoadError", "UnsafeCheckpointError", "backbone_extras", "check_checkpoint_safety",
    "check_model_sanity", "check_model_source", "check_new_model_folder", "convert_gguf", "converted_gguf_folder",
    "default_device", "last_real_index", "lm_head_kind", "load_adapter", "load_config", "load_lm_model",
    "load_model", "load_tokenizer", "packaged_minilm_path", "packaged_smollm2_path", "require_finite",
    "resolve_device", "resolve_model_source", "save_model_folder",
]
