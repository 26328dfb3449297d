"""`roberta-jax plan`: will a config fit a TPU slice, with which mesh, and what will a step cost?

Answered before renting the slice, on any machine: libtpu (the `[tpu]` extra; no TPU needed)
describes the slice's devices, and the very train step `pretrain` runs (train.make_steps,
build_state, jit_train_step) is compiled for them ahead of time. XLA then says what each chip
holds (`memory_analysis()`), refuses what does not fit, and its HLO gives the FLOPs and the
collectives of one step (hlo_stats). `--topology cpu` plans for this host's own CPU devices,
which a real run can check.

    slice (name -> libtpu topology -> devices) -> compile (config, mesh) -> report
    search: mesh shapes x remat x grad_accum, compiled in order of expected speed
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import re
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from roberta_jax import sharding as shd
from roberta_jax import train
from roberta_jax.errors import UserError
from roberta_jax.flops import peak_flops_per_device, train_flops_per_token
from roberta_jax.hlo_stats import HloModule, xla_cost_analysis
from roberta_jax.optim import make_optimizer

GiB = 1024 ** 3
DEFAULT_MFU = 0.4
# roberta-base's BPE: what model.vocab_size=-1 means without prepared data
ROBERTA_BPE_VOCAB = 50265
REMAT_POLICIES = ("", "dots_with_no_batch_dims_saveable", "full")   # least recompute first


# =============================================================================== slices

@dataclasses.dataclass(frozen=True)
class Chip:
    """Cloud TPU names count TensorCores (two per chip) for v4 and v5p."""
    generation: str          # as in Cloud TPU names: v4, v5p, v5e, v6e
    device_kind: str         # as jax names the device
    hbm_bytes: int
    torus_dims: int          # 3: chips in 4x4x4 cubes; 2: a 2-D grid of up to 16x16
    counts_cores: bool

CHIPS = {c.generation: c for c in (
    Chip("v4", "TPU v4", 32 * GiB, 3, True),
    Chip("v5p", "TPU v5", 95 * GiB, 3, True),
    Chip("v5e", "TPU v5 lite", 16 * GiB, 2, False),
    Chip("v6e", "TPU v6 lite", 32 * GiB, 2, False),
)}
_ALIASES = {"v5litepod": "v5e", "v5": "v5p"}   # Cloud's v5e name; libtpu's name for v5p


@dataclasses.dataclass
class Slice:
    name: str                # as the user wrote it
    topology: str            # libtpu's topology string, or "cpu"
    devices: list
    num_slices: int
    hbm_bytes: int           # per device
    usable_bytes: int        # per device: what XLA lets a program use (HBM less its reserve)
    peak_flops: float        # per device
    peak_source: str

    @property
    def hosts(self) -> int:
        return len({d.process_index for d in self.devices})

    @property
    def device_kind(self) -> str:
        return self.devices[0].device_kind

    def describe(self) -> str:
        slices = f"{self.num_slices} slices x " if self.num_slices > 1 else ""
        per_slice = len(self.devices) // self.num_slices
        if self.topology == "cpu":
            return f"this host's CPU ({len(self.devices)} device(s))"
        return (f"{self.name} ({slices}{self.topology}: {per_slice} chips of {self.device_kind}, "
                f"{self.hosts} hosts)")


def known_names() -> str:
    """The slice names `find_slice` accepts, for error messages and --help."""
    def series(chip):
        first = 8 if chip.counts_cores else 1
        return ", ".join(f"{chip.generation}-{first * 2 ** i}" for i in range(3)) + ", ..."
    return ("Cloud TPU names " + "; ".join(series(c) for c in CHIPS.values())
            + " (power-of-two sizes; v5litepod-N = v5e-N); libtpu topology strings such as "
            "v4:4x4x4, v5p:4x4x12, v5e:16x16, v6e:8x8; or cpu (this host's own devices)")


def _default_shape(chips: int, dims: int) -> list[int]:
    """Cloud TPU's default slice shape for a power-of-two chip count (v4-128 -> 4x4x4, v5e-128
    -> 8x16): grow by doubling the last of the shortest sides."""
    shape = [2, 2, 1] if dims == 3 else [1, 1]
    if chips < math.prod(shape):
        raise ValueError
    while math.prod(shape) < chips:
        shortest = min(shape)
        last = max(i for i, s in enumerate(shape) if s == shortest)
        shape[last] *= 2
    return shape


def parse_slice_name(name: str) -> tuple[Chip, list[int]]:
    """'v5p-128' or 'v5p:4x4x4' -> (chip, chips per side)."""
    text = name.strip().lower()
    cloud = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", text)
    libtpu = re.fullmatch(r"(v\d+[a-z]*):(\d+(?:x\d+)+)", text)
    match = cloud or libtpu
    generation = _ALIASES.get(match.group(1), match.group(1)) if match else None
    if generation not in CHIPS:
        raise UserError(f"unknown topology {name!r}; known: {known_names()}")
    chip = CHIPS[generation]
    if libtpu:
        shape = [int(s) for s in libtpu.group(2).split("x")]
        if len(shape) != chip.torus_dims:
            raise UserError(f"{name}: a {chip.generation} topology has {chip.torus_dims} sides, "
                            f"e.g. {chip.generation}:{'x'.join(['4'] * chip.torus_dims)}; "
                            f"known: {known_names()}")
        return chip, shape
    count = int(cloud.group(2))
    chips = count // 2 if chip.counts_cores else count
    if chip.counts_cores and count % 2 or chips < 1 or chips & (chips - 1):
        raise UserError(f"{name}: not a slice size this tool knows how to lay out; give its "
                        f"shape as a topology string (e.g. {chip.generation}:"
                        f"{'x'.join(['4'] * chip.torus_dims)}). Known: {known_names()}")
    try:
        return chip, _default_shape(chips, chip.torus_dims)
    except ValueError:
        raise UserError(f"{name}: too small for a {chip.generation} slice; known: "
                        f"{known_names()}") from None


def find_slice(name: str, num_slices: int = 1) -> Slice:
    """The devices of `num_slices` slices called `name`, as libtpu describes them, with their
    memory and peak FLOP/s; `cpu` is this host's own CPU devices."""
    if num_slices < 1:
        raise UserError(f"--num-slices must be at least 1, not {num_slices}")
    if name.strip().lower() == "cpu":
        if num_slices != 1:
            raise UserError("--num-slices needs a TPU topology, not cpu")
        devices = jax.devices("cpu")
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        peak, source = peak_flops_per_device(devices[0])
        share = ram // len(devices)
        return Slice("cpu", "cpu", devices, 1, share, share, peak, source)

    chip, shape = parse_slice_name(name)
    if importlib.util.find_spec("libtpu") is None and not os.environ.get("TPU_LIBRARY_PATH"):
        raise UserError(_NO_LIBTPU)
    topology = f"{chip.generation}:{'x'.join(map(str, shape))}"
    options = {"chip_config_name": "megacore" if chip.counts_cores else "default",
               # Full cubes of a v4 / v5p pod and 16-chip sides of v5e / v6e wrap around.
               "wrap": tuple(all(s >= 4 for s in shape) if chip.torus_dims == 3 else s == 16
                             for s in (shape + [1])[:3])}
    if chip.torus_dims == 2 and math.prod(shape) < 4:
        options["chips_per_host_bounds"] = (*shape, 1)   # one host holds the whole slice
    if num_slices > 1:
        options["num_slices"] = num_slices
    devices = _topology_devices(name, topology, options)
    usable = _usable_bytes(devices[0]) or chip.hbm_bytes
    peak, source = peak_flops_per_device(devices[0])
    return Slice(name, topology, devices, num_slices, chip.hbm_bytes, usable, peak, source)


_NO_LIBTPU = (f"planning for a TPU slice needs libtpu (no TPU needed): pip install "
              f"'roberta_jax[tpu]' (or pip install \"jax[tpu]=={jax.__version__}\")")


def _topology_devices(name: str, topology: str, options: dict) -> list:
    from jax.experimental import topologies
    # Several planners may run at once: libtpu's lock file only guards real TPU chips.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        with _quiet_stderr():   # libtpu logs its search for TPU hosts that do not exist here
            return list(topologies.get_topology_desc(topology, "tpu", **options).devices)
    except RuntimeError as e:
        if "TPU support not installed" in str(e):
            raise UserError(_NO_LIBTPU) from None
        message = str(e).split("\n")[0]
        raise UserError(f"libtpu cannot describe {name} ({topology}): {message}; known: "
                        f"{known_names()}") from None


@contextlib.contextmanager
def _quiet_stderr():
    """Silence what native code writes to file descriptor 2 (Python exceptions still rise)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_usable_cache: dict[str, int | None] = {}


def _usable_bytes(device) -> int | None:
    """HBM a program may use on this chip, as XLA counts it: ask by compiling a program that
    cannot fit, and read the figure from the refusal (HBM less what the runtime reserves)."""
    kind = device.device_kind
    if kind not in _usable_cache:
        mesh = jax.sharding.Mesh(np.array([device]), ("x",))
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        row = jax.ShapeDtypeStruct((1 << 18,), jnp.float32)
        # sorting a 1 TiB copy of the row: far more temporary memory than any chip has
        probe = jax.jit(lambda x: jnp.sort(jnp.broadcast_to(x, (1 << 20, 1 << 18)), axis=0)[0],
                        in_shardings=replicated, out_shardings=replicated)
        _usable_cache[kind] = None
        try:
            probe.lower(row).compile()
        except Exception as e:
            found = _OOM_AVAILABLE.search(str(e))
            _usable_cache[kind] = _bytes(*found.groups()) if found else None
    return _usable_cache[kind]


_OOM_AVAILABLE = re.compile(r"available HBM \(([\d.]+)([KMGT]?)\)")
_OOM_NEED = re.compile(r"required for ([^(]+?) \(([\d.]+)([KMGT]?)\)")


def _bytes(number: str, unit: str) -> int:
    return int(float(number) * 1024 ** "BKMGT".index(unit or "B"))


# =============================================================================== compile

def planned_vocab(config) -> tuple[int, str]:
    """The tokenizer's vocabulary the plan assumes, and where it comes from."""
    if config.model.vocab_size != -1:
        return int(config.model.vocab_size), "model.vocab_size"
    if config.data.path:
        from roberta_jax.data.prepare import load_manifest
        return int(load_manifest(config.data.path)["tokenizer"]["vocab_size"]), config.data.path
    return ROBERTA_BPE_VOCAB, "roberta-base's BPE, as model.vocab_size=-1 and no data.path"


def masked_slots(config) -> int:
    """Masked positions per row, as the input pipeline pads them (data.masking)."""
    from roberta_jax.data.masking import MaskingSpec
    spec = MaskingSpec(vocab_size=2, special_ids=(), mask_id=0, pad_id=1,
                       mask_prob=config.data.mask_prob)
    return spec.max_masked(config.train.seq_len)


def abstract_batch(config, rows: int) -> dict:
    """The global batch the train step takes, as shapes: PretrainingBatches' arrays (tests hold
    the two to the same keys, shapes and dtypes)."""
    length, slots = config.train.seq_len, masked_slots(config)
    spec = {"input_ids": ((rows, length), jnp.int32), "attention_mask": ((rows, length), jnp.int32),
            "masked_positions": ((rows, slots), jnp.int32),
            "masked_labels": ((rows, slots), jnp.int32),
            "masked_weights": ((rows, slots), jnp.float32)}
    if config.model.document_attention:
        spec["segment_ids"] = ((rows, length), jnp.int32)
    return {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in spec.items()}


def mesh_config_for(config, slice_: Slice):
    """The config's mesh; with several slices the data axis spans them (mesh.dcn_data)."""
    mesh = config.mesh.copy_and_resolve_references()
    if slice_.num_slices > 1 and int(mesh.get("dcn_data", 1)) == 1:
        mesh.dcn_data = slice_.num_slices
    return mesh


def check_batch(config, mesh_shape, hosts: int) -> str | None:
    """Why this batch cannot be split this way (None if it can)."""
    train_cfg = config.train
    accum = train_cfg.grad_accum
    if train_cfg.batch_size % (accum * hosts):
        return (f"train.batch_size {train_cfg.batch_size} is not divisible by grad_accum x "
                f"hosts = {accum} x {hosts}")
    shards = mesh_shape[0] * mesh_shape[1]
    micro = train_cfg.batch_size // accum
    if micro % shards:
        return (f"a micro-batch of {micro} rows cannot be split over data x fsdp = {shards} "
                "devices")
    return None


def _shard_bytes(tree) -> int:
    """Bytes each device holds of a tree of sharded ShapeDtypeStructs."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))


def plan(config, slice_: Slice, *, mfu: float = DEFAULT_MFU, config_name: str = "") -> dict:
    """Compile `config`'s train step for `slice_` and report per chip memory, FLOPs, time and
    collectives (one JSON-able dict). A config that does not fit has fits=False and a reason."""
    start = time.perf_counter()
    real_vocab, vocab_source = planned_vocab(config)
    model_cfg = train.model_config(config, real_vocab)
    model = train.make_model(config, model_cfg)
    tx = make_optimizer(config.train)
    train_step, _ = train.make_steps(model, tx, config, real_vocab)
    mesh_cfg = mesh_config_for(config, slice_)
    mesh = shd.make_mesh(mesh_cfg, slice_.devices)
    shape = tuple(mesh.shape[a] for a in shd.MESH_AXES)
    train_cfg = config.train
    slots = masked_slots(config)
    tokens = train_cfg.batch_size * train_cfg.seq_len
    model_flops = tokens * train_flops_per_token(
        model_cfg.num_hidden_layers, model_cfg.hidden_size, model_cfg.intermediate_size,
        train_cfg.seq_len, model_cfg.vocab_size, head_fraction=slots / train_cfg.seq_len)
    chips = len(slice_.devices)
    step_seconds = model_flops / (chips * slice_.peak_flops * mfu)
    report = {
        "config": config_name, "topology": slice_.name, "libtpu_topology": slice_.topology,
        "device_kind": slice_.device_kind, "chips": chips, "slices": slice_.num_slices,
        "hosts": slice_.hosts,
        "mesh": dict(zip(shd.MESH_AXES, shape), dcn_data=int(mesh_cfg.get("dcn_data", 1))),
        "remat_policy": config.model.remat_policy, "grad_accum": train_cfg.grad_accum,
        "scan_layers": config.model.scan_layers, "dtype": config.model.dtype,
        "param_dtype": config.model.param_dtype,
        "batch_size": train_cfg.batch_size, "seq_len": train_cfg.seq_len,
        "tokens_per_step": tokens, "vocab_size": real_vocab,
        "padded_vocab_size": model_cfg.vocab_size, "vocab_source": vocab_source,
        "fits": False, "reason": None, "memory": None,
        "flops": {"model_per_step": model_flops,
                  "model_per_token": model_flops / tokens},
        "mfu": mfu, "peak_flops_per_chip": slice_.peak_flops, "peak_source": slice_.peak_source,
        "step_seconds": step_seconds, "tokens_per_second": tokens / step_seconds,
        "steps": train_cfg.steps, "days": train_cfg.steps * step_seconds / 86400,
        "collectives": None,
        "compile_seconds": None,   # lowering and XLA's compile (None: not compiled)
    }
    if train_cfg.seq_len > model_cfg.max_sequence_length:
        raise UserError(f"train.seq_len {train_cfg.seq_len} is longer than the model's positions "
                        f"allow ({model_cfg.max_sequence_length} tokens); lower it or raise "
                        "model.max_position_embeddings")
    reason = check_batch(config, shape, slice_.hosts)
    if reason:
        report["reason"] = reason
        return report

    length = train_cfg.seq_len
    example = {"input_ids": np.zeros((1, length), np.int32),
               "attention_mask": np.ones((1, length), np.int32),
               "masked_positions": np.zeros((1, slots), np.int32)}
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.logical_rules(config)):
        _, abstract, shardings = train.build_state(config, mesh, model, tx, example)
        lowered = train.jit_train_step(train_step, shardings, mesh, config).lower(
            abstract, abstract_batch(config, train_cfg.batch_size))
    params, opt_state = _shard_bytes(abstract.params), _shard_bytes(abstract.opt_state)
    memory = {"params": params, "optimizer_state": opt_state, "hbm": slice_.hbm_bytes,
              "usable": slice_.usable_bytes}
    report["memory"] = memory
    if params + opt_state > slice_.usable_bytes:
        report["reason"] = (f"parameters and optimizer state alone take "
                            f"{_gib(params + opt_state)} per chip, more than the "
                            f"{_gib(slice_.usable_bytes)} usable; {_ADVICE}")
        return report   # not compiled: nothing XLA could do would fit it
    try:
        compiled = compile_lowered(lowered)
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        report["reason"] = _oom_reason(str(e), params + opt_state)
        need = _OOM_NEED.search(str(e))
        if need:
            memory["required"] = _bytes(*need.groups()[1:])
        report["compile_seconds"] = time.perf_counter() - start
        return report
    report["compile_seconds"] = time.perf_counter() - start

    analysis = compiled.memory_analysis()
    memory.update(memory_breakdown(analysis))
    memory["headroom"] = slice_.usable_bytes - memory["total"]
    report["fits"] = memory["headroom"] >= 0
    if not report["fits"]:
        report["reason"] = (f"needs {_gib(memory['total'])} per chip, more than the "
                            f"{_gib(slice_.usable_bytes)} usable; {_ADVICE}")

    hlo = HloModule(compiled.as_text())
    per_chip, counted_once = hlo.flops(xla_cost_analysis)
    report["flops"].update({
        "compiled_per_chip": per_chip, "compiled_per_step": per_chip * chips,
        "compiled_per_chip_loops_once": counted_once,
        "compiled_over_model": per_chip * chips / model_flops,
        "loops": [{"where": loop.where, "trips": loop.trips,
                   "enclosing_trips": loop.enclosing_trips} for loop in hlo.loops()]})
    report["collectives"] = hlo.collectives()
    return report


def compile_lowered(lowered):
    """XLA compiles here (one place, which tests watch to see the very object planned)."""
    return lowered.compile()


_ADVICE = ("raise mesh.fsdp, train.grad_accum or set model.remat_policy (or try --search)")


def _oom_reason(message: str, state_bytes: int) -> str:
    need, available = _OOM_NEED.search(message), _OOM_AVAILABLE.search(message)
    if need and available:
        what = need.group(1).replace("HLO ", "")
        return (f"{what} need {_gib(_bytes(*need.groups()[1:]))} per chip, more than the "
                f"{_gib(_bytes(*available.groups()))} usable (parameters and optimizer "
                f"state: {_gib(state_bytes)}); {_ADVICE}")
    return f"XLA: {message.splitlines()[0]}; {_ADVICE}"


def memory_breakdown(analysis) -> dict:
    """Per device, from XLA's memory_analysis(): what is live at the step's peak."""
    out = {"arguments": analysis.argument_size_in_bytes,
           "outputs": analysis.output_size_in_bytes,
           "aliased": analysis.alias_size_in_bytes,
           "temporaries": analysis.temp_size_in_bytes,
           "program": analysis.generated_code_size_in_bytes}
    # Donated state: outputs reuse the arguments' buffers, so aliased bytes count once.
    out["total"] = (out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
                    + out["program"])
    return out


def _gib(n: float) -> str:
    return f"{n / GiB:,.2f} GiB"


def _size(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f} B"


def _flop(n: float) -> str:
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9),
                        ("MFLOP", 1e6)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f} FLOP"


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:,.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:,.1f} hours"
    if seconds >= 60:
        return f"{seconds / 60:,.1f} min"
    if seconds >= 1:
        return f"{seconds:,.2f} s"
    return f"{seconds * 1e3:,.2f} ms"


# =============================================================================== search

def search(config, slice_: Slice, *, mfu: float = DEFAULT_MFU, max_compiles: int = 12,
           config_name: str = "", on_result=None) -> list[dict]:
    """Mesh shapes (data / fsdp / tensor), remat policies and grad_accum, compiled in order of
    expected speed: least recomputation first, then the smallest fsdp and accumulation whose
    state fits; a refusal that blames temporaries raises accumulation, one that blames the
    state raises fsdp. The first remat policy that fits ends the search: every later one
    recomputes more, so none could rank above it. -> every setting tried, fitting and fastest
    first."""
    per_slice = len(slice_.devices) // slice_.num_slices
    heads = config.model.num_attention_heads
    tensors = [t for t in (1, 2, 4) if heads % t == 0 and per_slice % t == 0]
    results, compiles = [], 0

    def run(remat, data, fsdp, tensor, accum):
        nonlocal compiles
        trial = config.copy_and_resolve_references()
        trial.model.remat_policy = remat
        trial.mesh.data, trial.mesh.fsdp, trial.mesh.tensor = data, fsdp, tensor
        trial.mesh.dcn_data = slice_.num_slices
        trial.train.grad_accum = accum
        report = plan(trial, slice_, mfu=mfu, config_name=config_name)
        if report["compile_seconds"] is not None:
            compiles += 1
        results.append(report)
        if on_result:
            on_result(report)
        return report

    for remat in REMAT_POLICIES:
        found = False
        for tensor in tensors:
            fsdps = [f for f in _powers_of_two(per_slice // tensor)
                     if per_slice % (f * tensor) == 0]
            fsdp_i, accum = 0, 1
            # data x fsdp is the same for every fsdp here, so one ceiling on accumulation
            accums = [a for a in _powers_of_two(config.train.batch_size) if not check_batch(
                _with_accum(config, a), (per_slice // tensor * slice_.num_slices, 1, tensor),
                slice_.hosts)]
            while accums and fsdp_i < len(fsdps) and compiles < max_compiles:
                fsdp = fsdps[fsdp_i]
                data = per_slice // (fsdp * tensor) * slice_.num_slices
                report = run(remat, data, fsdp, tensor, accum)
                if report["fits"]:
                    found = True
                    break
                memory = report["memory"] or {}
                params = memory.get("params", 0)
                state = params + memory.get("optimizer_state", 0)
                temporaries = memory.get("required") or memory.get("temporaries")
                # What accumulation can shrink: the activations, not the state or its gradients.
                room = slice_.usable_bytes - state - params
                wanted = accum * 2 ** max(1, math.ceil(math.log2(temporaries / room))) \
                    if temporaries and room > slice_.usable_bytes / 4 else accum
                if wanted > accum and accums[-1] > accum:
                    accum = min(wanted, accums[-1])   # as far as the batch splits
                else:
                    fsdp_i += 1
            if found:
                break
        if found or compiles >= max_compiles:
            break
    if not results:
        raise UserError(f"train.batch_size {config.train.batch_size} cannot be split over "
                        f"{len(slice_.devices)} chips and {slice_.hosts} hosts by any mesh "
                        "this search tries; choose a batch divisible by the chip count")
    return rank(results)


def _with_accum(config, accum: int):
    trial = config.copy_and_resolve_references()
    trial.train.grad_accum = accum
    return trial


def _powers_of_two(limit: int) -> list[int]:
    return [2 ** i for i in range(int(math.log2(limit)) + 1)] if limit >= 1 else []


def rank(results: list[dict]) -> list[dict]:
    """Fitting settings first, fastest estimate first: FLOPs actually compiled per chip (what
    recomputation adds), then bytes moved by collectives, then less accumulation."""
    def key(r):
        flops = r["flops"].get("compiled_per_chip", math.inf)
        moved = sum(c["bytes"] for c in (r["collectives"] or {}).values())
        return (not r["fits"], flops, moved, r["grad_accum"])
    return sorted(results, key=key)


# =============================================================================== report

def format_report(r: dict) -> str:
    """A plan as a few human lines."""
    mesh = r["mesh"]
    mesh_text = f"data={mesh['data']} fsdp={mesh['fsdp']} tensor={mesh['tensor']}" + (
        f" (dcn_data={mesh['dcn_data']})" if mesh["dcn_data"] > 1 else "")
    lines = [
        f"{r['config'] or 'config'} on {r['topology']} ({r['libtpu_topology']}, {r['chips']} x "
        f"{r['device_kind']}, {r['hosts']} host(s))",
        f"  mesh {mesh_text}; remat {r['remat_policy'] or 'none'}; grad_accum "
        f"{r['grad_accum']}; {'scanned' if r['scan_layers'] else 'unrolled'} layers; "
        f"{r['dtype']} compute, {r['param_dtype']} parameters",
        f"  batch {r['batch_size']:,} x {r['seq_len']} = {r['tokens_per_step']:,} tokens per step;"
        f" vocabulary {r['vocab_size']:,} (padded to {r['padded_vocab_size']:,}; from "
        f"{r['vocab_source']})",
    ]
    m = r["memory"]
    if m and "total" in m:
        lines += [
            "  memory per chip (XLA memory_analysis):",
            f"    parameters            {_size(m['params']):>12}",
            f"    optimizer state       {_size(m['optimizer_state']):>12}",
            f"    arguments             {_size(m['arguments']):>12}  (the two above and the "
            "batch, as laid out)",
            f"    outputs not donated   {_size(m['outputs'] - m['aliased']):>12}",
            f"    temporaries           {_size(m['temporaries']):>12}  (activations, gradients, "
            "workspace)",
            f"    program               {_size(m['program']):>12}",
            f"    total                 {_size(m['total']):>12}  of {_size(m['usable'])} "
            + ("(this host's memory over its devices)" if r["libtpu_topology"] == "cpu"
               else f"usable (XLA's limit on a {r['device_kind']} chip)"),
        ]
    verdict = (f"FITS, headroom {_size(m['headroom'])} per chip" if r["fits"]
               else f"DOES NOT FIT: {r['reason']}")
    lines.append(f"  {verdict}")
    f = r["flops"]
    flops_line = (f"  FLOPs per step: {_flop(f['model_per_step'])} by flops.py "
                  f"({_flop(f['model_per_token'])} per token)")
    if "compiled_per_step" in f:
        flops_line += (f"; compiled {_flop(f['compiled_per_step'])} "
                       f"({f['compiled_over_model']:.2f}x, loop bodies counted per trip")
        unknown = sum(loop["trips"] is None for loop in f["loops"])
        flops_line += f"; {unknown} loop(s) of unknown length counted once)" if unknown else ")"
    lines.append(flops_line)
    lines.append(
        f"  at {100 * r['mfu']:.0f}% MFU of {r['chips']} x {_flop(r['peak_flops_per_chip'])}/s: "
        f"{_duration(r['step_seconds'])} per step, {r['tokens_per_second']:,.0f} tokens/s; "
        f"{r['steps']:,} steps in {_duration(r['steps'] * r['step_seconds'])}")
    if r["collectives"] is not None:
        moved = ", ".join(f"{kind} {c['count']}x {_size(c['bytes'])}"
                          for kind, c in r["collectives"].items()) or "none"
        lines.append(f"  collectives per chip per step: {moved}")
    if r["compile_seconds"] is not None:
        lines.append(f"  compiled in {_duration(r['compile_seconds'])}")
    return "\n".join(lines)


def format_search(results: list[dict]) -> str:
    header = (f"{'fits':5} {'data':>5} {'fsdp':>5} {'tensor':>6} {'remat':32} {'accum':>5} "
              f"{'GiB/chip':>9} {'XLA/model':>11} {'collective GiB':>14} {'s/step':>8} "
              f"{'days':>7}")
    lines = [header]
    for r in results:
        m = r["memory"] or {}
        total = m.get("total") or m.get("required")
        moved = sum(c["bytes"] for c in (r["collectives"] or {}).values()) / GiB
        ratio = r["flops"].get("compiled_over_model")
        lines.append(
            f"{'yes' if r['fits'] else 'no':5} {r['mesh']['data']:>5} {r['mesh']['fsdp']:>5} "
            f"{r['mesh']['tensor']:>6} {r['remat_policy'] or 'none':32} {r['grad_accum']:>5} "
            f"{total / GiB if total else float('nan'):>9.2f} "
            f"{ratio if ratio else float('nan'):>11.2f} "
            f"{moved if r['collectives'] is not None else float('nan'):>14.2f} "
            f"{r['step_seconds']:>8.3f} {r['days']:>7.1f}")
    return "\n".join(lines)
