"""Console scripts: `bigtrain-pretrain`, `bigtrain-prepare`, `bigtrain-export`, `bigtrain-generate`.

Each sets up the process first (`bigtrain.entry.process`), then imports what it runs: DeepSpeed and
megatron-core read the environment and emit warnings when they are imported, so the heavy imports
below are local on purpose. `launch/*.py` in a checkout call the same functions.
"""

from __future__ import annotations

import argparse
import os
import sys

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig

from bigtrain.config.hydra import (  # light: no DeepSpeed, megatron, torch
    CONF_PACKAGE,
    check_overrides,
    check_run_dir,
    to_config,
)
from bigtrain.config.schema import ConfigError
from bigtrain.entry import launcher
from bigtrain.entry.process import setup_process, wants_verbose


def split_local_rank(argv: list[str]) -> tuple[list[str], str | None]:
    """The deepspeed launcher appends `--local_rank=N` (or `--local_rank N`), which Hydra would
    reject as an override: return argv without it, and N (None when absent)."""
    out, value, skip = [], None, False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg.startswith("--local_rank"):
            value, skip = (arg.split("=", 1)[1], False) if "=" in arg else (argv[i + 1], True)
        else:
            out.append(arg)
    return out, value


def pretrain() -> None:
    """`bigtrain-pretrain model=… parallel=… precision=…`; runs under deepspeed, torchrun, srun
    or plain python. `--config-dir DIR` adds a folder of the user's own presets."""
    sys.argv, local_rank = split_local_rank(sys.argv)
    try:
        launcher.export(launcher.detect())  # srun's and mpirun's variables as torch.distributed's
        check_overrides(sys.argv[1:])
        check_run_dir(sys.argv[1:])
    except (launcher.LaunchError, ConfigError) as err:
        if int(os.environ.get("RANK", "0")) == 0:  # every rank reaches it alike
            print(f"bigtrain: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    setup_process(local_rank, verbose=wants_verbose(sys.argv))
    from bigtrain.entry.run import main  # noqa: PLC0415  (after setup_process, see the module docstring)

    @hydra.main(config_path=f"pkg://{CONF_PACKAGE}", config_name="config", version_base=None)
    def _pretrain(tree) -> None:
        sys.exit(main(tree, HydraConfig.get().runtime.output_dir))

    _pretrain()


def plan() -> None:
    """`bigtrain-plan model=… cluster.nodes=N cluster.gpus_per_node=G cluster.gpu_memory_gb=M`:
    predicted memory per rank and step time for every layout of the cluster, ranked (see
    bigtrain/parallel/plan.py). Other overrides are the training command's; `cluster.*` keys are
    bigtrain.parallel.plan.Cluster's fields."""
    from bigtrain.config.hydra import compose  # noqa: PLC0415
    from bigtrain.config.schema import ConfigError, from_dict  # noqa: PLC0415
    from bigtrain.parallel.plan import Cluster, candidates, planning_vocab, report, tokens_per_second  # noqa: PLC0415

    args = sys.argv[1:]
    machine = {a.split("=", 1)[0][len("cluster.") :]: a.split("=", 1)[1] for a in args if a.startswith("cluster.")}
    overrides = [a for a in args if not a.startswith("cluster.")]
    try:
        check_overrides(overrides)
        cluster = from_dict({k: yaml.safe_load(v) for k, v in machine.items()}, Cluster, "cluster.")
        cfg = compose(overrides)
        plans = candidates(cfg, cluster, planning_vocab(cfg))
    except ConfigError as err:
        print(f"bigtrain: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(
        f"{cfg.model.name}: {cluster.nodes} node(s) × {cluster.gpus_per_node} devices of "
        f"{cluster.gpu_memory_gb:g} GB, {cluster.peak_tflops:g} TFLOP/s peak; global batch "
        f"{cfg.trainer.global_batch_size} × {cfg.model.seq_len} tokens, micro-batch {cfg.trainer.micro_batch_size}, "
        f"{cfg.precision.dtype}, activation checkpointing {cfg.trainer.activation_checkpointing}"
    )
    fitting = [p for p in plans if p.fits]
    print(f"{len(fitting)} of {len(plans)} layouts fit, fastest first:")
    print(f"  {'layout':22s} {'GB/rank':>8s} {'step s':>8s} {'tokens/s':>12s}")
    for p in fitting:
        print(f"  {p.name():22s} {p.total_bytes / 1e9:8.1f} {p.step_seconds:8.3g} {tokens_per_second(p, cfg):12,.0f}")
    print("do not fit:")
    for p in plans:
        if not p.fits:
            print(f"  {p.name():22s} {p.reason}")
    if fitting:
        print()
        print(report(fitting[0], cfg))


def prepare() -> None:
    """`bigtrain-prepare inputs=[...] output=prefix tokenizer.kind=...`: raw corpora → tokenizer →
    megatron-core .bin/.idx (see bigtrain/conf/prepare.yaml)."""
    setup_process()
    from bigtrain.config.schema import ConfigError, PrepareConfig  # noqa: PLC0415  (after setup_process)
    from bigtrain.data.corpus import DataError  # noqa: PLC0415
    from bigtrain.data.preprocess import prepare_corpus  # noqa: PLC0415

    @hydra.main(config_path=f"pkg://{CONF_PACKAGE}", config_name="prepare", version_base=None)
    def _prepare(tree) -> None:
        try:
            prepare_corpus(to_config(tree, PrepareConfig))
        except (ConfigError, DataError) as err:
            sys.exit(f"bigtrain: error: {err}")

    _prepare()


def _checkpoint_parser(doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="run directory, checkpoints/ folder or one step_XXXXXXXX folder")
    return parser


def export(argv: list[str] | None = None) -> None:
    """Export a checkpoint (any layout) to a Hugging Face folder.

    bigtrain-export outputs/<run> hf_out/     # or .../checkpoints/step_00001000
    """
    parser = _checkpoint_parser(export.__doc__)
    parser.add_argument("out", help="output folder")
    args = parser.parse_args(argv)
    setup_process()
    from bigtrain.model.hf import ExportError  # noqa: PLC0415  (after setup_process)
    from bigtrain.train.checkpoint import CheckpointError  # noqa: PLC0415
    from bigtrain.train.export import export_hf  # noqa: PLC0415

    try:
        print(f"wrote {export_hf(args.checkpoint, args.out)} to {args.out}")
    except (CheckpointError, ExportError) as err:
        sys.exit(f"bigtrain: error: {err}")


def generate(argv: list[str] | None = None) -> None:
    """Sample text from a checkpoint (any layout).

    bigtrain-generate outputs/<run> --prompt "ROMEO:" --max-tokens 200 --temperature 0.8 --top-k 50
    """
    parser = _checkpoint_parser(generate.__doc__)
    parser.add_argument("--prompt", default="")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=50, help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup_process()
    from bigtrain.train.checkpoint import CheckpointError  # noqa: PLC0415
    from bigtrain.train.generate import generate_text  # noqa: PLC0415  (after setup_process)

    try:
        print(
            generate_text(
                args.checkpoint, args.prompt, args.max_tokens, args.temperature, args.top_k, args.top_p, args.seed
            )
        )
    except CheckpointError as err:
        sys.exit(f"bigtrain: error: {err}")
