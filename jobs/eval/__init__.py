"""Video QA benchmarks swept over methods x retention ratios, and the paper's tables:
`benchmarks` (annotation layouts), `prompts` (lmms-eval's prompts and system turn), `choices`
(letter extraction), `judge` (ActivityNet-QA's judge model), `sweep` (the rows), `presets` (the
supplement's tables), `run_log` (resumable logs), `evaluate` (the runner), `report` (tables and
plots), `command` (`tokenreel eval`)."""
