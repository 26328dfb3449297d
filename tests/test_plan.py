"""`roberta-jax plan`: the real train step compiled ahead of time for TPU slices (libtpu, no TPU),
memory as XLA reports it, FLOPs with scanned loops counted per trip, collectives, the search."""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import pytest

from roberta_jax import plan as plan_module
from roberta_jax.cli import main
from roberta_jax.errors import UserError
from roberta_jax.hlo_stats import HloModule, xla_cost_analysis
from roberta_jax.train_config import load_config

ROOT = pathlib.Path(__file__).parent.parent
TINY = str(ROOT / "configs" / "tiny.py")
# The tiny config with a vocabulary of its own (it takes the data's otherwise).
TINY_OVERRIDES = ["--config.model.vocab_size=1000"]
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu not installed (pip install '.[tpu]')")


def tiny(*overrides):
    return load_config(TINY, [*TINY_OVERRIDES, *overrides])


# ----------------------------------------------------------------------------- slice names

@pytest.mark.parametrize("name, generation, shape", [
    ("v4-8", "v4", [2, 2, 1]), ("v4-16", "v4", [2, 2, 2]), ("v4-128", "v4", [4, 4, 4]),
    ("v4-256", "v4", [4, 4, 8]), ("v5p-128", "v5p", [4, 4, 4]), ("v5p-1024", "v5p", [8, 8, 8]),
    ("v5e-256", "v5e", [16, 16]), ("v5litepod-256", "v5e", [16, 16]),
    ("v5e-128", "v5e", [8, 16]), ("v5e-8", "v5e", [2, 4]), ("v6e-64", "v6e", [8, 8]),
    ("v5p:4x4x12", "v5p", [4, 4, 12]), ("v5:2x2x2", "v5p", [2, 2, 2]), ("v5e:4x8", "v5e", [4, 8]),
])
def test_cloud_names_count_cores_for_v4_v5p_and_chips_for_v5e_v6e(name, generation, shape):
    chip, got = plan_module.parse_slice_name(name)
    assert (chip.generation, got) == (generation, shape)


@pytest.mark.parametrize("name", ["v9-8", "tpu", "v5p-12", "v4-7", "v5e:4x4x4", "h100-8"])
def test_unknown_or_unlaid_names_are_one_line_naming_the_known_ones(name):
    with pytest.raises(UserError) as e:
        plan_module.parse_slice_name(name)
    message = str(e.value)
    assert "\n" not in message and name in message
    assert "v4:4x4x4" in message and "v5e-1, v5e-2, v5e-4, ..." in message


def test_unknown_topology_on_the_command_line_is_one_line_and_exit_1(capsys):
    assert main(["plan", "--config", TINY, "--topology", "v9-64"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown topology 'v9-64'" in err and "v5e-4" in err and "v4:4x4x4" in err


def test_without_libtpu_the_command_says_how_to_install_it(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "libtpu" else real(name, *a))
    monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
    assert main(["plan", "--config", TINY, "--topology", "v5p-8"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install 'roberta_jax[tpu]'" in err and f"jax[tpu]=={jax.__version__}" in err


# ----------------------------------------------------------------------------- HLO reading

def _compiled_text(fn, *args):
    return jax.jit(fn).lower(*args).compile().as_text()


def test_flops_count_each_scan_trip_where_cost_analysis_counts_the_body_once():
    n, trips = 64, 5

    def scanned(x):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ c), None), x, None, length=trips)[0]

    x = jnp.ones((n, n))
    compiled = jax.jit(scanned).lower(x).compile()
    hlo = HloModule(compiled.as_text())
    per_trip, once = hlo.flops(xla_cost_analysis)
    matmul = 2 * n ** 3
    assert [loop.trips for loop in hlo.loops()] == [trips]
    assert once == pytest.approx(compiled.cost_analysis()["flops"], rel=0.01)
    assert once < 1.5 * matmul                      # XLA's count: the body once
    assert per_trip == pytest.approx(trips * once, rel=0.01)
    assert per_trip >= trips * matmul


def test_nested_loops_multiply_their_trip_counts():
    n = 32

    def nested(x):
        def outer(c, _):
            inner = jax.lax.scan(lambda d, _: (jnp.sin(d @ d), None), c, None, length=4)[0]
            return inner, None
        return jax.lax.scan(outer, x, None, length=3)[0]

    hlo = HloModule(_compiled_text(nested, jnp.ones((n, n))))
    per_trip, _ = hlo.flops(xla_cost_analysis)
    assert sorted((loop.trips, loop.enclosing_trips) for loop in hlo.loops()) == [(3, 1), (4, 3)]
    assert 12 * 2 * n ** 3 <= per_trip < 12 * 2.2 * n ** 3


_STEPPING_LOOP = """HloModule stepping

%body (p: (s32[], f32[8,8])) -> (s32[], f32[8,8]) {
  %p = (s32[], f32[8,8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[8,8] get-tuple-element(%p), index=1
  %step = s32[] constant(2)
  %next = s32[] add(%i, %step)
  %y = f32[8,8] dot(%x, %x), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %t = (s32[], f32[8,8]) tuple(%next, %y)
}

%cond (q: (s32[], f32[8,8])) -> pred[] {
  %q = (s32[], f32[8,8]) parameter(0)
  %j = s32[] get-tuple-element(%q), index=0
  %limit = s32[] constant(8)
  ROOT %lt = pred[] compare(%j, %limit), direction=LT
}

ENTRY %main (a: f32[8,8]) -> f32[8,8] {
  %a = f32[8,8] parameter(0)
  %start = s32[] constant(START)
  %init = (s32[], f32[8,8]) tuple(%start, %a)
  %w = (s32[], f32[8,8]) while(%init), condition=%cond, body=%body
  ROOT %out = f32[8,8] get-tuple-element(%w), index=1
}
"""


@pytest.mark.parametrize("start, trips", [(0, 4), (2, 3), (1, 4)])
def test_a_loop_counter_s_start_limit_and_step_give_its_trips(start, trips):
    # TPU programs carry no known_trip_count, and unroll some loops two chunks a trip
    hlo = HloModule(_STEPPING_LOOP.replace("START", str(start)))
    assert [loop.trips for loop in hlo.loops()] == [trips]
    per_trip, once = hlo.flops(xla_cost_analysis)
    assert once >= 2 * 8 ** 3
    assert per_trip == pytest.approx(trips * once, rel=0.01)


def test_collectives_are_counted_per_loop_trip_with_their_bytes():
    mesh = jax.make_mesh((8,), ("x",), devices=jax.devices()[:8])
    spec = jax.sharding.PartitionSpec
    sharded = jax.sharding.NamedSharding(mesh, spec("x"))

    @jax.jit
    def step(x):
        def body(c, _):
            # each trip: one all-reduce of the f32[256] row sums
            total = jax.lax.with_sharding_constraint(c.sum(0), jax.sharding.NamedSharding(
                mesh, spec()))
            return c + total, None
        return jax.lax.scan(body, x, None, length=3)[0]

    text = step.lower(jax.ShapeDtypeStruct((64, 256), jnp.float32, sharding=sharded)) \
        .compile().as_text()
    collectives = HloModule(text).collectives()
    assert collectives["all-reduce"] == {"count": 3, "bytes": 3 * 256 * 4}


# ----------------------------------------------------------------------------- compiled for TPU

@pytest.fixture(scope="module")
def watched_compiles():
    """Every executable plan compiles, so a test can ask it for memory_analysis() itself."""
    seen = []
    real = plan_module.compile_lowered

    def watch(lowered):
        seen.append(real(lowered))
        return seen[-1]

    plan_module.compile_lowered = watch
    yield seen
    plan_module.compile_lowered = real


def _assert_memory_is_xla_s(report, compiled):
    analysis = compiled.memory_analysis()
    m = report["memory"]
    assert m["arguments"] == analysis.argument_size_in_bytes
    assert m["outputs"] == analysis.output_size_in_bytes
    assert m["aliased"] == analysis.alias_size_in_bytes
    assert m["temporaries"] == analysis.temp_size_in_bytes
    assert m["program"] == analysis.generated_code_size_in_bytes
    assert m["total"] == (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                          - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes
                          + analysis.generated_code_size_in_bytes)
    assert m["headroom"] == m["usable"] - m["total"]


@pytest.fixture(scope="module")
def four_chips(watched_compiles):
    """(config, slice, report, the executable compiled) for the tiny config on v5e-4."""
    config = tiny("--config.mesh.fsdp=2", "--config.mesh.data=-1")
    target = plan_module.find_slice("v5e-4")
    report = plan_module.plan(config, target, config_name="configs/tiny.py")
    return config, target, report, watched_compiles[-1]


@needs_libtpu
def test_tiny_on_4_chips_reports_xla_memory_flops_per_layer_and_collectives(four_chips):
    config, target, report, compiled = four_chips
    assert target.topology == "v5e:2x2" and len(target.devices) == 4
    assert 15 * 2 ** 30 < target.usable_bytes <= 16 * 2 ** 30   # XLA's own figure for v5e
    assert report["fits"] and report["reason"] is None
    assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1, "dcn_data": 1}
    _assert_memory_is_xla_s(report, compiled)
    # fp32 parameters and two Adam moments, each device holding its fsdp half of the big ones
    assert report["memory"]["optimizer_state"] == pytest.approx(
        2 * report["memory"]["params"], rel=0.01)
    flops = report["flops"]
    layers = config.model.num_hidden_layers
    # forward and backward layer scans, read as running once per layer
    assert [loop["trips"] for loop in flops["loops"]] == [layers, layers]
    assert flops["compiled_per_chip"] > flops["compiled_per_chip_loops_once"]
    assert 1.0 < flops["compiled_over_model"] < 1.6   # A5 counts matmuls only
    assert report["collectives"]["all-gather"]["bytes"] > 0   # fsdp gathers parameters
    text = plan_module.format_report(report)
    assert "FITS" in text and "all-gather" in text


@needs_libtpu
def test_plan_table_writes_its_benchmarks_section_from_search_rows(four_chips, tmp_path,
                                                                  monkeypatch):
    import sys
    sys.path.insert(0, str(ROOT / "experiments"))
    import benchmarks_md
    import plan_table
    monkeypatch.setattr(benchmarks_md, "PATH", tmp_path / "BENCHMARKS.md")
    report = four_chips[2]
    refused = dict(report, fits=False, reason="temporaries need 40 GiB")
    rows = [{"config": "tiny", "topology": "v5e-4", "best": best, "tried": 1, "compiles": 1,
             "search_seconds": 12.0} for best in (report, refused)]
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    plan_table.main(["--from-json", str(rows_file)])
    table = [line for line in (tmp_path / "BENCHMARKS.md").read_text().splitlines()
             if line.startswith("| `configs/tiny.py`")]
    assert table[0].startswith("| `configs/tiny.py` | v5e-4 (4 chips) | yes | 2 / 2 / 1 | none |")
    assert table[1].startswith("| `configs/tiny.py` | v5e-4 | no |")
    assert "temporaries need 40 GiB" in table[1]


@needs_libtpu
def test_tiny_on_8_chips_through_the_command_line_s_search(watched_compiles, capsys):
    code = main(["plan", "--config", TINY, "--topology", "v4-16", "--search", "--json",
                 *TINY_OVERRIDES])
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    # the fastest candidate (plain data parallelism, nothing recomputed) fits: one compile
    assert code == 0 and len(out) == 1 and len(watched_compiles) >= 1
    assert "tried data=8 fsdp=1 tensor=1 remat=none grad_accum=1: fits" in captured.err
    report = json.loads(out[0])
    assert report["libtpu_topology"] == "v4:2x2x2" and report["chips"] == 8
    assert report["device_kind"] == "TPU v4" and report["hosts"] == 2
    assert report["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1, "dcn_data": 1}
    _assert_memory_is_xla_s(report, watched_compiles[-1])
    assert report["tokens_per_step"] == 16 * 128
    assert report["step_seconds"] == pytest.approx(
        report["flops"]["model_per_step"] / (8 * 275e12 * 0.4))


@needs_libtpu
def test_state_too_big_for_the_chip_is_refused_before_compiling(watched_compiles):
    before = len(watched_compiles)
    # 2 layers x 2 x 64 x 50M FFN weights: 51 GB of fp32 parameters alone
    config = tiny("--config.model.intermediate_size=50000000")
    report = plan_module.plan(config, plan_module.find_slice("v5e-4"))
    assert not report["fits"] and len(watched_compiles) == before
    assert "parameters and optimizer state alone take" in report["reason"]
    assert "15.75 GiB usable" in report["reason"]
    assert "DOES NOT FIT" in plan_module.format_report(report)


@needs_libtpu
def test_activations_too_big_are_reported_with_xla_s_figures(capsys):
    code = main(["plan", "--config", TINY, "--topology", "v5e:2x2", *TINY_OVERRIDES,
                 "--config.train.batch_size=65536"])
    out = capsys.readouterr().out
    assert code == 3
    assert "DOES NOT FIT: temporaries need" in out and "usable" in out and "grad_accum" in out


@pytest.mark.parametrize("documents", [False, True])
def test_abstract_batch_is_the_pipeline_s_batch(prepared_corpus, documents):
    from roberta_jax.data.pipeline import PretrainingBatches
    from roberta_jax.train import train_keys
    config = tiny("--config.train.batch_size=4", "--config.train.seq_len=64",
                  f"--config.model.document_attention={documents}")
    real = PretrainingBatches(prepared_corpus[0], 4, 64, 0, segment_ids=documents).batch(0)
    abstract = plan_module.abstract_batch(config, 4)
    assert set(abstract) == set(train_keys(config))
    assert ("segment_ids" in abstract) == documents
    for key, value in abstract.items():
        assert (value.shape, value.dtype) == (real[key].shape, real[key].dtype), key


# ----------------------------------------------------------------------------- multislice

@needs_libtpu
def test_two_slices_put_the_data_axis_across_them():
    from roberta_jax import sharding as shd
    target = plan_module.find_slice("v5e-4", num_slices=2)
    assert len(target.devices) == 8 and target.num_slices == 2
    mesh_cfg = plan_module.mesh_config_for(tiny("--config.mesh.fsdp=4"), target)
    assert mesh_cfg.dcn_data == 2
    mesh = shd.make_mesh(mesh_cfg, target.devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    for row in mesh.devices.reshape(2, -1):   # each data index holds one slice's chips
        assert len({d.slice_index for d in row}) == 1


@needs_libtpu
def test_tiny_compiles_for_two_slices(watched_compiles, capsys):
    code = main(["plan", "--config", TINY, "--topology", "v5e-4", "--num-slices", "2", "--json",
                 *TINY_OVERRIDES, "--config.mesh.fsdp=4"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["fits"]
    assert (report["slices"], report["chips"]) == (2, 8)
    assert report["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1, "dcn_data": 2}
    _assert_memory_is_xla_s(report, watched_compiles[-1])
    assert report["collectives"]["all-reduce"]["count"] > 0   # gradients summed over slices


# ----------------------------------------------------------------------------- search

class _FakeChip:
    """plan() stand-in: memory = state / fsdp + activations / accum (+ remat savings)."""

    def __init__(self, state, activations, usable):
        self.state, self.activations, self.usable, self.calls = state, activations, usable, []

    def __call__(self, config, slice_, **kwargs):
        mesh, accum = config.mesh, config.train.grad_accum
        self.calls.append((config.model.remat_policy, mesh.fsdp, accum))
        state = self.state / mesh.fsdp
        shrink = {"": 1.0, "dots_with_no_batch_dims_saveable": 0.5, "full": 0.2}
        temporaries = self.activations * shrink[config.model.remat_policy] / accum
        fits = state + temporaries <= self.usable
        memory = {"params": state / 3, "optimizer_state": 2 * state / 3,
                  "temporaries": temporaries, "total": state + temporaries}
        recompute = {"": 1.0, "dots_with_no_batch_dims_saveable": 1.2, "full": 1.33}
        return {"fits": fits, "memory": memory, "mesh": {"data": mesh.data, "fsdp": mesh.fsdp,
                                                         "tensor": mesh.tensor},
                "grad_accum": accum, "remat_policy": config.model.remat_policy,
                "flops": {"compiled_per_chip": recompute[config.model.remat_policy]},
                "collectives": {"all-gather": {"count": 1, "bytes": mesh.fsdp * 10}},
                "compile_seconds": 1.0, "reason": None if fits else "too big",
                "step_seconds": 0.5, "days": 3.0}


class _FakeSlice:
    devices = list(range(16))
    num_slices, hosts, usable_bytes = 1, 4, 100.0


def test_search_raises_accumulation_for_activations_and_fsdp_for_state(monkeypatch):
    fake = _FakeChip(state=150.0, activations=400.0, usable=100.0)
    monkeypatch.setattr(plan_module, "plan", fake)
    config = tiny("--config.train.batch_size=256")
    results = plan_module.search(config, _FakeSlice(), max_compiles=20)
    best = results[0]
    assert best["fits"] and best["remat_policy"] == ""
    # state + gradients leave no room for activations until fsdp=4 (100 - 37.5 - 12.5 = 50);
    # then 400 of activations over 50 of room: accumulate 8 micro-batches
    assert fake.calls[:4] == [("", 1, 1), ("", 2, 1), ("", 4, 1), ("", 4, 8)]
    assert (best["mesh"]["fsdp"], best["grad_accum"]) == (4, 8)
    # nothing recomputing could rank above a fit: remat is not tried
    assert len(fake.calls) == 4 and [r["fits"] for r in results] == [True, False, False, False]
    table = plan_module.format_search(results).splitlines()
    assert len(table) == 1 + len(results) and table[1].split()[:6] == ["yes", "4", "4", "1",
                                                                       "none", "8"]


def test_search_accumulates_only_as_far_as_the_batch_splits(monkeypatch):
    fake = _FakeChip(state=150.0, activations=400.0, usable=100.0)
    monkeypatch.setattr(plan_module, "plan", fake)
    # 64 rows over 16 chips and 4 hosts: at most 4 micro-batches, where 8 were wanted
    results = plan_module.search(tiny("--config.train.batch_size=64",
                                      "--config.model.num_attention_heads=1"), _FakeSlice(),
                                 max_compiles=20)
    assert ("", 4, 4) in fake.calls and all(accum <= 4 for _, _, accum in fake.calls)
    assert results[0]["fits"] and results[0]["remat_policy"] != ""


def test_search_stops_at_the_first_fit(monkeypatch):
    fake = _FakeChip(state=10.0, activations=50.0, usable=100.0)
    monkeypatch.setattr(plan_module, "plan", fake)
    results = plan_module.search(tiny(), _FakeSlice(), max_compiles=20)
    assert fake.calls == [("", 1, 1)] and results[0]["fits"]


def test_search_recomputes_when_accumulation_cannot_shrink_the_micro_batch_enough(monkeypatch):
    # batch 16 on 16 chips: one row per chip already, so no accumulation is possible (and one
    # attention head rules out tensor parallelism)
    fake = _FakeChip(state=30.0, activations=200.0, usable=100.0)
    monkeypatch.setattr(plan_module, "plan", fake)
    results = plan_module.search(tiny("--config.model.num_attention_heads=1"), _FakeSlice(),
                                 max_compiles=20)
    best = results[0]
    assert best["fits"] and best["remat_policy"] == "full" and best["grad_accum"] == 1


# ----------------------------------------------------------------------------- against reality

@pytest.mark.slow
def test_a_plan_for_this_cpu_predicts_pretrain_s_peak_rss_within_15_percent(tmp_path):
    import sys
    sys.path.insert(0, str(ROOT / "experiments"))
    import plan_vs_rss
    result = plan_vs_rss.main(["--batch", "8", "--steps", "2", "--workdir", str(tmp_path)])
    assert abs(result["peak_error"]) < 0.15
    assert abs(result["training_error"]) < 0.15
