"""The library internals the kit still touches, each pinned here so that a version that moves one fails this test
(on both lanes' pins) instead of a user's run. docs/architecture.md says why each stays; anything else goes through
public API (the out-of-memory coordination is a public ``always_call`` forward hook, the embeddings' learning rate
the trainer's ``optimizers`` argument)."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
from pathlib import Path

import pytest
import torch
from transformers import Trainer


def _params(func) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_the_transformers_trainer_internals_the_kit_uses_are_there_with_their_signatures():
    # atomic checkpoints; where it writes follows the public args.output_dir, which test_resume.py's SIGKILL
    # mid-save checks (the half-written checkpoint is in the staging folder) on both lanes
    assert _params(Trainer._save_checkpoint)[:3] == ["self", "model", "trial"]
    source = inspect.getsource(Trainer)
    assert "self._train_batch_size" in source  # what get_train_dataloader batches by (OOM recovery)
    assert "self._tr_loss" in source  # the running loss sum the guard clears after a NaN


def test_a_lambda_schedule_stepped_again_at_the_same_step_takes_scaled_base_lrs():
    """What the guard's lr cut relies on (``resilience.guard.scale_lr``): ``LambdaLR.step()`` computes base_lr x
    lambda(last_epoch) afresh, so setting ``last_epoch`` back one and stepping gives the same step's lr, scaled."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr() == [5e-4] and scheduler.last_epoch == 1
    scheduler.base_lrs = [lr * 0.5 for lr in scheduler.base_lrs]
    scheduler.last_epoch -= 1
    scheduler.step()
    assert scheduler.get_last_lr() == [2.5e-4] == [optimizer.param_groups[0]["lr"]] and scheduler.last_epoch == 1


def test_a_4bit_layer_repacked_for_cpu_inference_gets_its_plain_layout_back_from_state_dict():
    """What ``adapt.keep_cpu_4bit_trainable`` relies on: bitsandbytes repacks a ``Linear4bit`` weight the first time
    it runs on CPU in eval mode without gradients, and its public ``state_dict()`` restores the plain layout (the
    one training needs) before it saves."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
    if not layer.support_avx512bf16_for_cpu:
        pytest.skip("this CPU has no avx512bf16: bitsandbytes never repacks here")
    plain = layer.weight.data.clone()
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(2, 64))
    assert layer.weight.quant_state.packing_format_for_cpu and layer.weight.data.shape != plain.shape
    layer.state_dict()
    assert not layer.weight.quant_state.packing_format_for_cpu and torch.equal(layer.weight.data, plain)


def test_a_forward_hook_with_always_call_runs_when_the_forward_raises():
    """What coordinates an out-of-memory error across processes (``resilience.oom.coordinate_out_of_memory``)."""
    seen = []

    class Boom(torch.nn.Module):
        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory (test)")

    model = Boom()
    model.register_forward_hook(lambda m, a, k, out: seen.append(out), with_kwargs=True, always_call=True)
    try:
        model(torch.zeros(1))
    except torch.OutOfMemoryError:
        pass
    assert seen == [None]


def _unsloth_sources() -> dict[str, str]:
    """Unsloth's and unsloth_zoo's sources by path (read, not imported: importing them needs a GPU), without
    ``unsloth_zoo/mlx`` (the Apple-silicon trainer, which never runs transformers' Trainer)."""
    found = {}
    for package in ("unsloth", "unsloth_zoo"):
        spec = importlib.util.find_spec(package)
        if spec is None:
            pytest.skip(f"{package} is not installed (the Colab lane has it)")
        root = Path(spec.submodule_search_locations[0])
        found.update({f"{package}/{p.relative_to(root)}": p.read_text() for p in sorted(root.rglob("*.py"))
                      if "mlx" not in p.relative_to(root).parts})
    return found


def _loop_rewrites(source: str, tree: ast.Module) -> list[ast.FunctionDef]:
    """The functions in ``source`` that rewrite ``Trainer._inner_training_loop``'s source text and exec it (on a
    GPU): the innermost ones that read it."""
    marker = "getsource(Trainer._inner_training_loop)"
    if marker not in source:
        return []
    return [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
            and marker in ast.get_source_segment(source, node)
            and not any(isinstance(inner, ast.FunctionDef) and marker in ast.get_source_segment(source, inner)
                        for inner in node.body)]


# the three internals, and the trainer methods around them that must stay transformers' and TRL's on a GPU
WATCHED = ("_tr_loss", "_train_batch_size", "_save_checkpoint", "_run_epoch", "_maybe_log_save_evaluate",
           "get_train_dataloader")


def _code_mentions(tree: ast.Module, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(kind, name)`` for each attribute, name or string (not a docstring) in ``tree`` that names one of
    ``names``; code text that is exec'd later is a string, so strings count."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names:
            found.append(("attribute", node.attr))
        elif isinstance(node, ast.Name) and node.id in names:
            found.append(("name", node.id))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found += [("string", name) for name in names
                      if name in node.value and re.search(rf"\b{name}\b", node.value)]
    return found


def test_unsloths_gpu_rewrite_of_the_training_loop_leaves_what_the_kit_relies_on():
    """On a GPU, Unsloth re-executes transformers' own ``_inner_training_loop`` source with a few text edits (its
    banner, TPU stubs, a cache reset), so the kit's three internals run under Unsloth's loop, not beside it. Read
    from Unsloth's source on the Colab pins: the edits touch none of the lines that create the running loss sum or
    build the dataloader, and no other Unsloth code (its Apple-silicon trainer aside) names the three internals but
    to read the micro-batch or refresh it from the arguments. A release that changes this fails here, not on a T4."""
    sources = _unsloth_sources()
    trees = {path: ast.parse(source) for path, source in sources.items()  # only the files that name one of them
             if any(name in source for name in (*WATCHED, "_inner_training_loop"))}
    rewrites = [(path, function) for path, tree in trees.items() for function in _loop_rewrites(sources[path], tree)]
    assert {path for path, _ in rewrites} == {"unsloth/models/llama.py", "unsloth_zoo/compiler.py"}
    loop = inspect.getsource(Trainer._inner_training_loop)
    for path, function in rewrites:
        touched: list[str] = []
        for call in ast.walk(function):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
                continue
            target = call.args[0] if call.args else None
            if call.func.attr == "replace" and getattr(call.func.value, "id", None) == "inner_training_loop":
                if isinstance(target, ast.Constant):
                    touched += [line for line in loop.splitlines() if target.value in line]
                else:  # the banner: from its "Running training" log line to the next blank line
                    assert getattr(target, "id", None) == "original_debug", (path, ast.dump(target))
                    pattern = next(c.args[0].value for c in ast.walk(function) if isinstance(c, ast.Call)
                                   and getattr(c.func, "attr", None) == "search" and c.args
                                   and isinstance(c.args[0], ast.Constant) and "Running training" in c.args[0].value)
                    start = re.search(pattern, loop).start()
                    touched += loop[start:loop.find("\n\n", start)].splitlines()
        assert touched, path  # the banner at least: Unsloth still edits this loop the way read here
        for line in touched:
            assert "_tr_loss" not in line and "get_train_dataloader" not in line, (path, line)
            assert not re.search(r"self\._train_batch_size\s*=[^=]", line), (path, line)
    # everywhere else in Unsloth's code (docstrings and comments aside), these are named only where its
    # Trainer.__init__ wrapper refreshes the micro-batch from the arguments (the formula resilience.oom uses), where
    # the two rewrites' banner text reads it, and where UNSLOTH_TOKEN_BALANCE=1 (off unless set) wraps the trainer's
    # get_train_dataloader, calling the original; the epoch loop, the logging and the save are never rewritten.
    # TRL's own uses (GRPO's dataloader reads _train_batch_size, each trainer's _save_checkpoint writes the model
    # card and calls super()) run as they are in the kit's tests
    named = {(path, kind, name) for path, tree in trees.items() for kind, name in _code_mentions(tree, WATCHED)}
    assert named == {("unsloth/models/_utils.py", "attribute", "_train_batch_size"),
                     ("unsloth/models/llama.py", "string", "_train_batch_size"),
                     ("unsloth_zoo/compiler.py", "string", "_train_batch_size"),
                     ("unsloth/utils/token_budget.py", "attribute", "get_train_dataloader"),
                     ("unsloth/utils/token_budget.py", "name", "get_train_dataloader")}
