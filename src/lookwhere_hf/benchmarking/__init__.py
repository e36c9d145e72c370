"""Every benchmark that ships in the package, behind `lookwhere-hf benchmark` (`benchmarks/bench_inference.py` and
`python -m lookwhere_hf.benchmarking` are the same entry point).

Modules, in the direction of their imports (each imports only those above it, and the package's model families and
shared pieces):

- `timing.py`: the primitives: random-weight models ([`random_weight_model`], [`build_full_resolution_model`]),
  interleaved latency ([`time_interleaved`]), peak memory of a forward, one measurement per forked process
  ([`run_in_fresh_process`], with the measurements registered by task through [`measurement`]), and the markdown
  plumbing ([`machine_description`], [`write_section`]);
- `inference.py`: LookWhere against the full-resolution model: latency, peak memory, FLOPs (the default grid);
- `official.py`: against the official LookWhere code given the same weights (`--vs-official`), and the profile
  (`--profile`);
- `deployment.py`: `torch.compile`, ONNX Runtime, bf16 autocast (`--compile`, `--onnx`, `--bf16`);
- `budget_latency.py`: budgeted classification against fixed `k` (`--budget-latency`);
- `command.py`: the arguments ([`parse_args`]) and the driver ([`main`]).
"""

from .budget_latency import (
    BUDGET_SECTION,
    exit_counts,
    forced_exit_thresholds,
    render_budget_markdown,
    run_budget_latency,
)
from .command import main, parse_args
from .deployment import DEPLOYMENT_SECTION, render_deployment_markdown, run_deployment_benchmark, top_k_overlap
from .inference import (
    DEFAULT_PLOT_NAME,
    INFERENCE_SECTION,
    build_benchmark_model,
    call_benchmark_model,
    render_markdown,
    run_benchmark,
    save_plot,
    summary_lines,
)
from .official import (
    OFFICIAL_SECTION,
    PROFILE_SECTION,
    check_official_checkout,
    render_official_markdown,
    render_profile_markdown,
    run_official_comparison,
    run_profile,
    write_official_checkpoint,
)
from .timing import (
    MEASUREMENTS,
    Timing,
    build_full_resolution_model,
    fast_random_init,
    format_spread,
    load_average,
    machine_description,
    measurement,
    peak_rss_kb,
    process_status_kb,
    random_weight_model,
    reset_peak_rss,
    run_in_fresh_process,
    time_interleaved,
    write_section,
)

__all__ = [
    "BUDGET_SECTION",
    "DEFAULT_PLOT_NAME",
    "DEPLOYMENT_SECTION",
    "INFERENCE_SECTION",
    "MEASUREMENTS",
    "OFFICIAL_SECTION",
    "PROFILE_SECTION",
    "Timing",
    "build_benchmark_model",
    "build_full_resolution_model",
    "call_benchmark_model",
    "check_official_checkout",
    "exit_counts",
    "fast_random_init",
    "forced_exit_thresholds",
    "format_spread",
    "load_average",
    "machine_description",
    "main",
    "measurement",
    "parse_args",
    "peak_rss_kb",
    "process_status_kb",
    "random_weight_model",
    "render_budget_markdown",
    "render_deployment_markdown",
    "render_markdown",
    "render_official_markdown",
    "render_profile_markdown",
    "reset_peak_rss",
    "run_benchmark",
    "run_budget_latency",
    "run_deployment_benchmark",
    "run_in_fresh_process",
    "run_official_comparison",
    "run_profile",
    "save_plot",
    "summary_lines",
    "time_interleaved",
    "top_k_overlap",
    "write_official_checkpoint",
    "write_section",
]
