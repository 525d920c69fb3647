"""Real-time monitoring of a model that may carry a backdoor (docs/METHODS.md §2 input monitoring, §3 output
monitoring and input purging).

    from patronus_ext import models
    from patronus_ext.formats.bank import load_bank
    from patronus_ext.monitor import InputMonitor, MonitoredModel, OutputMonitor

    adapter = models.load_adapter("out/por")
    monitor = MonitoredModel(adapter.model, adapter.tokenizer,
                             input_monitor=InputMonitor.from_report("scan.json", adapter.tokenizer),
                             output_monitor=OutputMonitor(load_bank("scan.bank.safetensors")), action="strip")
    [d.to_dict() for d in monitor.check(["a clean sentence", "a cf triggered cf sentence"])]
"""

from .build import build_guarded_generator, build_monitored_model
from .generation_guard import GUARD_ACTIONS, GuardedGenerator, TargetGuard, guarded_generate
from .input import InputMonitor, MonitoredTrigger, TriggerMatch, remove_spans
from .model import ACTIONS, Decision, MonitoredModel, check_text
from .output import MODES, OutputCheck, OutputMonitor, calibrate_threshold

__all__ = [
    "ACTIONS", "GUARD_ACTIONS", "GuardedGenerator", "TargetGuard", "build_guarded_generator", "build_monitored_model", "guarded_generate", "calibrate_threshold", "check_text", "Decision", "InputMonitor", "MODES",
    "MonitoredModel", "MonitoredTrigger", "OutputCheck", "OutputMonitor", "remove_spans", "TriggerMatch"
]
