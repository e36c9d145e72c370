#!/usr/bin/env python
"""The families side by side on one where-to-look dataset, end to end with one command.

data -> full-resolution teacher -> LookWhere pretraining (no labels) -> fixed-k fine-tuning -> the other families
(multi-rung and budgeted LookWhere, LookupViT, Glance-and-Focus) -> evaluation (budgets fitted on validation, test
numbers per size bin where the items have sizes) -> `results.json`, `results.md`, `families.png` and, with
`--update_results`, the dataset's section of `benchmarks/RESULTS.md`. The datasets and their recipes are in
`descriptions.py`; the stages, the evaluation and the report in `stages.py`, `evaluation.py` and `report.py`.

Examples (the configurations reported in RESULTS.md):

    python benchmarks/families/compare_families.py --dataset varied_items --output_dir outputs/varied_items \\
        --seeds 0,1,2 --num_threads 1 --update_results
    python benchmarks/families/compare_families.py --dataset sparse_digits --output_dir outputs/sparse_digits \\
        --seeds 0,1,2 --num_threads 1 --update_results

`python benchmarks/families/compare_families.py --help` lists the recipe overrides (`--teacher_epochs`,
`--data_flags items=digits,num_train=300`, `--teacher_flags hidden_size=32`, ...) and the families' settings.
"""

from harness import main

if __name__ == "__main__":
    main()
