"""Multiple-choice video QA benchmarks swept over methods x retention ratios (the paper's tables):
`benchmarks` (annotation layouts), `choices` (prompts and letter extraction), `evaluate` (the
runner), `report` (tables and plots), `command` (`tokenreel eval`)."""
