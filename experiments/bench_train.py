"""Training-step benchmark: our jitted MLM train step against Hugging Face's PyTorch
RobertaForMaskedLM + torch AdamW and, when an interpreter that has it is given, Hugging Face's
Flax RobertaForMaskedLM + optax AdamW: same shapes, batch, precision and threads, in one run.

    python experiments/bench_train.py                 # all shapes, writes BENCHMARKS.md
    python experiments/bench_train.py --shapes small  # one shape
    bash experiments/setup_hf_flax.sh                 # once: transformers 4.57.6 (Flax) venv
    python experiments/bench_train.py --hf-flax-python .venv-hf-flax/bin/python

Each side runs in its own subprocess (so peak memory is its own). Printed per shape: median
step time, tokens/s, ours/peer ratios, FLOP/s by flops.py for the work each side does (the
peers compute the LM head at every position, we at the masked slots only), % of a 2048^3 fp32
matmul ceiling measured in the same run, compile / first-step time, and peak RSS.
Hugging Face removed its Flax models in transformers v5, hence the separate interpreter.
"""

import argparse
import functools
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))

SHAPES = {
    # name: (layers, hidden, heads, ffn, vocab, batch, seq_len, timed steps)
    "small": (4, 256, 4, 1024, 50265, 8, 128, 8),
    "base": (12, 768, 12, 3072, 50265, 8, 128, 4),
    "base-512": (12, 768, 12, 3072, 50265, 8, 512, 3),
}
# Not part of the benchmark: the tests run each side at this shape so the script keeps working.
SMOKE_SHAPES = {"tiny": (2, 64, 2, 128, 1000, 2, 32, 2)}
MASK_PROB = 0.15


def _flops_per_token(shape, head_fraction):
    from roberta_jax.flops import train_flops_per_token
    layers, hidden, _, ffn, vocab, _, seq_len, _ = shape
    return train_flops_per_token(layers, hidden, ffn, seq_len, vocab, head_fraction)


def synthetic_step(layers, hidden, heads, ffn, vocab, batch, seq_len, dtype="float32",
                   scan_layers=True, remat="", attention="eager", attention_dropout=0.1):
    """Our real jitted train step (train.make_steps) on a fixed random batch: (step, state,
    batch, masked-slot share of positions). Shared with gpu_bench.py."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from roberta_jax.model import RobertaForMaskedLM
    from roberta_jax.optim import make_optimizer
    from roberta_jax.train import TrainState, make_steps, model_config, strip_boxes
    from roberta_jax.train_config import default_config
    config = default_config()
    config.model.update(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=ffn, dtype=dtype, scan_layers=scan_layers,
                        remat_policy=remat, attention_implementation=attention,
                        attention_probs_dropout_prob=attention_dropout)
    config.train.update(steps=1000, warmup_steps=10, seq_len=seq_len, batch_size=batch)
    cfg = model_config(config, vocab)
    model = RobertaForMaskedLM(cfg, dtype=jnp.dtype(dtype), scan_layers=scan_layers,
                               remat_policy=remat or None)
    tx = make_optimizer(config.train)
    train_step, _ = make_steps(model, tx, config, vocab)
    slots = int(MASK_PROB * seq_len) + 1
    rng = np.random.default_rng(0)
    data = jax.device_put({
        "input_ids": rng.integers(4, vocab, (batch, seq_len)).astype(np.int32),
        "attention_mask": np.ones((batch, seq_len), np.int32),
        "masked_positions": np.sort(rng.choice(seq_len, (batch, slots)), 1).astype(np.int32),
        "masked_labels": rng.integers(4, vocab, (batch, slots)).astype(np.int32),
        "masked_weights": np.ones((batch, slots), np.float32),
    })

    def init():
        # Jitted, as train.py does, so no eager temporaries inflate the peak memory.
        params = strip_boxes(model.init(jax.random.key(0), data["input_ids"][:1],
                                        masked_positions=data["masked_positions"][:1])["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params),
                          dropout_key=jax.random.key_data(jax.random.key(1)),
                          loss_mean=jnp.zeros(()), loss_sq_mean=jnp.zeros(()))

    state = jax.jit(init)()
    return jax.jit(train_step, donate_argnums=0), state, data, slots / seq_len


def time_steps(step, state, data, steps):
    """(first call seconds, i.e. compile + one step; median of `steps` further steps)."""
    import jax
    start = time.perf_counter()
    state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


# Our variants: (nn.scan over layers, remat policy, attention implementation).
VARIANTS = {
    "scan": (True, "", "eager"),
    "unrolled": (False, "", "eager"),
    "scan+remat": (True, "checkpoint_dots", "eager"),
    "scan+jax-attn": (True, "", "jax"),
}


def prepare_ours(shape, threads, variant="scan"):
    """(one-step callable, compile + first step seconds, info) of our real MLM train step."""
    import jax
    *dims, _ = shape
    scan_layers, remat, attention = VARIANTS[variant]
    # jax.nn.dot_product_attention has no dropout: that variant trains without it.
    step, state, data, head_fraction = synthetic_step(
        *dims, scan_layers=scan_layers, remat=remat, attention=attention,
        attention_dropout=0.0 if attention != "eager" else 0.1)
    holder = [state]

    def one():
        holder[0], metrics = step(holder[0], data)
        jax.block_until_ready(metrics)

    return one, {"head_fraction": head_fraction}


def same_work_step(work, layers, hidden, heads, ffn, vocab, batch, seq_len, scan_layers=True):
    """The peers' work with our model: logits at every position and the loss over the masked
    ones ("full"), or the encoder alone with a loss on its last hidden state ("encoder"); a
    plain jitted optax AdamW around model.apply, dropout on, the state donated. -> a callable
    running one step."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from roberta_jax.config import RobertaConfig
    from roberta_jax.losses import cross_entropy
    from roberta_jax.model import RobertaForMaskedLM, RobertaModel
    from roberta_jax.optim import decay_mask
    config = RobertaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=ffn,
                           max_position_embeddings=seq_len + 2)
    if work == "full":
        model = RobertaForMaskedLM(config, scan_layers=scan_layers)
    else:
        model = RobertaModel(config, add_pooling_layer=False, scan_layers=scan_layers)
    tx = optax.adamw(1e-4, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01,
                     mask=lambda p: decay_mask(p, "hf"))
    data = jax.device_put(_peer_batch(np.random.default_rng(0), vocab, batch, seq_len))

    def loss_fn(params, key):
        out = model.apply({"params": params}, data["input_ids"],
                          attention_mask=data["attention_mask"], deterministic=False,
                          rngs={"dropout": key})
        if work == "encoder":
            return jnp.mean(jnp.square(out.last_hidden_state))
        labels = data["labels"]
        weights = (labels >= 0).astype(jnp.float32)
        return jnp.sum(cross_entropy(out.logits, labels) * weights) / jnp.sum(weights)

    @jax.jit
    def init():
        params = nn_unbox(model.init(jax.random.key(0), data["input_ids"][:1])["params"])
        return params, tx.init(params), jax.random.key(1)

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state):
        params, opt_state, key = state
        key, dropout_key = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(params, dropout_key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, key), loss

    holder = [init()]

    def one():
        holder[0], loss = step(holder[0])
        jax.block_until_ready(loss)

    return one


def nn_unbox(tree):
    import flax.linen as nn
    return nn.meta.unbox(tree)


def _peer_batch(rng, vocab, batch, seq_len):
    """The batch every same-work side trains on: random ids, no padding, labels (-100 = not
    predicted) at a random 15% of the positions."""
    import numpy as np
    ids = rng.integers(4, vocab, (batch, seq_len))
    chosen = rng.random((batch, seq_len)) < MASK_PROB
    return {"input_ids": ids.astype(np.int32),
            "attention_mask": np.ones((batch, seq_len), np.int32),
            "labels": np.where(chosen, ids, -100).astype(np.int32)}


def prepare_hf_torch(shape, threads, work="full"):
    """transformers' PyTorch RobertaForMaskedLM (or RobertaModel alone, work="encoder") with its
    default attention (sdpa) and torch AdamW, in training mode."""
    import numpy as np
    import torch
    import transformers
    torch.set_num_threads(threads)
    layers, hidden, heads, ffn, vocab, batch, seq_len, _ = shape
    config = transformers.RobertaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=seq_len + 2, type_vocab_size=1,
        layer_norm_eps=1e-5)
    if work == "full":
        model = transformers.RobertaForMaskedLM(config).train()
    else:
        model = transformers.RobertaModel(config, add_pooling_layer=False).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6,
                                  weight_decay=0.01)
    data = {k: torch.tensor(v).long()
            for k, v in _peer_batch(np.random.default_rng(0), vocab, batch, seq_len).items()}

    def one():
        optimizer.zero_grad(set_to_none=True)
        if work == "full":
            loss = model(**data).loss
        else:
            out = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"])
            loss = out.last_hidden_state.square().mean()
        loss.backward()
        optimizer.step()
        loss.item()

    return one, {"head_fraction": 1.0 if work == "full" else 0.0,
                 "attention": model.config._attn_implementation}


def prepare_hf_flax(shape, threads, work="full"):
    """Hugging Face's Flax RoBERTa trained the way its run_mlm_flax.py example does (optax AdamW
    without decay on biases and LayerNorm scales, loss over the masked positions; or the
    encoder alone, work="encoder"), with the state built under jit and donated to the step, so
    the peer gets the same care as ours."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import transformers
    layers, hidden, heads, ffn, vocab, batch, seq_len, _ = shape
    config = transformers.RobertaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=seq_len + 2, type_vocab_size=1,
        layer_norm_eps=1e-5)
    cls = transformers.FlaxRobertaForMaskedLM if work == "full" else transformers.FlaxRobertaModel
    kwargs = {} if work == "full" else {"add_pooling_layer": False}
    model = cls(config, input_shape=(1, seq_len), seed=0, dtype=jnp.float32, _do_init=False,
                **kwargs)

    def decay_mask(params):
        def decays(path, _):
            names = tuple(k.key for k in path)
            return names[-1] != "bias" and names[-2:] != ("LayerNorm", "scale")
        return jax.tree_util.tree_map_with_path(decays, params)

    tx = optax.adamw(1e-4, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, mask=decay_mask)
    data = jax.device_put(_peer_batch(np.random.default_rng(0), vocab, batch, seq_len))

    @jax.jit
    def init():
        params = model.init_weights(jax.random.key(0), (1, seq_len))
        return params, tx.init(params), jax.random.key(1)

    def loss_fn(params, batch, dropout_rng):
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"], params=params,
                    dropout_rng=dropout_rng, train=True)[0]
        if work == "encoder":
            return jnp.mean(jnp.square(out))
        weights = (batch["labels"] >= 0).astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(
            out, jnp.maximum(batch["labels"], 0))
        return (losses * weights).sum() / weights.sum()

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, batch):
        params, opt_state, key = state
        key, dropout_rng = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, dropout_rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, key), loss

    holder = [init()]

    def one():
        holder[0], loss = step(holder[0], data)
        jax.block_until_ready(loss)

    return one, {"head_fraction": 1.0 if work == "full" else 0.0,
                 "versions": f"transformers {transformers.__version__}, jax {jax.__version__}, "
                             f"flax {importlib.metadata.version('flax')}"}


def matmul_ceiling():
    from roberta_jax.flops import measured_matmul_flops
    return measured_matmul_flops()


def torch_matmul_ceiling(threads, n=2048, repeats=5):
    """The same 2048^3 fp32 matmul in torch (its CPU kernels, MKL or oneDNN), on the same
    cores: where it beats XLA's, the peers' matmuls run faster than ours whatever we do."""
    import torch
    torch.set_num_threads(threads)
    a = torch.randn(n, n)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def _ceilings_text(ceiling, torch_ceiling):
    return (f"Matmul ceiling (2048^3 fp32, same run): XLA {ceiling / 1e9:.1f} GFLOP/s, torch "
            f"{torch_ceiling / 1e9:.1f} GFLOP/s; shares of the ceiling are of XLA's")


def prepare(side, shape, threads):
    """(one-step callable, info) of a side: one of VARIANTS (our MLM train step), PEERS (theirs,
    logits at every position), or "WORK:NAME" with WORK in SAME_WORK and NAME a variant's layer
    loop ("scan", "unrolled") or a peer: every side doing the same work."""
    work, _, name = side.rpartition(":")
    if name == "hf-torch":
        return prepare_hf_torch(shape, threads, work or "full")
    if name == "hf-flax":
        return prepare_hf_flax(shape, threads, work or "full")
    if work:
        one = same_work_step(work, *shape[:-1], scan_layers=VARIANTS[name][0])
        return one, {"head_fraction": 1.0 if work == "full" else 0.0}
    return prepare_ours(shape, threads, name)


def child(side, shape_name, threads, serve):
    """Build a side, time its first step (compile + one step), then either time the shape's
    steps and report, or (serve) run one step per "step" line on stdin until "quit"."""
    shape = {**SHAPES, **SMOKE_SHAPES}[shape_name]
    memory = _host_memory()
    memory.keep_freed_memory()
    if side != "hf-torch":  # both jax sides run as the roberta-jax command runs jax
        memory.run_on_calling_thread()
    one, result = prepare(side, shape, threads)
    memory.release_free_pages()  # every side, after building its state
    result["first_step_seconds"] = _timed(one)
    if serve:
        print("READY", flush=True)
        for line in sys.stdin:
            if line.strip() != "step":
                break
            print(f"TIME {_timed(one)}", flush=True)
    else:
        result["step_seconds"] = statistics.median(_timed(one) for _ in range(shape[-1]))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def _host_memory():
    """roberta_jax/host_memory.py, loaded from its file (the HF Flax side's interpreter lacks
    our package): every side keeps the memory it frees and hands back the holes its
    initialisation left, and both jax sides run on the calling thread, as the roberta-jax
    command does; the same allocator settings for all, which speed XLA's steps and torch's
    alike."""
    spec = importlib.util.spec_from_file_location(
        "host_memory", pathlib.Path(__file__).resolve().parent.parent / "roberta_jax"
        / "host_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timed(one):
    start = time.perf_counter()
    one()
    return time.perf_counter() - start


def _command(side, shape_name, threads, python, serve=False):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), XLA_FLAGS="", JAX_PLATFORMS="cpu")
    return ([python, __file__, "--child", side, shape_name, str(threads)]
            + (["--serve"] if serve else [])), env


def _pin(threads):
    """Keep this process, and the sides it starts, on the first `threads` cores: XLA sizes its
    thread pool by the cores it may use, torch by OMP_NUM_THREADS; this makes them the same."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])


def measure(side, shape_name, threads, python=sys.executable):
    """Run one side in a fresh process, alone."""
    command, env = _command(side, shape_name, threads, python)
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{side} {shape_name} failed (exit {out.returncode}):\n"
                       f"{out.stderr[-3000:]}")


def measure_interleaved(pythons: dict, shape_name, threads, rounds):
    """Sides in their own processes, all resident, taking steps in turn (round robin, the
    starting side rotating each round), so that a busy spell of the machine falls on every
    side alike. Each is built and compiled alone first. A side that fails to start is left out
    with a message. -> {side: result with the median step}."""
    children, results = {}, {}
    for side, python in pythons.items():
        command, env = _command(side, shape_name, threads, python, serve=True)
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        if _read_until(proc, "READY") is None:
            print(f"{shape_name} {side}: failed, left out: "
                  f"{_last_error_line(proc)}", flush=True)
            continue
        children[side] = proc
    times = {side: [] for side in children}
    order = list(children)
    for r in range(rounds):
        for side in order[r % len(order):] + order[:r % len(order)]:
            children[side].stdin.write("step\n")
            children[side].stdin.flush()
            times[side].append(float(_read_until(children[side], "TIME ")))
    for side, proc in children.items():
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        results[side] = json.loads(_read_until(proc, "RESULT "))
        results[side]["step_seconds"] = statistics.median(times[side])
        proc.wait()
    return results


def _read_until(proc, prefix):
    for line in proc.stdout:
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    return None


def _last_error_line(proc):
    proc.wait()
    lines = proc.stderr.read().strip().splitlines()
    return lines[-1][:200] if lines else f"exit {proc.returncode}"


PEERS = {"hf-torch": "HF torch", "hf-flax": "HF Flax"}
TABLES = ("variants", "same-work")
# The work of the same-work table: the MLM model with logits at every position, as the peers
# train it, and the encoder alone (no head), which isolates the layers.
SAME_WORK = ("full", "encoder")
SAME_WORK_SHAPES = ("small", "base")  # base-512 would hold four processes of 9-15 GB at once
HF_FLAX_VENV = pathlib.Path(__file__).resolve().parent.parent / ".venv-hf-flax" / "bin" / "python"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--hf-flax-python", default=str(HF_FLAX_VENV) if HF_FLAX_VENV.exists()
                        else None, help="an interpreter with transformers<5 and flax, for the "
                        "Hugging Face Flax peer (default: .venv-hf-flax if present)")
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES),
                        help="variants: our MLM train step's variants against the peers; "
                        "same-work: full logits and the encoder alone, every side interleaved")
    parser.add_argument("--rounds", type=int, default=0,
                        help="steps per side in the same-work table (default: the shape's)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]), args.serve)
    if args.hf_flax_python and not pathlib.Path(args.hf_flax_python).is_file():
        parser.error(f"--hf-flax-python {args.hf_flax_python}: no such interpreter")
    if not args.hf_flax_python:
        print("HF Flax peer skipped: run `bash experiments/setup_hf_flax.sh` to measure it")
    _pin(args.threads)  # the ceiling, and every side, on the same cores
    ceiling, torch_ceiling = matmul_ceiling(), torch_matmul_ceiling(args.threads)
    print(f"2048^3 fp32 matmul ceiling: XLA {ceiling / 1e9:.1f} GFLOP/s, torch "
          f"{torch_ceiling / 1e9:.1f} GFLOP/s ({args.threads} threads)")
    if "variants" in args.tables:
        _write(variant_rows(args, ceiling), ceiling, torch_ceiling, args.threads)
    if "same-work" in args.tables:
        _write_same_work(same_work_rows(args, ceiling), ceiling, torch_ceiling, args.threads)


def _account(shape, sides, ceiling):
    tokens = shape[5] * shape[6]
    for r in sides.values():
        r["tokens_per_second"] = tokens / r["step_seconds"]
        r["flops"] = _flops_per_token(shape, r["head_fraction"]) * r["tokens_per_second"]
        r["ceiling_share"] = r["flops"] / ceiling


def variant_rows(args, ceiling):
    rows = []
    for name in args.shapes:
        shape = SHAPES[name]
        variants = [v for v in VARIANTS if v != "scan+jax-attn" or name != "base-512"]
        sides = {side: measure(side, name, args.threads) for side in variants + ["hf-torch"]}
        if args.hf_flax_python:
            try:
                sides["hf-flax"] = measure("hf-flax", name, args.threads, args.hf_flax_python)
            except RuntimeError as error:  # the optional peer failing (memory) ends no run
                print(f"{name} hf-flax: failed, left out of the table: "
                      f"{str(error).strip().splitlines()[-1][:200]}", flush=True)
        _account(shape, sides, ceiling)
        peer = min((s for s in sides if s in PEERS), key=lambda k: sides[k]["step_seconds"])
        rows.append((name, shape, sides, peer))
        for side, o in sides.items():
            print(f"{name} {side:14s}: {o['step_seconds']:.3f} s/step "
                  f"({o['step_seconds'] / sides[peer]['step_seconds']:.2f}x {PEERS[peer]}); "
                  f"{o['flops'] / 1e9:.1f} GFLOP/s ({100 * o['ceiling_share']:.0f}% of ceiling); "
                  f"first step {o['first_step_seconds']:.1f} s; peak RSS "
                  f"{o['peak_rss_mb']:.0f} MB", flush=True)
    return rows


def same_work_rows(args, ceiling):
    rows = []
    for name in [s for s in args.shapes if s in SAME_WORK_SHAPES]:
        shape = SHAPES[name]
        for work in SAME_WORK:
            pythons = {f"{work}:scan": sys.executable, f"{work}:unrolled": sys.executable,
                       f"{work}:hf-torch": sys.executable}
            if args.hf_flax_python:
                pythons[f"{work}:hf-flax"] = args.hf_flax_python
            measured = measure_interleaved(pythons, name, args.threads,
                                           args.rounds or max(shape[-1], 3))
            sides = {side.split(":")[1]: r for side, r in measured.items()}
            _account(shape, sides, ceiling)
            rows.append((name, shape, work, sides))
            torch_s = sides["hf-torch"]["step_seconds"]
            for side, o in sides.items():
                print(f"{name} {work:7s} {side:9s}: {o['step_seconds']:.3f} s/step "
                      f"({o['step_seconds'] / torch_s:.2f}x HF torch); "
                      f"{o['flops'] / 1e9:.1f} GFLOP/s ({100 * o['ceiling_share']:.0f}% of "
                      f"ceiling); first step {o['first_step_seconds']:.1f} s; peak RSS "
                      f"{o['peak_rss_mb']:.0f} MB", flush=True)
    return rows


def _write_same_work(rows, ceiling, torch_ceiling, threads):
    import platform

    import jax
    import torch
    import transformers
    from benchmarks_md import cpu, write_section
    flax_versions = next((sides["hf-flax"]["versions"] for *_, sides in rows
                          if "hf-flax" in sides), None)
    lines = ["## Same work, side by side (`python experiments/bench_train.py --tables same-work`)",
             "",
             f"{cpu()}; {os.cpu_count()} cores, {threads} threads each side, fp32, dropout on, "
             "forward + "
             "backward + AdamW (optax's around `model.apply` for both Flax sides, torch's for "
             "HF torch), median step. Every side does the same work: `full` is the masked-LM "
             "model with logits at every position and the loss over a random 15% of them "
             "(vocabulary 50265, as transformers trains it), `encoder` the encoder alone "
             "with a loss on its last hidden state. The sides of one row group are resident "
             "together, each in its own process, and take their steps in turn, so a busy spell "
             "of the machine falls on all alike. Every side keeps the memory it frees and "
             "hands back the holes building its state left (glibc mallopt and malloc_trim), "
             "and both jax sides run their steps on the calling thread "
             "(jax_cpu_enable_async_dispatch off), as the roberta-jax command does: "
             "roberta_jax/host_memory.py. "
             "Ours computes its loss with roberta_jax.losses.cross_entropy, as pretraining "
             "does. HF torch uses its default attention "
             f"(sdpa). jax {jax.__version__}, torch {torch.__version__}, transformers "
             f"{transformers.__version__}; HF Flax: {flax_versions or 'not measured'}; Python "
             f"{platform.python_version()}. {_ceilings_text(ceiling, torch_ceiling)}; FLOP/s "
             "by flops.py's count.", "",
             "| shape (batch x seq) | work | side | s/step | vs HF torch | vs HF Flax | "
             "FLOP/s (% ceiling) | first step s | peak RSS MB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, shape, work, sides in rows:
        for side, o in sides.items():
            flax = (f"{o['step_seconds'] / sides['hf-flax']['step_seconds']:.2f}"
                    if "hf-flax" in sides else "-")
            lines.append(
                f"| {name} ({shape[5]} x {shape[6]}) | {work} | {PEERS.get(side, 'ours, ' + side)} "
                f"| {o['step_seconds']:.3f} | "
                f"{o['step_seconds'] / sides['hf-torch']['step_seconds']:.2f} | {flax} | "
                f"{o['flops'] / 1e9:.1f} G ({100 * o['ceiling_share']:.0f}%) | "
                f"{o['first_step_seconds']:.1f} | {o['peak_rss_mb']:,.0f} |")
    lines += ["", _same_work_verdict(rows)]
    write_section("train-same-work", "\n".join(lines))


def _same_work_verdict(rows) -> str:
    """Each shape's full-logits step against the targets: <= 0.85x HF torch, and a share of
    the matmul ceiling at least HF Flax's."""
    parts, met = [], True
    for name, _, work, sides in rows:
        if work != "full":
            continue
        ours = {side: o for side, o in sides.items() if side not in PEERS}
        best = min(ours, key=lambda side: ours[side]["step_seconds"])
        torch_ratio = ours[best]["step_seconds"] / sides["hf-torch"]["step_seconds"]
        flax = sides.get("hf-flax")
        share_ok = flax is None or ours[best]["ceiling_share"] >= flax["ceiling_share"]
        met &= torch_ratio <= 0.85 and share_ok and flax is not None
        parts.append(f"{name} {torch_ratio:.2f}x HF torch ({best}), "
                     f"{100 * ours[best]['ceiling_share']:.0f}% of the ceiling against HF "
                     + (f"Flax's {100 * flax['ceiling_share']:.0f}%" if flax else
                        "Flax's (not measured)"))
    return ("Against the targets (same-work step <= 0.85x HF torch at small and base; >= HF "
            f"Flax's share of the ceiling): {'met' if met else 'not met'}. Full logits: "
            + "; ".join(parts) + ".")


def _write(rows, ceiling, torch_ceiling, threads):
    import platform

    import jax
    import torch
    import transformers
    from benchmarks_md import cpu, write_section
    flax_versions = next((sides["hf-flax"]["versions"] for _, _, sides, _ in rows
                          if "hf-flax" in sides), None)
    lines = ["## Training step on this CPU (`python experiments/bench_train.py`)", "",
             f"{cpu()}; {os.cpu_count()} cores, {threads} threads each side, fp32, forward + "
             f"backward + AdamW, median step. Ours and HF torch: jax {jax.__version__}, torch "
             f"{torch.__version__}, transformers {transformers.__version__}; HF Flax: "
             f"{flax_versions or 'not measured'}; Python {platform.python_version()}. "
             f"{_ceilings_text(ceiling, torch_ceiling)}. FLOP/s count flops.py's formula for "
             "the work each side does: Hugging Face computes the "
             "50265-word head at every position, we at the masked slots (15% + 1 per row), "
             "with the vocabulary padded to 50304 internally. Memory: peak RSS of the side's "
             "process. Every side keeps the memory it frees, and both jax sides run their "
             "steps on the calling thread, as the roberta-jax command does "
             "(roberta_jax/host_memory.py). Ratios are against the faster peer of the shape "
             "(in bold), memory against HF torch.", "",
             "Our variants, each in its own process: `scan` (the default config: layers under "
             "`nn.scan`, one compiled layer), `unrolled` (`--config.model.scan_layers=false`), "
             "`scan+remat` (`--config.model.remat_policy=checkpoint_dots`: matmul outputs kept, "
             "the rest recomputed in the backward pass) and `scan+jax-attn` "
             "(`--config.model.attention_implementation=jax`, jax.nn.dot_product_attention; "
             "it has no attention dropout, so that variant trains without it). First step = "
             "compile + one step.", "",
             "| shape (batch x seq) | side | s/step | vs faster peer | tokens/s | "
             "FLOP/s (% ceiling) | first step s | peak RSS MB (vs HF torch) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, shape, sides, peer in rows:
        best = min((s for s in sides if s not in PEERS), key=lambda k: sides[k]["step_seconds"])
        for side, o in sides.items():
            label = PEERS.get(side, side)
            label = f"**{label}**" if side in (best, peer) else label
            lines.append(
                f"| {name} ({shape[5]} x {shape[6]}) | {label} | {o['step_seconds']:.3f} | "
                f"{o['step_seconds'] / sides[peer]['step_seconds']:.2f} | "
                f"{o['tokens_per_second']:,.0f} | "
                f"{o['flops'] / 1e9:.1f} G ({100 * o['ceiling_share']:.0f}%) | "
                f"{o['first_step_seconds']:.1f} | {o['peak_rss_mb']:,.0f} "
                f"({o['peak_rss_mb'] / sides['hf-torch']['peak_rss_mb']:.2f}) |")
    write_section("train", "\n".join(lines))


if __name__ == "__main__":
    main()
