"""Timing primitives shared by every benchmark of [`lookwhere_hf.benchmarking`]: random-weight models, interleaved
latency timing, peak memory of a forward, one measurement per forked process, and the markdown plumbing (machine line,
load average, writing a section of a results file)."""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from ..models.lookwhere.configuration_lookwhere import LookWhereConfig

__all__ = [
    "MEASUREMENTS",
    "Timing",
    "build_full_resolution_model",
    "fast_random_init",
    "format_spread",
    "load_average",
    "machine_description",
    "measurement",
    "peak_rss_kb",
    "process_status_kb",
    "random_weight_model",
    "reset_peak_rss",
    "run_in_fresh_process",
    "time_interleaved",
    "write_section",
]

INFERENCE_SECTION = "## Inference speed"


# ----------------------------------------------------------------------------------------------------- models
def fast_random_init(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill a model's parameters quickly with random values (normal(0, 0.02) for matrices, ones for norm weights and
    layer scales, zeros for biases). For speed measurements: the values do not change the cost of a forward pass."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, 0.02, generator=generator)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)
    return model


def random_weight_model(model_class, config, seed: int = 0) -> torch.nn.Module:
    """`model_class(config)` in eval mode with [`fast_random_init`] weights, built without the (slow) default
    initialization."""
    with torch.device("meta"):
        model = model_class(config)
    return fast_random_init(model.to_empty(device="cpu"), seed).eval()


def build_full_resolution_model(
    lookwhere_config: LookWhereConfig, image_size: int, attn_implementation: str = "sdpa", seed: int = 0
) -> Dinov2WithRegistersModel:
    """transformers' `Dinov2WithRegistersModel` with the LookWhere extractor's architecture at `image_size`, random
    weights: the full-resolution model LookWhere is compared with."""
    fields = lookwhere_config.extractor_config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "_name_or_path", "auto_map"):
        fields.pop(key, None)
    config = Dinov2WithRegistersConfig(**{**fields, "image_size": image_size})
    config._attn_implementation = attn_implementation
    return random_weight_model(Dinov2WithRegistersModel, config, seed)


# ----------------------------------------------------------------------------------------------------- latency
@dataclass
class Timing:
    """Wall-clock and process CPU seconds of the timed calls of one function (CPU time counts all threads)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu) if self.cpu else float("nan")


def time_interleaved(
    calls: dict[str, Callable[[], object]], repeats: int | dict[str, int], warmup: int = 0, desc: str | None = None
) -> dict[str, Timing]:
    """Time several functions in interleaved rounds, so that changes of the machine's load hit all of them alike.

    Args:
        calls: name -> function to time (called without arguments).
        repeats: timed calls per function (the same for all, or per name); round `r` calls, in the order of `calls`,
            every function that still has fewer than its `repeats` samples.
        warmup: untimed rounds of all functions first.
        desc: progress-bar label (tqdm on stderr); no bar if None.

    Returns:
        name -> [`Timing`].
    """
    counts = dict.fromkeys(calls, repeats) if isinstance(repeats, int) else dict(repeats)
    if set(counts) != set(calls) or any(not isinstance(n, int) or n < 0 for n in counts.values()):
        raise ValueError(f"`repeats` must be an int >= 0 or one per call {sorted(calls)}, got {repeats!r}.")
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    timings = {name: Timing() for name in calls}
    for round_ in tqdm(
        range(max(counts.values(), default=0)), desc=desc, leave=False, disable=desc is None, file=sys.stderr
    ):
        for name, fn in calls.items():
            if round_ < counts[name]:
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                timings[name].wall.append(time.perf_counter() - start)
                timings[name].cpu.append(time.process_time() - start_cpu)
    return timings


# ----------------------------------------------------------------------------------------------------- memory
def process_status_kb(key: str) -> int | None:
    """A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`, ...), or None where there is none."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set size (Linux `/proc/self/clear_refs`); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_kb() -> int:
    """The process's peak resident set size in KiB (`VmHWM`, else `ru_maxrss`)."""
    hwm = process_status_kb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ----------------------------------------------------------------------------------------------------- processes
# Forked-child measurements by job task: each benchmark module registers its own with [`measurement`].
MEASUREMENTS: dict[str, Callable[[dict], dict]] = {}


def measurement(task: str):
    """Decorator: register `fn(job) -> dict` as the measurement that [`run_in_fresh_process`] runs for jobs with
    `job["task"] == task`."""

    def register(fn: Callable[[dict], dict]) -> Callable[[dict], dict]:
        MEASUREMENTS[task] = fn
        return fn

    return register


def _child(measure: Callable[[dict], dict], job: dict, queue) -> None:
    try:
        queue.put(("ok", measure(job)))
    except BaseException:  # report any failure to the parent
        queue.put(("error", traceback.format_exc()))


def run_in_fresh_process(job: dict) -> dict:
    """Fork a child for one measurement (fresh allocator and peak-RSS counter) and return its result: the function
    registered for `job["task"]` ([`measurement`]) runs on `job` in the child."""
    if job.get("task") not in MEASUREMENTS:
        raise ValueError(f"No measurement is registered for the job task {job.get('task')!r}: {sorted(MEASUREMENTS)}.")
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    process = ctx.Process(target=_child, args=(MEASUREMENTS[job["task"]], job, queue))
    process.start()
    status, payload = queue.get()
    process.join()
    if status != "ok":
        raise RuntimeError(f"benchmark job {job} failed:\n{payload}")
    return payload


# ----------------------------------------------------------------------------------------------------- reporting
def machine_description(threads: int) -> str:
    """One line on the machine and software a benchmark ran on (for its markdown section)."""
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        if names:
            cpu = f"{names[0]} ({len(names)} logical CPUs visible)"
    except OSError:
        pass
    return (
        f"{cpu}; {platform.system()} {platform.release()}; Python {platform.python_version()}; "
        f"torch {torch.__version__}; "
        f"transformers {transformers.__version__}; torch threads {threads}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; float32, SDPA attention"
    )


def load_average() -> str:
    """The 1 / 5 / 15 minute load averages, `0.5/0.7/0.9` (`n/a` where unknown)."""
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def format_spread(median, low, high) -> str:
    """`(high - low) / median` as a percentage (`12%`), `-` without a median."""
    return f"{100 * (high - low) / median:.0f}%" if median else "-"


def write_section(path: Path, section: str, heading: str = INFERENCE_SECTION) -> None:
    """Replace the `heading` section of `path` (up to the next `## ` heading) or append it."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find(heading + "\n")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("\n" + text[end + 1 :] if end != -1 else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
