"""Command-line interface: a thin layer over the library API.

Every user-facing error is an :class:`EdgeskipError`, printed as one line (``error: ...``) with
exit status 2 and no traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from edgeskip import __version__
from edgeskip.errors import EdgeskipError
from edgeskip.manifest import Manifest, load_manifest, model_label
from edgeskip.recipes import (
    AMP_CHOICES,
    EXHAUSTIVE_LIMIT,
    GATE_KINDS,
    GATE_MODES,
    RECIPE_NAMES,
    RECIPES,
    SD_SCOPES,
    SEARCHES,
)
from edgeskip.runtime.choices import BACKENDS, DRIVERS, EVENT_LOOPS, PATTERNS, POLICIES

DIGEST_OPTION = click.option(
    "--digest",
    default=None,
    metavar="SHA256",
    help="Refuse the bundle unless its manifest has this digest (printed by compile).",
)


def _option_group(f, opts: list):
    """Apply ``opts`` (click options) to ``f`` in the order listed (the first is the first in --help)."""
    for opt in reversed(opts):
        f = opt(f)
    return f


def engine_options(f):
    """--target, --driver (IREE) and --threads (onnxruntime): how a command runs the bundle's engines."""
    opts = [
        click.option(
            "--target",
            "target",
            default="auto",
            show_default=True,
            help="Which of the bundle's IREE targets to run (auto: this machine's).",
        ),
        click.option(
            "--driver", type=click.Choice(DRIVERS), default="local-sync", show_default=True, help="IREE HAL driver."
        ),
        click.option(
            "--threads",
            "ort_threads",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="onnxruntime intra-op threads.",
        ),
    ]
    return _option_group(f, opts)


PROFILE_OPTION = click.option(
    "--profile",
    default="auto",
    show_default=True,
    metavar="auto|none|FILE",
    help="Fronts measured on this machine (edgeskip profile): auto uses BUNDLE/profiles/<this machine>.json "
    "where present, none the compile host's, FILE that profile (refused unless it matches bundle and machine).",
)
POWER_OPTION = click.option(
    "--power",
    default=None,
    metavar="SOURCE",
    help="Measure energy (bench: each run's; serve: a /metrics counter) from auto (what this machine has), "
    "powercap[:ZONE,...] (RAPL), ina231[:RAIL,...] (Odroid XU4), hwmon[:DEVICE[:CHANNEL,...]] or cmd:COMMAND "
    "(a meter that prints W or J).",
)
VERIFY_KEY_OPTION = click.option(
    "--verify-key",
    type=click.Path(dir_okay=False),
    default=None,
    help="Refuse the bundle unless signed by this public key (edgeskip sign).",
)


def policy_options(f):
    """--policy and its parameters, --queue-depth and --deadline-ms (serve and bench)."""
    opts = [
        click.option(
            "--policy",
            type=click.Choice(POLICIES),
            default="paper",
            show_default=True,
            help="Adaptation policy: paper = Algorithm 1; rate = utilisation target with hysteresis; "
            "mix = rate, time-sharing two neighbouring configs.",
        ),
        click.option(
            "--target-util",
            type=float,
            default=None,
            help="rate/mix: utilisation the chosen config may reach, in (0, 1] [default: 0.95; 1.0 with "
            "--queue-depth].",
        ),
        click.option(
            "--hysteresis",
            type=float,
            default=None,
            help="rate/mix: margin a slower config needs before moving back to it, in [0, 0.9] [default: 0.05].",
        ),
        click.option(
            "--policy-param",
            "policy_param",
            multiple=True,
            metavar="KEY=VALUE",
            help="rate/mix parameter (target_util, hysteresis, attack, release, drain); repeatable.",
        ),
        click.option(
            "--queue-depth",
            type=int,
            default=0,
            show_default=True,
            help="Requests that may wait for the executor (0: drop when busy, as the paper).",
        ),
        click.option(
            "--deadline-ms",
            type=float,
            default=None,
            help="With a queue: drop a request that cannot finish within this many ms of its arrival.",
        ),
    ]
    return _option_group(f, opts)


def policy_params(target_util: float | None, hysteresis: float | None, pairs: tuple[str, ...]) -> dict[str, float]:
    """The rate/mix parameters given on the command line, checked (one-line errors)."""
    from edgeskip.runtime.policies import check_param

    params: dict[str, float] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            params[key.strip().replace("-", "_")] = float(value) if sep else float("nan")
        except ValueError:
            raise EdgeskipError(f"--policy-param must be KEY=NUMBER, got {pair!r}") from None
    for key, value in (("target_util", target_util), ("hysteresis", hysteresis)):
        if value is not None:
            params[key] = value
    for key, value in params.items():
        check_param(key, value)
    return params


def deadline_s(deadline_ms: float | None) -> float | None:
    return None if deadline_ms is None else deadline_ms / 1e3


# packages of the `design` extra (import names): a runtime-only install lacks them
DESIGN_MODULES = (
    "torch",
    "sklearn",
    "matplotlib",
    "tqdm",
    "onnx",
    "onnxscript",
    "iree.compiler",
    "elftools",
    "mlperf_loadgen",
)


class _Group(click.Group):
    def invoke(self, ctx: click.Context):  # noqa: D401 - click hook
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as e:
            name = e.name or ""
            if not any(name == m or name.startswith(m + ".") for m in DESIGN_MODULES):
                raise
            command = ctx.invoked_subcommand or "this command"
            click.echo(
                f"error: edgeskip {command} needs the design-time packages ({name} is not installed): "
                "pip install 'edgeskip[design]'",
                err=True,
            )
            ctx.exit(2)
        except EdgeskipError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except click.UsageError as e:  # a bad option value: one line, as for every other error
            click.echo(f"error: {e.format_message()}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def _data_spec(dataset, data_dir, val_fraction, seed, image_size, download):
    """The data options of train, pareto and compile as one DataSpec (``--image-size`` checked and parsed)."""
    from edgeskip.train import DataSpec

    return DataSpec(
        dataset, data_dir, val_fraction, seed=seed, image_size=_size(image_size, dataset), download=download
    )


def _size(value: str | None, dataset: str) -> tuple[int, int] | None:
    if not value:
        return None
    if dataset != "imagefolder":  # digits and cifar10 come at their own size (8x8, 32x32): never resized
        raise EdgeskipError(f"--image-size resizes --dataset imagefolder images; {dataset} images are not resized")
    try:
        parts = [int(v) for v in value.lower().replace("x", ",").split(",")]
    except ValueError:
        raise click.BadParameter(f"expected HxW or N, got {value!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise click.BadParameter(f"expected HxW or N, got {value!r}")
    return parts[0], parts[1]


def data_options(f):
    """Options shared by every command that loads a data set."""
    opts = [
        click.option(
            "--dataset",
            type=click.Choice(["digits", "cifar10", "cifar100", "imagefolder"]),
            default="digits",
            show_default=True,
            help="Data set (digits is bundled and offline).",
        ),
        click.option(
            "--data-dir",
            type=click.Path(file_okay=False),
            default=None,
            help="Folder with the CIFAR archive/pickles, or the image-folder root.",
        ),
        click.option("--download", is_flag=True, help="Download CIFAR (checksum-verified) if missing."),
        click.option(
            "--val-fraction",
            type=float,
            default=0.1,
            show_default=True,
            help="Fraction of training data held out for validation (design-time selection).",
        ),
        click.option("--image-size", default=None, help="Resize image-folder images to HxW."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for splits, init and order."),
    ]
    return _option_group(f, opts)


def model_options(f):
    """Options choosing the network, shared by every command that may train one."""
    opts = [
        click.option(
            "--model",
            "model_spec",
            default=None,
            metavar="SOURCE:NAME",
            help="Network: edgeskip:resnet20 (any resnet<6n+2>; --depth is the shortcut), torchvision:NAME "
            "(resnet18, mobilenet_v2, ...), timm:NAME or package.module:factory (called with "
            "num_classes= and in_channels= where it takes them).",
        ),
        click.option(
            "--model-arg",
            "model_args",
            multiple=True,
            metavar="KEY=VALUE",
            help="Extra argument of the model's factory, e.g. width_mult=0.25 (repeatable).",
        ),
        click.option(
            "--blocks",
            "block_names",
            default=None,
            metavar="PATHS",
            help="Gated blocks: comma-separated module paths or globs (layer*.1); default: every residual "
            "block with an identity shortcut, found by tracing.",
        ),
        click.option(
            "--init-weights",
            type=click.Path(dir_okay=False),
            default=None,
            help="Local state dict (torch.save or .safetensors) loaded into a new model before training; "
            "entries whose name and shape differ (another classifier) stay initialised.",
        ),
    ]
    return _option_group(f, opts)


# pareto and compile train first without a checkpoint: the learning rate a diverging run is told to lower
FIRST_LR_OPTION = click.option(
    "--lr", type=float, default=0.1, show_default=True, help="Learning rate when training first."
)


def search_options(f):
    """--search, --beam-width, --search-budget and --screen-images (pareto and compile): where the candidates come
    from."""
    opts = [
        click.option(
            "--search",
            type=click.Choice(SEARCHES),
            default="beam",
            show_default=True,
            help="Candidates: beam = a beam search over skip arrays (blocks interact); greedy = the N blocks "
            "of --ranking that cost least alone (the paper's method); exhaustive = all 2^B_s arrays (small "
            "models). All on validation accuracy.",
        ),
        click.option(
            "--beam-width",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Arrays kept per number of skipped blocks (--search beam; 1 re-ranks after each skip).",
        ),
        click.option(
            "--search-budget",
            type=click.IntRange(min=1),
            default=None,
            help="At most this many skip arrays evaluated on the validation split (default: no cap; "
            f"exhaustive: {EXHAUSTIVE_LIMIT}).",
        ),
        click.option(
            "--screen-images",
            type=click.IntRange(min=0),
            default=None,
            help="--search beam: rank each level's children on this many validation images first and evaluate "
            "only the best 3 x width on the whole split; 0: never (default: 1000 where the split holds more "
            "than 2000).",
        ),
    ]
    return _option_group(f, opts)


def _search_spec(search: str, beam_width: int, budget: int | None, screen_images: int | None):
    from edgeskip.pareto.search import SearchSpec

    return SearchSpec(search, beam_width, budget, screen_images)


def _arg_value(text: str) -> object:
    """A JSON value (3, 0.25, true, [8, 16, 32, 64]); anything else is a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def model_config(
    model_spec: str | None,
    model_args: tuple[str, ...],
    block_names: str | None,
    depth: int,
    sd_mode: str = "batch",
    p_last: float = 0.5,
    **resnet: object,
):
    """The ModelConfig the model options describe (``resnet``: the built-in ResNet's own settings)."""
    from edgeskip.models import NetConfig, ResNetConfig
    from edgeskip.models.zoo import builtin_depth

    d = builtin_depth(model_spec) if model_spec else depth
    if d is not None:
        if model_args or block_names:
            raise EdgeskipError(
                "--model-arg and --blocks apply to torchvision, timm and your own models; the "
                "built-in ResNet gates every block but each stage's first"
            )
        return ResNetConfig(depth=d, sd_mode=sd_mode, p_last=p_last, **resnet)  # type: ignore[arg-type]
    kwargs = {}
    for a in model_args:
        k, eq, v = a.partition("=")
        if not eq or not k.isidentifier():
            raise EdgeskipError(f"--model-arg must be KEY=VALUE, got {a!r}")
        kwargs[k] = _arg_value(v)
    blocks = tuple(b.strip() for b in block_names.split(",") if b.strip()) if block_names else ()
    return NetConfig(str(model_spec), kwargs=kwargs, blocks=blocks, sd_mode=sd_mode, p_last=p_last)


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def configs_summary(m) -> str:
    """The bundle's configs (option arrays where int8 blocks run: 8) and, where named, each back end's front."""
    from edgeskip.utils.table import format_pareto_table

    out = format_pareto_table([c.to_dict() for c in m.configs], m.num_gates)
    for backend, idx in m.fronts.items():
        out += f"\n{backend} front (stepping order): configs {list(idx)}"
    if m.int8 is not None and "weight_bytes" in m.int8:
        wb = m.int8["weight_bytes"]
        out += (
            f"\nint8 variants: {wb['int8']:,} bytes beside the gated blocks' {wb['float']:,} bytes of float "
            f"weights; IREE: {m.int8.get('iree', '')[:60]}..."
        )
    return out


def skipnet_summary(m: Manifest) -> str:
    """One learned-gate bundle's figures: accuracy, skipped blocks, MACs with gates, latency spread (DFS: also
    its computation percentage and how often each option runs)."""
    c = m.configs[0]
    dfs = ""
    if m.kind == "dfs":
        rates = ", ".join(
            f"{'skip' if b == 0 else 'full' if b == 32 else f'{b}-bit'} {r:.1%}"
            for b, r in zip(c.extra["options_bits"], c.extra["test_option_rates"])
        )
        form = c.extra.get("int8_form", "integer")
        form = f"; 8 bits as {form}" if form else ""
        dfs = f"DFS cp {c.extra['test_cp']:.3f} (options: {rates}{form}); "
    return (
        f"{dfs}{'DFS' if dfs else 'SkipNet'}: val accuracy {c.val_accuracy:.4f}, test accuracy {c.test_accuracy:.4f}, "
        f"mean skipped {c.extra['test_mean_skipped']:.2f}/{m.num_gates} blocks, mean MACs {c.macs:.0f} (gates "
        f"included), host latency mean {c.latency_s * 1e3:.3f} ms [{c.extra['latency_s_min'] * 1e3:.3f}, "
        f"{c.extra['latency_s_max'] * 1e3:.3f}]"
    )


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeskip")
def cli() -> None:
    """edgeskip: runtime-adjustable depth for CNNs on edge boards."""


def apply_recipe(ctx: click.Context, params: dict) -> dict:
    """``params`` with the chosen recipe's values for every option not given on the command line."""
    name = params.get("recipe")
    if not name:
        return params
    out = dict(params)
    for key, value in RECIPES[name].options.items():
        if ctx.get_parameter_source(key) != click.core.ParameterSource.COMMANDLINE:
            out[key] = value
    return out


@cli.command()
@data_options
@click.option(
    "--recipe",
    type=click.Choice(RECIPE_NAMES),
    default=None,
    help="Named training recipe: its settings become the defaults (options given here still win). "
    + "; ".join(f"{r.name}: {r.description}" for r in RECIPES.values()),
)
@model_options
@click.option("--depth", type=int, default=20, show_default=True, help="ResNet depth 6n+2 (20, 32, 56, 110, ...).")
@click.option("--width", type=int, default=16, show_default=True, help="Channels of the first stage (x1, x2, x4).")
@click.option(
    "--shortcut",
    type=click.Choice(["pad", "proj"]),
    default="pad",
    show_default=True,
    help="Stage-transition shortcut: zero-pad (option A) or 1x1 projection (option B).",
)
@click.option("--sd/--no-sd", default=True, show_default=True, help="Stochastic depth on/off (off = baseline).")
@click.option(
    "--sd-mode",
    type=click.Choice(["batch", "row"]),
    default="batch",
    show_default=True,
    help="Drop a branch per mini-batch (not computed) or per sample.",
)
@click.option(
    "--p-last", "p_last", type=float, default=0.5, show_default=True, help="Survival probability p_L of the last block."
)
@click.option(
    "--sd-scope",
    type=click.Choice(SD_SCOPES),
    default="all",
    show_default=True,
    help="Drop every block's branch (Huang et al.) or only the gated blocks' (the ones skipped at inference).",
)
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--nesterov/--no-nesterov", default=True, show_default=True, help="Nesterov momentum.")
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "step"]), default="cosine", show_default=True)
@click.option("--warmup", type=float, default=0.0, show_default=True, help="Linear warm-up epochs.")
@click.option("--label-smoothing", type=float, default=0.0, show_default=True)
@click.option("--augment/--no-augment", default=None, help="Crop+flip augmentation [default: on for RGB >= 32x32].")
@click.option(
    "--cutout",
    type=int,
    default=0,
    show_default=True,
    help="Cutout: with augmentation, zero a random square of this side (pixels) in each training image (0: off).",
)
@click.option(
    "--zero-init-last/--no-zero-init-last",
    default=False,
    show_default=True,
    help="Zero-initialise each block's last BN scale (every block starts as the identity; slower to train).",
)
@click.option(
    "--amp",
    type=click.Choice(AMP_CHOICES),
    default="auto",
    show_default=True,
    help="Training precision: bf16 autocast where the CPU has native bf16 (auto), or force one.",
)
@click.option(
    "--compile/--no-compile",
    "compile_",
    default=False,
    show_default=True,
    help="torch.compile the training forward pass.",
)
@click.option(
    "--out", type=click.Path(dir_okay=False), default="runs/model.pt", show_default=True, help="Checkpoint path."
)
@click.option("--resume", is_flag=True, help="Continue the run stored in --out.")
@click.option(
    "--stop-after",
    type=click.IntRange(min=1),
    default=None,
    help="End this invocation after writing this epoch's checkpoint (continue later with --resume).",
)
@click.option("--threads", type=int, default=None, help="Torch CPU threads.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option(
    "--gates",
    type=click.Choice(GATE_KINDS),
    default=None,
    help="Train a learned-gate baseline (in front of the same blocks as edgeskip's): SkipNet with "
    "ffgate1/ffgate2/rnn gates, or Dynamic Fractional Skipping with dfs.",
)
@click.option(
    "--init",
    "init",
    type=click.Path(dir_okay=False),
    default=None,
    help="With --gates: start from this backbone or SkipNet checkpoint (its data splits are reused).",
)
@click.option(
    "--gate-mode",
    type=click.Choice(GATE_MODES),
    default=None,
    help="With --gates: SkipNet's sp (supervised pre-training, the default) or hrl (hybrid RL); DFS's "
    "dfs-full (step 1: backbone frozen, gates learn full precision, the default) or dfs (step 2).",
)
@click.option(
    "--alpha",
    type=float,
    default=0.1,
    show_default=True,
    help="HRL: reward per skipped block (x1/B_s); DFS step 2: weight of the computation loss.",
)
@click.option(
    "--cp-target",
    type=float,
    default=0.5,
    show_default=True,
    help="DFS step 2: the computation percentage (of the gated blocks' full cost) to steer toward, in (0, 1].",
)
@click.option(
    "--dfs-bits",
    default="8,16",
    show_default=True,
    help="DFS: bit widths of the options besides skip and full precision (of 4, 8, 16).",
)
@click.option("--beta", type=float, default=1.0, show_default=True, help="HRL: weight of the loss in the reward.")
@click.option(
    "--hrl-credit",
    type=click.Choice(("shared", "to-go")),
    default="shared",
    show_default=True,
    help="HRL: every gate gets the input's whole reward (shared), or SkipNet's return from that gate on "
    "(to-go: the loss plus the skips from that gate on).",
)
@click.option(
    "--gate-threshold",
    type=float,
    default=0.5,
    show_default=True,
    help="With --gates: execute a block iff its gate probability is >= this.",
)
@click.pass_context
def train(ctx, **params) -> None:
    """Train a network with stochastic depth (the built-in CIFAR ResNet, or --model), or a SkipNet/DFS with
    --gates; checkpoint every epoch."""
    spec = params.get("model_spec")
    if spec and not spec.startswith("edgeskip:"):
        given = [
            f"--{k.replace('_', '-')}"
            for k in RESNET_ONLY
            if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE
        ]
        if given:
            raise EdgeskipError(f"{', '.join(given)} shape(s) the built-in ResNet, not --model {spec}")
    _train(**apply_recipe(ctx, params))


RESNET_ONLY = ("depth", "width", "shortcut", "sd_scope", "zero_init_last")


def _train(
    dataset,
    data_dir,
    download,
    val_fraction,
    image_size,
    seed,
    recipe,
    model_spec,
    model_args,
    block_names,
    init_weights,
    depth,
    width,
    shortcut,
    sd,
    sd_mode,
    p_last,
    sd_scope,
    epochs,
    batch_size,
    lr,
    momentum,
    nesterov,
    weight_decay,
    schedule,
    warmup,
    label_smoothing,
    augment,
    cutout,
    zero_init_last,
    amp,
    compile_,
    out,
    resume,
    stop_after,
    threads,
    quiet,
    gates,
    init,
    gate_mode,
    alpha,
    beta,
    hrl_credit,
    cp_target,
    dfs_bits,
    gate_threshold,
) -> None:
    import dataclasses

    from edgeskip.utils.atomic import ensure_parent

    ensure_parent(out)  # before hours of training, not after
    from edgeskip.train import TrainConfig
    from edgeskip.train import train as run_train

    _threads(threads)
    model_cfg = model_config(
        model_spec,
        model_args,
        block_names,
        depth,
        sd_mode=sd_mode if sd else "none",
        p_last=p_last,
        widths=(width, 2 * width, 4 * width),
        shortcut=shortcut,
        zero_init_last=zero_init_last,
        sd_scope=sd_scope,
    )
    train_cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        schedule=schedule,
        warmup_epochs=warmup,
        label_smoothing=label_smoothing,
        augment=augment,
        cutout=cutout,
        seed=seed,
        amp=amp,
        compile=compile_,
        recipe=recipe or "",
    )
    data = _data_spec(dataset, data_dir, val_fraction, seed, image_size, download)
    if gates is None and init is not None:
        raise EdgeskipError(
            "--init needs --gates (plain training starts from scratch; pretrained weights: --init-weights)"
        )
    if gates is not None and init_weights is not None:
        raise EdgeskipError("--init-weights starts plain training; learned gates start from a checkpoint (--init)")
    if gates is not None and stop_after is not None:
        raise EdgeskipError("--stop-after applies to plain training, not to --gates")
    before = _stamp(out)  # a resumed checkpoint that is already complete comes back unwritten
    if gates is not None:
        from edgeskip.models.gates import GateConfig
        from edgeskip.train.gates import GateTraining, train_gates

        gate_data = None
        if init is not None:  # the backbone's splits; --data-dir may point at its data elsewhere
            from edgeskip.train import load_checkpoint

            spec = load_checkpoint(init).data
            gate_data = dataclasses.replace(spec, data_dir=data_dir) if data_dir else spec
        try:
            bits = tuple(int(b) for b in dfs_bits.split(","))
        except ValueError:
            raise EdgeskipError(f"--dfs-bits must be comma-separated integers, got {dfs_bits!r}") from None
        mode = gate_mode or ("dfs-full" if gates == "dfs" else "sp")
        ck = train_gates(
            out,
            gate_data or data,
            GateConfig(gates, gate_threshold, bits=bits),
            train_cfg,
            GateTraining(mode, alpha, beta, cp_target=cp_target, credit=hrl_credit),
            init=init,
            model_cfg=model_cfg,
            resume=resume,
            progress=not quiet,
        )
        last = ck.history[-1] if ck.history else {}
        cp = f"  cp {last['val_cp']:.3f}" if "val_cp" in last else ""
        click.echo(
            f"{_said(out, before, ck)}  epoch {ck.epoch}/{ck.train_cfg.epochs}  val_acc {last.get('val_acc', float('nan')):.4f}  "
            f"skipped {last.get('val_skipped', float('nan')):.2f}/{ck.model_cfg.num_gates} blocks{cp}"
        )
        return
    ck = run_train(
        out,
        data,
        model_cfg,
        train_cfg,
        resume=resume,
        progress=not quiet,
        stop_after=stop_after,
        init_weights=init_weights,
    )
    last = ck.history[-1] if ck.history else {}
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        click.echo(
            f"{_said(out, before, ck)}  epoch {ck.epoch}/{ck.train_cfg.epochs}  val_acc {last.get('val_acc', float('nan')):.4f}"
            f"  {_gated(ck.model_cfg)}"
        )


def _gated(cfg) -> str:
    """What the run gated: ``6 gated blocks``, with their module paths for a traced model."""
    names = getattr(cfg, "blocks", ())
    listed = f": {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}" if names else ""
    return f"{cfg.num_gates} gated block{'s' if cfg.num_gates != 1 else ''}{listed}"


def _stamp(path) -> tuple[int, int] | None:
    """(inode, mtime in ns) of ``path``, None if absent: atomic writes replace the file, so both change."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _said(out, before, ck) -> str:
    """How a training command opens its last line: what it wrote, or that it wrote nothing and why."""
    if _stamp(out) != before:
        return f"wrote {out}"
    return f"{out} was already {'complete' if ck.complete else f'at epoch {ck.epoch}'}, nothing written:"


def _load_for_eval(checkpoint: str, data_dir: str | None):
    """(model, checkpoint, splits) with the checkpoint's data spec (``data_dir`` overrides its folder)."""
    import dataclasses

    from edgeskip.train import load_model

    model, ck = load_model(checkpoint)
    spec = dataclasses.replace(ck.data, data_dir=data_dir) if data_dir else ck.data
    splits = spec.load()
    if splits.shape != (model.cfg.in_channels, *model.cfg.input_size):
        raise EdgeskipError(
            f"data shape {splits.shape} does not match the model input {(model.cfg.in_channels, *model.cfg.input_size)}"
        )
    splits.norm = ck.norm  # always the normalisation the model was trained with
    return model, ck, splits


@cli.command()
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    default=None,
    help="Trained checkpoint. Without it, a model is first trained on --dataset into OUT/model.pt.",
)
@data_options
@model_options
@click.option("--depth", type=int, default=20, show_default=True, help="Depth when training first.")
@click.option("--epochs", type=int, default=30, show_default=True, help="Epochs when training first.")
@FIRST_LR_OPTION
@click.option(
    "--ranking",
    type=click.Choice(["sensitivity", "weight_l2", "random"]),
    default="sensitivity",
    show_default=True,
    help="Block ordering used for the candidates and the front.",
)
@click.option(
    "--latency",
    type=click.Choice(["none", "torch"]),
    default="torch",
    show_default=True,
    help="Latency source for the front's cost (none = MACs).",
)
@click.option("--repeats", type=int, default=30, show_default=True, help="Latency repeats per config.")
@click.option("--batch-size", type=int, default=500, show_default=True, help="Evaluation batch size.")
@search_options
@click.option("--out", type=click.Path(file_okay=False), default="runs/pareto", show_default=True)
@click.option("--threads", type=int, default=None, help="Torch CPU threads.")
@click.option("--quiet", is_flag=True, help="No progress output.")
def pareto(
    checkpoint,
    dataset,
    data_dir,
    download,
    val_fraction,
    image_size,
    seed,
    model_spec,
    model_args,
    block_names,
    init_weights,
    depth,
    epochs,
    lr,
    ranking,
    latency,
    repeats,
    batch_size,
    search,
    beam_width,
    search_budget,
    screen_images,
    out,
    threads,
    quiet,
) -> None:
    """Sensitivity list, rankings and Pareto front of a trained model (train first if no checkpoint)."""
    from edgeskip.pareto.design import design_space, format_table, write_design
    from edgeskip.pareto.latency import make_source

    _threads(threads)
    out_dir = Path(out)
    if checkpoint is None:
        from edgeskip.train import TrainConfig
        from edgeskip.train import train as run_train

        checkpoint = str(out_dir / "model.pt")
        data = _data_spec(dataset, data_dir, val_fraction, seed, image_size, download)
        run_train(
            checkpoint,
            data,
            model_config(model_spec, model_args, block_names, depth),
            TrainConfig(epochs=epochs, lr=lr, seed=seed),
            resume=Path(checkpoint).exists(),
            progress=not quiet,
            init_weights=init_weights,
        )
        data_dir = None
    model, ck, splits = _load_for_eval(checkpoint, data_dir)
    sens, front = design_space(
        model,
        splits,
        ck.dataset_id,
        use=ranking,
        latency=make_source(latency, model, repeats),
        seed=seed,
        search=_search_spec(search, beam_width, search_budget, screen_images),
    )
    paths = write_design(out_dir, sens, front)
    click.echo(format_table(front))
    click.echo("wrote " + ", ".join(str(p) for p in paths))


@cli.command()
@click.option("--checkpoint", type=click.Path(dir_okay=False), required=True)
@click.option(
    "--skip",
    "skip",
    default=None,
    help="Skip array, e.g. 110111 (1 = execute), or option array with 8 = int8, e.g. 818011, and +8 for the stem, "
    "stage entries and head in int8 too, e.g. 818011+8; default: no skipping.",
)
@click.option("--split", type=click.Choice(["val", "test"]), default="test", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Override the data folder.")
@click.option(
    "--calibration-images",
    type=click.IntRange(1, 100000),
    default=512,
    show_default=True,
    help="Training images that calibrate the int8 blocks of an option array.",
)
def evaluate(checkpoint, skip, split, data_dir, calibration_images) -> None:
    """Accuracy and MACs of one skip (or option) array."""
    from edgeskip.models import macs
    from edgeskip.skip import INT8, has_rest, normalize_options
    from edgeskip.train import evaluate as run_eval

    model, ck, splits = _load_for_eval(checkpoint, data_dir)
    if ck.gate_cfg is not None and ck.gate_cfg.kind == "dfs" and skip is None:
        from edgeskip.train.gates import evaluate_dfs

        st = evaluate_dfs(model, getattr(splits, split), splits.norm)
        names = ["skip", *(f"{b}-bit" for b in ck.gate_cfg.bits), "full"]
        click.echo(
            f"{split} accuracy {st.accuracy:.4f}  cp {st.mean_cp:.3f} (of the gated blocks' full cost, a k-bit "
            f"block costing (k/32)^2)  mean skipped {st.mean_skipped:.2f}/{model.cfg.num_gates}  options "
            + " ".join(f"{n} {r:.2f}" for n, r in zip(names, st.option_rates))
        )
        return
    if ck.gate_cfg is not None and skip is None:
        from edgeskip.train.gates import evaluate_gated

        st = evaluate_gated(model, getattr(splits, split), splits.norm)
        click.echo(
            f"{split} accuracy {st.accuracy:.4f}  mean MACs {st.mean_macs:.0f} (gates included)  "
            f"mean skipped {st.mean_skipped:.2f}/{model.cfg.num_gates}  skip rate per gate "
            + " ".join(f"{v:.2f}" for v in st.skip_rate_per_gate)
        )
        return
    s = normalize_options(skip, model.cfg.num_gates) if skip is not None else None
    int8 = ""
    if s is not None and (INT8 in s or has_rest(s)):
        from edgeskip.models.quant import calibrate, calibrate_rest
        from edgeskip.pareto.design import calibration_batches

        if not hasattr(model, "attach_int8"):
            raise EdgeskipError(f"int8 variants exist for edgeskip's own ResNet blocks, not {model.cfg.name}'s")
        batches = calibration_batches(splits, calibration_images)
        blocks = [b for b, o in zip(model.cfg.gated_blocks, s) if o == INT8]
        model.attach_int8(calibrate(model, batches, blocks))
        if has_rest(s):
            model.attach_int8_rest(calibrate_rest(model, batches))
        rest = " + the rest" if has_rest(s) else ""
        int8 = f"  int8 {s.count(INT8)}{rest} (calibrated on {calibration_images} training images)"
    acc = run_eval(model, getattr(splits, split), splits.norm, s)
    click.echo(
        f"{split} accuracy {acc:.4f}  MACs {macs(model.cfg, s)}  skipped {0 if s is None else s.count(0)}"
        f"/{model.cfg.num_gates}{int8}"
    )


@cli.command(name="compile")
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    default=None,
    help="Trained checkpoint. Without it, a model is first trained on --dataset.",
)
@data_options
@model_options
@click.option("--depth", type=int, default=20, show_default=True, help="Depth when training first.")
@click.option("--epochs", type=int, default=30, show_default=True, help="Epochs when training first.")
@FIRST_LR_OPTION
@click.option(
    "--target",
    "targets",
    default="host,aarch64,odroid-xu4",
    show_default=True,
    help="Comma-separated targets: host, aarch64, aarch64-cortex-a53/-a72/-a76, aarch64-i8mm, odroid-xu4.",
)
@click.option("--repeats", type=int, default=30, show_default=True, help="Latency repeats per config.")
@click.option(
    "--static-data-tiling",
    type=click.Choice(("auto", "on", "off")),
    default="auto",
    show_default=True,
    help="IREE data tiling in the static functions (the gated one always has it): auto compiles them channels-last "
    "with and without it and NCHW, measures the three on this host and keeps the fastest (other targets keep "
    "channels-last with it); on/off: channels-last with/without it on every target.",
)
@search_options
@click.option(
    "--int8",
    is_flag=True,
    help="Fractional depth: int8 variants of the gated blocks (post-training, calibrated on training "
    "images) as a third option beside full and skip, and the stem, stage entries and head in int8 as one more "
    "option of the whole config; each back end steps through its own front.",
)
@click.option(
    "--int8-rest/--no-int8-rest",
    default=True,
    show_default=True,
    help="With --int8: whether the stem, the ungated blocks (stage entries) and the head may run in int8 too.",
)
@click.option(
    "--calibration-images",
    type=click.IntRange(1, 100000),
    default=512,
    show_default=True,
    help="Training images that calibrate the int8 activation ranges (with --int8, and DFS's qlinear form).",
)
@click.option(
    "--dfs-int8",
    type=click.Choice(("qlinear", "integer", "qdq")),
    default="qlinear",
    show_default=True,
    help="DFS checkpoints: the 8-bit option as onnxruntime's fused int8 convolution (qlinear: BatchNorm "
    "folded, int8 weights, one calibrated rounding more than DFS's model), as ConvInteger + float "
    "rescale (integer: DFS's arithmetic exactly, no faster than float), or Q/DQ around a float Conv.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="bundles/model",
    show_default=True,
    help="Bundle folder (built in a temporary folder, then renamed).",
)
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@click.option("--threads", type=int, default=None, help="Torch CPU threads.")
@click.option("--quiet", is_flag=True, help="No progress output.")
def compile_cmd(
    checkpoint,
    dataset,
    data_dir,
    download,
    val_fraction,
    image_size,
    seed,
    model_spec,
    model_args,
    block_names,
    init_weights,
    depth,
    epochs,
    lr,
    targets,
    repeats,
    static_data_tiling,
    search,
    beam_width,
    search_budget,
    screen_images,
    int8,
    int8_rest,
    calibration_images,
    dfs_int8,
    out,
    force,
    threads,
    quiet,
) -> None:
    """Train (or --checkpoint), rank, measure, export, compile and verify: a deployment bundle."""
    from edgeskip.export.bundle import build_bundle
    from edgeskip.export.iree_compile import parse_targets, with_static_tiling
    from edgeskip.pareto.design import format_table

    _threads(threads)
    target_list = with_static_tiling(parse_targets(targets), static_data_tiling)  # fail fast, before any training
    out_dir = Path(out)
    if out_dir.exists() and not force:
        raise EdgeskipError(f"{out_dir} exists; pass --force to replace it")
    log = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    if checkpoint is None:
        from edgeskip.train import TrainConfig
        from edgeskip.train import train as run_train

        checkpoint = str(out_dir.parent / f".{out_dir.name}.model.pt")
        data = _data_spec(dataset, data_dir, val_fraction, seed, image_size, download)
        cfg = model_config(model_spec, model_args, block_names, depth)
        train_cfg = TrainConfig(epochs=epochs, lr=lr, seed=seed)
        if Path(checkpoint).exists():  # an interrupted or earlier run of this --out: continued only if it is this one
            from edgeskip.train import load_checkpoint
            from edgeskip.train.checkpoint import settings_differ

            changed = settings_differ(load_checkpoint(checkpoint), data, cfg, train_cfg)
            if changed:
                stale = Path(checkpoint).with_suffix(".stale.pt")
                os.replace(checkpoint, stale)  # kept, not deleted: a mistyped option costs no finished training
                click.echo(
                    f"{checkpoint} was trained with other settings ({'; '.join(changed)}): training anew "
                    f"(the old checkpoint is now {stale})",
                    err=True,
                )
        log(f"training {cfg.name} on {dataset} ...")
        run_train(
            checkpoint,
            data,
            cfg,
            train_cfg,
            resume=Path(checkpoint).exists(),
            progress=not quiet,
            init_weights=init_weights,
        )
        data_dir = None
    _, ck, splits = _load_for_eval(checkpoint, data_dir)
    if ck.gate_cfg is not None:  # SkipNet or DFS: no ranking or front, the gates decide per input
        from edgeskip.export.skipnet_bundle import build_skipnet_bundle

        if int8:
            raise EdgeskipError("--int8 applies to edgeskip models; learned gates (SkipNet, DFS) decide per input")
        if click.get_current_context().get_parameter_source("search") == click.core.ParameterSource.COMMANDLINE:
            raise EdgeskipError("--search applies to edgeskip models; learned gates (SkipNet, DFS) decide per input")

        bundle = build_skipnet_bundle(
            ck,
            splits,
            out_dir,
            target_list,
            force=force,
            log=log,
            dfs_int8=dfs_int8,
            calibration_images=calibration_images,
        )
        m = load_manifest(bundle)
        click.echo(skipnet_summary(m))
        click.echo(f"wrote {'DFS' if m.kind == 'dfs' else 'SkipNet'} bundle {bundle}; bundle digest {m.digest}")
        return
    bundle = build_bundle(
        ck,
        splits,
        out_dir,
        target_list,
        repeats=repeats,
        force=force,
        log=log,
        int8=int8,
        calibration_images=calibration_images,
        int8_rest=int8_rest,
        search=_search_spec(search, beam_width, search_budget, screen_images),
    )
    if checkpoint.endswith(f".{out_dir.name}.model.pt"):
        Path(checkpoint).unlink(missing_ok=True)  # the bundle carries its own copy (model.pt)
    manifest = load_manifest(bundle)
    if manifest.fronts:
        click.echo(configs_summary(manifest))
    else:
        click.echo(format_table(json.loads((bundle / "pareto.json").read_text())))
    where = (
        f"targets {', '.join(manifest.targets)}" if manifest.iree is not None else "no IREE modules: onnxruntime only"
    )
    click.echo(
        f"wrote bundle {bundle} ({len(manifest.artifacts)} artifacts, {where}; fastest host backend: "
        f"{manifest.host_fastest})"
    )
    for name, v in manifest.extra.get("verification", {}).get("iree", {}).items():
        if isinstance(v, dict) and v.get("compiled") is False:
            click.echo(f"target {name} left out: {v.get('reason')}")
    click.echo(f"bundle digest {manifest.digest}  (serve/bench/inspect --digest refuse any other manifest)")


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@DIGEST_OPTION
@VERIFY_KEY_OPTION
@PROFILE_OPTION
def inspect(bundle, digest, verify_key, profile) -> None:
    """Print a bundle's manifest summary and Pareto table; verify every artifact's sha256."""

    m = load_manifest(bundle, digest=digest, verify_key=verify_key)
    skipnet = m.learned_gates
    what = (
        f"{'DFS' if m.kind == 'dfs' else 'SkipNet'} ({m.extra.get('gates', {}).get('kind', '?')} gates)"
        if skipnet
        else f"{len(m.configs)} Pareto configs"
    )
    click.echo(
        f"bundle {bundle}: {model_label(m.model)} on {m.dataset_id}, input {list(m.input.shape)}, "
        f"B_s = {m.num_gates}, {what}, manifest version {m.version}"
    )
    click.echo("tools: " + ", ".join(f"{k} {v}" for k, v in m.extra.get("tools", {}).items()))
    if m.iree is None:
        click.echo(f"IREE: no modules ({m.iree_unavailable}); the graphs run on onnxruntime")
    checks = m.extra.get("verification", {}).get("iree", {})
    for name, t in m.targets.items():
        click.echo(f"target {name}: {t.triple}  verification: {json.dumps(checks.get(name, {}))}")
    for name, v in checks.items():
        if isinstance(v, dict) and v.get("compiled") is False:
            click.echo(f"target {name}: not compiled ({v.get('reason')})")
    if not skipnet:
        from edgeskip.runtime.profile import profiled

        compiled = len(m.configs)
        m, path = profiled(bundle, m, profile)
        if path is not None:
            click.echo(
                f"fronts measured on this machine: {path} ({m.extra['profile']['cpu']}; the compile host's "
                f"{compiled} configs replaced; --profile none shows them)"
            )
        else:
            click.echo("fronts: the compile host's (no profile of this machine; make one with edgeskip profile)")
    click.echo(f"fastest host backend: {m.host_fastest}")
    click.echo(skipnet_summary(m) if skipnet else configs_summary(m))
    click.echo(
        f"all {len(m.artifacts)} artifact hashes match; bundle digest {m.digest}"
        + ("; signature verified" if verify_key else "")
    )


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option(
    "--backend",
    "backends",
    default="all",
    show_default=True,
    help="Engines to measure: all (those installed here) or a comma-separated list (iree,onnxruntime).",
)
@click.option("--repeats", type=click.IntRange(min=3), default=30, show_default=True, help="Round-robin rounds.")
@POWER_OPTION
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Profile file [default: BUNDLE/profiles/<machine>.json].",
)
@click.option(
    "--energy-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="With --power: back-to-back inferences of each config for this long (20 samples a second).",
)
@engine_options
@DIGEST_OPTION
def profile(bundle, backends, repeats, power, out, energy_seconds, target, driver, ort_threads, digest) -> None:
    """Measure every candidate config of a bundle on this machine and draw its own fronts (serve and bench use
    them here)."""
    from edgeskip.runtime.power import open_meter
    from edgeskip.runtime.profile import default_path, installed_backends, measure, write_profile

    names = installed_backends() if backends == "all" else [b.strip() for b in backends.split(",") if b.strip()]
    bad = [b for b in names if b not in BACKENDS or b == "auto"]
    if bad or not names:
        raise EdgeskipError(f"--backend takes all or iree,onnxruntime; got {backends!r}")
    meter = None
    if power:
        meter, line = open_meter(power)
        click.echo(line if meter is None else f"energy: {line}")
    try:
        p = measure(bundle, names, repeats, meter, click.echo, target, driver, ort_threads, digest, energy_seconds)
    finally:
        if meter is not None:
            meter.close()
    dest = write_profile(p, out or default_path(bundle, p.machine["key"]))
    by_module = {c.module: c for c in p.candidates}
    for backend, front in p.fronts.items():
        steps = ", ".join(f"{m.removeprefix('static_')} {1e3 * by_module[m].latency_s[backend]:.3f} ms" for m in front)
        click.echo(
            f"{backend} front here ({len(front)} of {sum(backend in c.latency_s for c in p.candidates)}): {steps}"
        )
    click.echo(f"wrote {dest} ({p.machine['cpu']}; bound to bundle {p.bundle_digest[:19]}...)")


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--key", required=True, type=click.Path(dir_okay=False), help="EC private key (PEM) to sign with.")
def sign(bundle, key) -> None:
    """Sign every file of a bundle (OpenSSF model-signing, offline key): BUNDLE/bundle.sig."""
    from edgeskip.signing import sign_bundle

    load_manifest(bundle)  # only a valid, intact bundle gets signed
    click.echo(f"signed {bundle}: {sign_bundle(bundle, key)} (check with --verify-key PUB.pem)")


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option(
    "--min-acc",
    type=float,
    default=0.0,
    show_default=True,
    help="Drop Pareto configs whose validation accuracy is below this (0..1).",
)
@click.option(
    "--delta-req",
    type=float,
    default=None,
    help="paper: idle gap (s) before moving toward less skipping [default: measured end-to-end service "
    "time of the no-skip config].",
)
@click.option("--config", "fixed", type=int, default=None, help="Fixed-config mode (baselines): always this config.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0 picks a free port (printed)."
)
@click.option(
    "--max-body",
    type=click.IntRange(min=1),
    default=8 * 1024 * 1024,
    show_default=True,
    help="Largest request body (bytes).",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=4096 * 4096,
    show_default=True,
    help="Largest image (width x height) decoded; larger ones get 413 before decoding.",
)
@click.option(
    "--max-inflight-bytes",
    type=click.IntRange(min=1),
    default=32 * 1024 * 1024,
    show_default=True,
    help="Request bodies received at once, by declared length; beyond it 503 at once.",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to receive a whole request body (then 408).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Open connections at once; beyond it a new one gets 503 and is closed.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=15.0,
    show_default=True,
    help="Seconds a connection may go without a complete request header (new, between requests, or "
    "trickling one); then it is closed.",
)
@engine_options
@click.option("--model-name", default=None, help="Model name on the KServe v2 API [default: the bundle folder's name].")
@click.option(
    "--uds",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also serve HTTP on this Unix-domain socket (a stale socket of a dead daemon is replaced).",
)
@click.option(
    "--grpc-uds",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also serve KServe v2 over gRPC on this Unix-domain socket (needs edgeskip[grpc]).",
)
@click.option(
    "--lean-uds",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also serve inference only (KServe v2 and /v1 infer, HTTP/1.1) on this Unix-domain socket, each "
    "connection answered on its own thread: no event-loop hand-offs, for local clients (bench/README 15.3).",
)
@click.option(
    "--lean-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="The lean listener of --lean-uds on this TCP port of --host as well (0 picks a free one). Off unless given.",
)
@click.option(
    "--grpc-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Also serve KServe v2 over gRPC on this port (0 picks a free one; needs edgeskip[grpc]). Off unless given.",
)
@DIGEST_OPTION
@VERIFY_KEY_OPTION
@click.option(
    "--event-loop",
    type=click.Choice(EVENT_LOOPS),
    default="asyncio",
    show_default=True,
    help="uvloop: slightly less time per request, ~8 MB more memory (needs uvloop installed).",
)
@click.option(
    "--loop-nice",
    type=click.IntRange(0, 19),
    default=5,
    show_default=True,
    help="Run the event loop thread this much nicer than the inference thread (Linux; 0: same priority). "
    "Under overload inference then gets the CPU before yet more drops are answered.",
)
@click.option(
    "--inline-max-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="For one client sending one request at a time (a camera loop beside the daemon): a model whose service "
    "time is at most this runs a request that finds the executor idle on the event loop itself, without the two "
    "thread hand-offs (~80 us less per request). A request that arrives meanwhile is read only when that job ends: "
    "it waits in the socket instead of being queued or dropped on arrival, so leave it 0 (off) for concurrent "
    "clients (bench/README 15.1).",
)
@POWER_OPTION
@PROFILE_OPTION
@policy_options
def serve(
    bundle,
    min_acc,
    delta_req,
    fixed,
    backend,
    host,
    port,
    max_body,
    max_pixels,
    max_inflight_bytes,
    body_timeout,
    max_connections,
    idle_timeout,
    target,
    driver,
    ort_threads,
    model_name,
    uds,
    grpc_uds,
    lean_uds,
    lean_port,
    grpc_port,
    event_loop,
    loop_nice,
    inline_max_ms,
    digest,
    verify_key,
    policy,
    target_util,
    hysteresis,
    policy_param,
    queue_depth,
    deadline_ms,
    power,
    profile,
) -> None:
    """Serve inference over HTTP (/v1 and KServe v2), adapting depth to load (--policy)."""
    import logging

    from edgeskip.runtime.daemon import run, run_daemon

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = policy_params(target_util, hysteresis, policy_param)
    run(
        run_daemon(
            bundle,
            min_acc,
            delta_req,
            fixed,
            backend,
            host,
            port,
            max_body,
            on_ready=lambda msg: click.echo(msg, err=False),
            model_name=model_name,
            max_pixels=max_pixels,
            max_inflight_bytes=max_inflight_bytes,
            body_timeout=body_timeout,
            policy=policy,
            queue_depth=queue_depth,
            deadline=deadline_s(deadline_ms),
            policy_params=params,
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            loop_nice=loop_nice,
            inline_max_s=inline_max_ms / 1e3,
            grpc_port=grpc_port,
            uds=uds,
            grpc_uds=grpc_uds,
            lean_uds=lean_uds,
            lean_port=lean_port,
            power=power,
            target=target,
            profile=profile,
            driver=driver,
            threads=ort_threads,
            digest=digest,
            verify_key=verify_key,
        ),
        event_loop,
    )


def _front_line(doc: dict) -> None:
    measured = doc.get("front_profile")
    click.echo(
        f"front: measured on this machine ({measured.get('path', measured['machine'])})"
        if measured
        else "front: the compile host's (no profile of this machine)"
    )


def _power_line(power: dict) -> None:
    """Which power source measured the runs (or the one line saying there is none)."""
    if power["source"]:
        idle = f", idle baseline {power['idle_w']:.3f} W" if power["idle_w"] is not None else ""
        click.echo(f"energy: {power['source']}, sampled every {power['interval_s'] * 1e3:g} ms{idle}")
    elif power["note"]:
        click.echo(power["note"])


@cli.command(name="bench")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option(
    "--pattern",
    type=click.Choice(PATTERNS),
    default="paper",
    show_default=True,
    help="paper: base period, +-25% change every 10th request; poisson; onoff: bursts at 2x the rate; "
    "ramp: rate rising 0.5x -> 1.5x; or a trace file.",
)
@click.option(
    "--count", type=click.IntRange(min=1), default=1000, show_default=True, help="Requests to send (bounded)."
)
@click.option(
    "--period",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Base period (s) [default: the original's end-to-end service time / --load].",
)
@click.option(
    "--load",
    type=click.FloatRange(min=0, min_open=True),
    default=1.25,
    show_default=True,
    help="Offered load relative to the original network.",
)
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None, help="Poisson rate (requests/s).")
@click.option("--trace", type=click.Path(dir_okay=False), default=None, help="Arrival times to replay.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--min-acc", type=float, default=0.0, show_default=True)
@click.option(
    "--delta-req",
    type=float,
    default=None,
    help="paper: Delta_req (s) [default: the original's measured end-to-end service time].",
)
@click.option("--configs", default=None, help="Fixed configs to compare, e.g. 0,2 [default: all].")
@click.option("--url", default=None, help="A running daemon (loopback only); default: drive the executor in-process.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option(
    "--compare",
    type=click.Path(file_okay=False),
    default=None,
    help="A SkipNet bundle of the same data set, replayed on the same arrivals (run 'skipnet').",
)
@click.option(
    "--loadgen",
    is_flag=True,
    help="Drive the daemon at --url with MLPerf LoadGen's server scenario "
    "(Poisson arrivals at --rate; drops completed at once and counted separately).",
)
@click.option(
    "--images",
    "images_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Labelled images (.npz: images float32 [N,C,H,W] normalised, labels) [default: the bundle's "
    "test split, which needs the design packages].",
)
@DIGEST_OPTION
@VERIFY_KEY_OPTION
@click.option(
    "--save-images",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the labelled images used to this .npz (for a runtime-only install's --images).",
)
@click.option("--out", type=click.Path(file_okay=False), default="runs/bench", show_default=True)
@engine_options
@policy_options
@click.option(
    "--runs",
    default=None,
    metavar="LABELS",
    help="Runs to compare instead of --policy + --configs, e.g. original,paper,rate,mix+q4+d2 "
    "(NAME[+qDEPTH][+dDEADLINE_MS]; NAME: original, config K or a policy).",
)
@click.option(
    "--loads",
    default=None,
    metavar="L1,L2,...",
    help="Load sweep: every run at each of these loads (x the original's capacity) and --seeds seeds; "
    "writes sweep.json and sweep.png. Without --runs: original,paper,rate,mix and the run that "
    "--policy/--queue-depth/--deadline-ms describe.",
)
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Seeds per load (--loads).")
@POWER_OPTION
@PROFILE_OPTION
@click.option(
    "--idle-baseline",
    type=float,
    default=0.0,
    metavar="SECONDS",
    help="With --power: measure idle power this long first; energy above idle is reported too.",
)
def bench_cmd(
    bundle,
    pattern,
    count,
    period,
    load,
    rate,
    trace,
    seed,
    min_acc,
    delta_req,
    configs,
    url,
    backend,
    compare,
    loadgen,
    images_file,
    digest,
    verify_key,
    save_images,
    out,
    target,
    driver,
    ort_threads,
    policy,
    target_util,
    hysteresis,
    policy_param,
    queue_depth,
    deadline_ms,
    runs,
    loads,
    seeds,
    power,
    idle_baseline,
    profile,
) -> None:
    """Replay a workload against adaptive depth and fixed configs (the paper's Table I), or sweep the load."""
    import shlex

    from edgeskip.bench.report import format_table
    from edgeskip.bench.run import run_benchmark

    if loadgen:
        from edgeskip.bench.loadgen import run_loadgen
        from edgeskip.bench.run import test_images
        from edgeskip.utils.atomic import write_json

        if not url or not rate:
            raise EdgeskipError("--loadgen needs --url (a running daemon) and --rate (target queries per second)")
        from edgeskip.bench.drivers import probe_daemon

        probe_daemon(url)
        manifest = load_manifest(bundle, digest=digest, verify_key=verify_key)
        images, labels = test_images(Path(bundle), 2000, images_file, manifest)
        doc = run_loadgen(url, images, labels, rate, count, out, seed)
        doc["command"] = "edgeskip " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        write_json(Path(out) / "loadgen.json", doc)
        click.echo(
            f"LoadGen server scenario at {rate:g} QPS: {doc['processed']} processed, {doc['dropped']} dropped, "
            f"{doc['errors']} errors, accuracy {doc['accuracy'] if doc['accuracy'] is None else round(doc['accuracy'], 4)}, "
            f"configs {doc['per_config']}; LoadGen log in {out}"
        )
        return

    params = policy_params(target_util, hysteresis, policy_param)
    command = "edgeskip " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if loads is not None:
        from edgeskip.bench.report import format_sweep
        from edgeskip.bench.run import run_sweep

        try:
            values = [float(x) for x in loads.split(",") if x.strip()]
        except ValueError:
            raise EdgeskipError(f"--loads must be comma-separated numbers, e.g. 0.5,1,1.25,2; got {loads!r}") from None
        if pattern == "trace" or rate is not None or period is not None:
            raise EdgeskipError(
                "--loads sets the period itself: it takes a synthetic --pattern, not --trace, --rate or --period"
            )
        from edgeskip.bench.sweep import default_runs

        runs = runs or default_runs(policy, queue_depth, deadline_ms)
        doc = run_sweep(
            bundle,
            out,
            values,
            seeds,
            runs,
            pattern,
            count,
            min_acc,
            delta_req,
            url,
            backend,
            command,
            compare,
            images_file,
            params,
            power=power,
            idle_baseline=idle_baseline,
            target=target,
            profile=profile,
            driver=driver,
            threads=ort_threads,
            digest=digest,
            verify_key=verify_key,
        )
        click.echo(
            f"{pattern} workload, {count} requests per run, original's service time "
            f"{doc['service_time_s'] * 1e3:.3f} ms, backend {doc['backend']}, target {doc['target']}"
        )
        _power_line(doc["power"])
        click.echo(format_sweep(doc["table"]))
        png = f", {Path(out) / doc['sweep_png']}" if doc["sweep_png"] else " (no plot: matplotlib is not installed)"
        click.echo(f"wrote {Path(out) / 'sweep.json'}{png}")
        return
    try:
        fixed = [int(c) for c in configs.split(",")] if configs else None
    except ValueError:
        raise EdgeskipError(f"--configs must be comma-separated config indices, e.g. 0,2; got {configs!r}") from None
    doc = run_benchmark(
        bundle,
        out,
        pattern,
        count,
        period,
        load,
        rate,
        trace,
        seed,
        min_acc,
        delta_req,
        fixed,
        url,
        backend,
        command=command,
        compare=compare,
        images=images_file,
        save_images=save_images,
        policy=policy,
        policy_params=params,
        queue_depth=queue_depth,
        deadline=deadline_s(deadline_ms),
        runs=runs,
        power=power,
        idle_baseline=idle_baseline,
        target=target,
        profile=profile,
        driver=driver,
        threads=ort_threads,
        digest=digest,
        verify_key=verify_key,
    )
    click.echo(
        f"{doc['pattern']} workload, {doc['count']} requests, base period {doc['base_period_s'] * 1e3:.3f} ms, "
        f"original's service time {doc['service_time_s'] * 1e3:.3f} ms (load {doc['load']:.2f}), "
        f"policy {doc['policy']}, backend {doc['backend']}, target {doc['target']}"
    )
    _front_line(doc)
    _power_line(doc["power"])
    click.echo(format_table(doc["table"]))
    samples = [s["energy"]["samples"] for s in doc["summaries"].values() if "energy" in s]
    if samples and min(samples) < 20:
        click.echo(
            f"note: the shortest run lasted {min(samples)} power samples: its energy is coarse; run longer (--count)"
        )
    png = (
        f", {Path(out) / doc['timeline_png']}" if doc["timeline_png"] else " (no timeline: matplotlib is not installed)"
    )
    click.echo(f"wrote {Path(out) / 'bench.json'}{png}")


def main() -> None:
    """Console entry point."""
    cli(prog_name="edgeskip")


if __name__ == "__main__":
    main()
