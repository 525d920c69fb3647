"""The records the package writes and reads, one module each: a planted model's ``backdoor.json``
(:mod:`.backdoor`), the attack-vector bank (:mod:`.bank`), the scan report (:mod:`.scan_report`) and a
purified model's ``purify.json`` (:mod:`.purify_record`)."""
