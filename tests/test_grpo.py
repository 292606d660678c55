"""GRPO (``method="grpo"``): the demo model learns a reward on CPU, bad rewards and bad prompts are named before
any weights load, and the T4 decisions reach TRL's ``GRPOConfig``. Runs on both lanes: TRL 1.16 with
transformers, and Unsloth's CPU backend over TRL 1.15."""

from __future__ import annotations

import json
import math

import pytest
import torch
from simulated_gpu import GPUS
from transformers import TrainerCallback

from rslora_colab import (
    FinetuneConfig,
    RewardError,
    demo_prompts,
    detect_runtime,
    exact_match,
    length_penalty,
    load_and_validate,
    load_model,
    lr_for_rank,
    mean_reward,
    numeric_match,
    quick_finetune,
    regex_reward,
    tag_format,
)
from rslora_colab.demo import DEMO_REWARD_CHARS, demo_training
from rslora_colab.resilience.guard import judge_reward, judge_step
from rslora_colab.settings import resolve_run
from rslora_colab.train import trainer_args
from rslora_colab.train.grpo import grpo_args, grpo_config
from rslora_colab.watch import history_record

HELD_OUT = range(64, 79)


def _run(model, prompts, tmp_path, **overrides):
    settings = {**demo_training("grpo"), "output_dir": str(tmp_path / "run"), "checkpoint_minutes": 0, **overrides}
    return quick_finetune(model, prompts, r=16, method="grpo", **settings)


def test_grpo_raises_the_mean_reward_on_held_out_prompts(demo_path, tmp_path, cpu_backend):
    rows = demo_prompts()
    train, held = rows.select(range(64)), rows.select(HELD_OUT)
    reward = [length_penalty(DEMO_REWARD_CHARS)]
    model, tokenizer = load_model(demo_path, max_seq_length=256)
    before = mean_reward(model, tokenizer, held, reward, max_new_tokens=24)
    result = _run((model, tokenizer), train, tmp_path, reward_funcs=reward)
    after = mean_reward(result.model, result.tokenizer, held, reward, max_new_tokens=24)
    assert before < 0.4 and after > before + 0.3, (before, after)
    s = result.settings
    assert s["backend"] == cpu_backend  # "unsloth" on the Colab lane: its CPU backend runs TRL's GRPOTrainer
    assert (s["method"], s["beta"], s["num_generations"], s["max_completion_length"]) == ("grpo", 0.0, 4, 24)
    assert s["reward_funcs"] == ["length_penalty"]
    steps = [h for h in result.history if "loss" in h]
    assert len(steps) == 40
    assert all({"reward", "reward_std", "reward/length_penalty", "completion_length"} <= set(h) for h in steps)
    assert "kl" not in steps[0]  # beta = 0: no reference model, no KL term
    first, last = (sum(h["reward"] for h in part) / 5 for part in (steps[:5], steps[-5:]))
    assert last > first + 0.3
    assert not [h for h in result.history if "event" in h]  # a reward rising 0.2 -> 0.9 is no collapse
    assert sum(h["completion_length"] for h in steps[-5:]) < sum(h["completion_length"] for h in steps[:5])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["settings"]["reward_funcs"] == ["length_penalty"] and "reward/length_penalty" in saved["history"][-1]
    assert json.loads((result.adapter_path / "adapter_config.json").read_text())["use_rslora"] is True


def test_beta_above_zero_records_the_kl_to_the_base(demo_path, tmp_path):
    result = _run(demo_path, demo_prompts(n=8), tmp_path, max_steps=3, beta=0.04, lr=None)
    steps = [h for h in result.history if "loss" in h]
    assert result.settings["beta"] == 0.04 and result.settings["lr"] == lr_for_rank(16, "grpo") == 1e-5
    assert all("kl" in h and math.isfinite(h["kl"]) for h in steps)


def _raises(completions, **kwargs):
    raise ZeroDivisionError("division by zero")


def _too_few(completions, **kwargs):
    return [1.0]


def _nan(completions, **kwargs):
    return [float("nan")] * len(completions)


def _text(completions, **kwargs):
    return ["good"] * len(completions)


def _inf(completions, **kwargs):
    return [1.0, float("-inf"), 0.0][:len(completions)]


@pytest.mark.parametrize("func, match", [
    (_raises, "'_raises' on dataset row 0 .*raised ZeroDivisionError: division by zero"),
    (_too_few, "'_too_few' on dataset row 0 .*returned 1 rewards for 3 completions"),
    (_nan, "'_nan' on dataset row 0 .*returned NaN for completion 0 .*return None"),
    (_text, "'_text' on dataset row 0 .*returned 'good' \\(str\\) for completion 0"),
    (_inf, "'_inf' on dataset row 0 .*returned -inf for completion 1; an infinite reward"),
    (exact_match("solution"), "'exact_match_solution' .*KeyError.*column 'solution'.*other columns: \\['answer'\\]"),
])
def test_a_bad_reward_function_is_named_before_the_model_loads(func, match, demo_path, tmp_path, caplog):
    with pytest.raises(RewardError, match=match):
        _run(demo_path, demo_prompts(n=8), tmp_path, reward_funcs=[length_penalty(), func])
    assert "loading" not in caplog.text  # before any weights load
    assert not (tmp_path / "run" / "adapter").exists()


def test_the_failing_row_is_named_by_its_line_in_a_jsonl_file(tmp_path, demo_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p, "answer": a}) for p, a in
                              [("What is 2+2?", "4"), ("And 3+3?", "six")]) + "\n")

    def strict(completions, answer, **kwargs):
        return [float(int(a) == 4) for a in answer]  # int("six") fails on the second line

    with pytest.raises(RewardError, match=r"'strict' on .*prompts.jsonl line 2 \(prompt 'And 3\+3\?'.*ValueError"):
        _run(demo_path, str(path), tmp_path, reward_funcs=[strict])


def test_a_reward_failing_during_training_names_itself_and_the_step(demo_path, tmp_path):
    def late(completions, trainer_state, **kwargs):
        if trainer_state.global_step >= 2:  # fine in the check before training, fails at the third step
            raise RuntimeError("the grader's server went away")
        return [0.0] * len(completions)

    with pytest.raises(RewardError, match=r"reward function 'late' raised RuntimeError: the grader's server went "
                                          r"away at step 2 \(first prompt of the batch: .Give the heading"):
        _run(demo_path, demo_prompts(n=8), tmp_path, max_steps=4, reward_funcs=[late])


@pytest.mark.parametrize("rows, match", [
    ([{"question": "q", "answer": "a"}], "not prompt data, which method='grpo' needs: a 'prompt' column"),
    ([{"messages": [{"role": "user", "content": "q"}]}], "It has a 'messages' column"),
    ([{"prompt": "q", "completion": "a"}], r"column\(s\) \['completion'\] have names TRL gives"),
    ([{"prompt": "q"}, {"prompt": "  "}], "row 1: field 'prompt' must be a non-empty string"),
    ([{"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
     "row 0: field 'prompt' must end with the user's turn"),
    ([{"prompt": [{"role": "user", "content": "q"}]}, {"prompt": [{"role": "user", "content": " "}]}],
     "row 1: field 'prompt' has only empty turns"),
    ([{"prompt": [{"role": "robot", "content": "q"}]}], r"row 0: prompt\[0\].role='robot'"),
])
def test_bad_prompt_rows_are_named(rows, match):
    with pytest.raises(ValueError, match=match):
        load_and_validate(rows, "grpo")


def test_prompt_formats_are_detected_and_keep_the_reference_columns():
    chat, fmt = load_and_validate(demo_prompts(n=3), "grpo")
    assert fmt == "prompt_chat" and chat.column_names == ["prompt", "answer"]
    assert load_and_validate(demo_prompts(n=3, chat=False), "grpo")[1] == "prompt"
    assert load_and_validate("demo", "grpo")[0].num_rows == 79


def test_grpo_settings_are_checked_together():
    with pytest.raises(ValueError) as err:
        FinetuneConfig(method="grpo", num_generations=3, beta=-1.0, eval_fraction=0.1, packing=True)
    text = str(err.value)
    for expected in ("reward_funcs=(): expected at least one reward function",
                     "num_generations=3: expected a divisor of batch_size * grad_accum = 8",
                     "beta=-1.0: expected a number >= 0", "packing=True"):
        assert expected in text, text
    assert "eval_fraction" not in text  # held-out prompts are taken (test_held_out_prompts_...)
    with pytest.raises(ValueError, match="reward_funcs=.*only GRPO is trained by reward functions"):
        FinetuneConfig(reward_funcs=[length_penalty()])
    with pytest.raises(ValueError, match="beta=0.0: expected a positive number"):
        FinetuneConfig(method="dpo", beta=0.0)
    with pytest.raises(ValueError, match="max_completion_length=2048: expected less than max_seq_length=2048"):
        FinetuneConfig(method="grpo", reward_funcs=length_penalty(), max_completion_length=2048)
    assert FinetuneConfig(method="grpo", reward_funcs=length_penalty(), beta=0.0).reward_funcs[0].__name__ == \
        "length_penalty"


def test_beta_is_filled_per_method(tmp_path):
    runtime = detect_runtime()
    beta = {m: resolve_run(FinetuneConfig(method=m, output_dir=str(tmp_path),
                                          reward_funcs=[length_penalty()] if m == "grpo" else ()), runtime).config.beta
            for m in ("sft", "dpo", "grpo")}
    assert beta == {"sft": None, "dpo": 0.1, "grpo": 0.0}
    given = FinetuneConfig(method="grpo", beta=0.02, reward_funcs=[length_penalty()], output_dir=str(tmp_path))
    assert resolve_run(given, runtime).config.beta == 0.02


def test_grpo_config_on_this_machine_takes_the_kits_settings(tmp_path):
    config = FinetuneConfig(r=16, method="grpo", reward_funcs=[length_penalty()], output_dir=str(tmp_path))
    run = resolve_run(config, detect_runtime())
    args = grpo_config(run, trainer_args(run))
    assert (args.num_generations, args.max_completion_length, args.beta, args.use_vllm) == (4, 256, 0.0, False)
    assert (args.learning_rate, args.generation_batch_size, args.steps_per_generation) == (1e-5, 8, 4)
    assert not args.bf16 and not args.fp16 and not args.gradient_checkpointing  # CPU: fp32


@pytest.mark.parametrize("simulated_gpu", ["T4", "V100", "L4", "A100"], indirect=True)
def test_grpo_precision_follows_the_gpu_and_never_uses_vllm(simulated_gpu, tmp_path):
    config = FinetuneConfig(r=32, method="grpo", reward_funcs=[length_penalty()], output_dir=str(tmp_path))
    run = resolve_run(config, detect_runtime())
    args = grpo_args(run, trainer_args(run))
    fp16 = not simulated_gpu.native_bf16  # a T4 or V100: compute capability < 8
    assert (args["fp16"], args["bf16"]) == (fp16, not fp16)  # both explicit: GRPOConfig would turn bf16 on
    assert args["use_vllm"] is False and not args["use_cpu"]
    assert (args["num_generations"], args["max_completion_length"], args["learning_rate"]) == (4, 256, 7.5e-6)
    assert "max_length" not in args and args["optim"] == "adamw_8bit"


def test_ready_rewards_score_what_they_say():
    chat = [[{"role": "assistant", "content": "It is <answer> Forty </answer>"}], [{"role": "assistant", "content": "x"}]]
    assert exact_match()(completions=chat, answer=["forty", "x"]) == [1.0, 1.0]
    assert exact_match(ignore_case=False)(completions=chat, answer=["forty", "y"]) == [0.0, 0.0]
    assert numeric_match()(completions=["so <answer>1,234.0</answer>", "12", "none"],
                           answer=["1234", 13, "n/a"]) == [1.0, 0.0, None]
    fmt = tag_format()
    assert fmt.__name__ == "answer_format"
    assert fmt(completions=["a <answer>1</answer> b", "<answer>1</answer><answer>2</answer>", "no tags"]) == [1, 0, 0]
    assert tag_format(strict=True)(completions=["<answer>1</answer> and more", "ok <answer>1</answer>\n"]) == [0, 1]
    assert regex_reward(r"\s*The\b", "starts_with_the")(completions=[" The end", "Then"]) == [1.0, 0.0]
    assert length_penalty(10)(completions=["", "12345", "x" * 30]) == [1.0, 0.5, 0.0]


def test_the_history_keeps_grpos_metrics():
    logs = {"loss": 0.1, "reward": 0.5, "reward_std": 0.2, "kl": 0.01, "completions/mean_length": 12.0,
            "rewards/exact_match_answer/mean": 0.25, "rewards/exact_match_answer/std": 0.4, "entropy": 2.0}
    record = history_record(3, logs)
    assert record == {"step": 3, "loss": 0.1, "reward": 0.5, "reward_std": 0.2, "kl": 0.01, "completion_length": 12.0,
                      "reward/exact_match_answer": 0.25, "entropy": 2.0}
    dpo = history_record(1, {"loss": 0.6, "rewards/chosen": 0.1, "rewards/margins": 0.3})
    assert dpo == {"step": 1, "loss": 0.6, "reward_chosen": 0.1, "reward_margin": 0.3}


def test_the_guard_judges_grpo_losses_only_for_nan_and_overflow():
    # GRPO's loss starts near 0 and its scale follows the rewards: the spike rules are off (no history, no start)
    assert judge_step(2.5, 1.0, [], lambda: True, start=None, precision="fp32") == ("ok", "")
    assert judge_step(float("nan"), 1.0, [], lambda: True, start=None)[0] == "diverged"
    assert judge_step(0.1, float("inf"), [], lambda: True, start=None, precision="bf16")[0] == "diverged"


RISING = [0.05, 0.22, 0.26, 0.38, 0.15, 0.23, 0.27, 0.2, 0.24, 0.42, 0.38, 0.41, 0.41, 0.53, 0.62, 0.53, 0.8]
"""The demo run's first 17 step rewards (length_penalty(60), lr 1e-3): noisy, rising."""


def test_a_reward_is_low_only_far_below_the_runs_recent_level():
    seen = (min(RISING), max(RISING))
    assert judge_reward(0.0, RISING[:9], seen) == ""  # fewer than 10 steps known: not judged
    assert judge_reward(0.0, RISING, seen).startswith("reward 0 is 0.38 below the median 0.38")
    assert judge_reward(0.15, RISING, seen) == ""  # the noisiest early steps are this low: noise, not a collapse
    # a 0/1 reward at p = 0.5, 8 completions a step (one completion's spread 0.5): 0.05 is low, 0.3 is not
    coin = [0.5, 0.625, 0.375, 0.5, 0.5, 0.625, 0.5, 0.375, 0.5, 0.625]
    assert judge_reward(0.05, coin, (0.375, 0.625)) and not judge_reward(0.3, coin, (0.375, 0.625))
    # steps that all score alike (no noise): the range floor (25%) leaves a small dip alone
    assert judge_reward(0.95, [1.0] * 10, (0.6, 1.0)) == "" and judge_reward(0.5, [1.0] * 10, (0.6, 1.0))


class Scramble(TrainerCallback):
    """Adds unit noise to every lora_B weight after ``step``: the adapter breaks, the completions ramble."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            noise = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if "lora_B" in name:
                        param.add_(torch.randn(param.shape, generator=noise))


def test_the_guard_rolls_a_collapsed_reward_back_and_it_recovers(demo_path, tmp_path):
    # the demo run (reward 0.05 -> 0.93 by step 24), its adapter scrambled at step 24: reward 0 from step 25
    result = _run(demo_path, demo_prompts().select(range(64)), tmp_path, callbacks=[Scramble(24)])
    events = [h for h in result.history if "event" in h]
    assert [(h["event"], h["step"], h["restored_step"]) for h in events] == [("rollback", 27, 20)]
    assert events[0]["reason"].startswith("the reward collapsed, 3 logged steps in a row far below")
    steps = {h["step"]: h for h in result.history if "loss" in h}
    assert max(steps[s]["reward"] for s in (25, 26, 27)) < 0.1  # the three low steps, sampled by the broken adapter
    assert min(steps[s]["reward"] for s in range(28, 41)) > 0.7  # step 20's adapter back: the reward with it
    assert len(steps) == 40 and steps[28]["lr"] == pytest.approx(steps[27]["lr"] * 0.5, rel=0.2)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [h for h in saved if "event" in h] == events


def test_a_noisy_grpo_run_that_does_not_learn_is_not_rolled_back(demo_path, tmp_path):
    # the preset lr (1e-5 at r=16): the reward wanders around 0.2 for 40 steps, step to step by up to 0.3
    result = _run(demo_path, demo_prompts().select(range(64)), tmp_path, lr=None)
    rewards = [h["reward"] for h in result.history if "loss" in h]
    assert len(rewards) == 40 and max(rewards) - min(rewards) > 0.15
    assert not [h for h in result.history if "event" in h]


def test_the_gpu_list_covers_a_t4_and_a_bf16_gpu():
    assert not GPUS["T4"].native_bf16 and GPUS["A100"].native_bf16


def test_cli_trains_grpo_with_ready_rewards_by_name(tmp_path, demo_path):
    import subprocess
    import sys

    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "rslora_colab", "train", "--method", "grpo", "--max-steps", "10",
                           "--reward", "length_penalty", "--reward", "answer_format", "--sample", "", "--out",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rewarded for short answers (GRPO)" in proc.stdout
    assert "reward " in proc.stdout and "length_penalty" in proc.stdout and "answer_format" in proc.stdout
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["settings"]["reward_funcs"] == ["length_penalty", "answer_format"]
    assert {"reward/length_penalty", "reward/answer_format"} <= set(saved["history"][-1])
    bad = subprocess.run([sys.executable, "-m", "rslora_colab", "train", "--method", "grpo", "--reward", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'nope'" in bad.stderr


def test_the_grpo_step_estimate_for_qwen25_3b_on_a_t4():
    from rslora_colab.memory import T4_GIB, estimate_grpo_vram, estimate_vram, resolve_spec

    spec = resolve_spec("Qwen2.5-3B-Instruct")
    assert (spec.num_hidden_layers, spec.num_key_value_heads, spec.head_dim, spec.intermediate_size,
            spec.vocab_size) == (36, 2, 128, 11008, 151936)
    est = estimate_grpo_vram("Qwen2.5-3B-Instruct", r=32, num_generations=4, prompt_length=256,
                             max_completion_length=256)
    # 8 completions x 512 tokens x 36 layers x (K + V) x 2 kv heads x 128 dims x 2 B = 150,994,944 B
    assert est.kv_cache_gib == pytest.approx(150_994_944 / 2**30)
    assert est.prefill_gib == pytest.approx(3 * 8 * 256 * 11008 * 2 / 2**30)  # gate, up, product: 8 prompts
    assert est.sampling_gib == pytest.approx(3 * 8 * 151936 * 4 / 2**30)
    sft = estimate_vram("Qwen2.5-3B-Instruct", r=32, max_seq_length=512, batch_size=2)
    assert est.train.activations_gib == sft.activations_gib and est.train.lora_params == sft.lora_params
    assert est.generation_gib < est.train_gib == est.total_gib < T4_GIB  # 4.3 GiB: fits a T4 with room
    assert 4.0 < est.total_gib < 4.6
    # transformers' loss keeps every completion logit (10 B) plus the temperature-scaled copy (4 B)
    plain = estimate_grpo_vram("Qwen2.5-3B-Instruct", r=32, gradient_checkpointing=True)
    assert plain.train.logits_gib == pytest.approx(2 * 256 * 151936 * 14 / 2**30)
    with pytest.raises(ValueError, match="must be a multiple of num_generations=3"):
        estimate_grpo_vram("Qwen2.5-3B-Instruct", num_generations=3)


@pytest.mark.parametrize("simulated_gpu", ["T4"], indirect=True)
def test_the_plan_on_a_t4_names_the_grpo_step_and_refuses_one_that_cannot_fit(simulated_gpu, tmp_path, caplog):
    from rslora_colab.train.setup import fit_to_gpu

    config = FinetuneConfig(r=32, method="grpo", reward_funcs=[length_penalty()], max_seq_length=512,
                            output_dir=str(tmp_path))
    planned, plan = fit_to_gpu("Qwen2.5-3B-Instruct", config)
    assert plan is not None and plan.fits and "GRPO step ~" in caplog.text and "8 completions of 256 + 256" in caplog.text
    huge = FinetuneConfig(r=32, method="grpo", reward_funcs=[length_penalty()], max_seq_length=32768,
                          max_completion_length=16384, num_generations=16, grad_accum=64, batch_size=1,
                          output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="GRPO step ~.*does not fit 14.74 GiB.*lower max_completion_length"):
        fit_to_gpu("Qwen2.5-3B-Instruct", huge)


def test_out_of_memory_in_a_grpo_step_halves_the_micro_batch_and_goes_on(demo_path, tmp_path):
    from test_oom import OomInStep

    oom = OomInStep(at=(2,), min_micro=2)  # a real torch.OutOfMemoryError in a forward pass while building step 3
    result = _run(demo_path, demo_prompts(n=16), tmp_path, max_steps=4, batch_size=4, grad_accum=2, callbacks=[oom])
    assert [h for h in result.history if "event" in h] == [{"step": 2, "event": "oom", "micro_batch": 2,
                                                             "grad_accum": 4}]
    assert [h["step"] for h in result.history if "loss" in h] == [1, 2, 3, 4]
    assert (result.settings["batch_size"], result.settings["grad_accum"], result.settings["global_batch"]) == (2, 4, 8)


def test_a_crashed_grpo_run_resumes_from_its_checkpoint_and_only_with_the_same_rewards(demo_path, tmp_path):
    from transformers import TrainerCallback

    class Disconnect(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise ConnectionError("the runtime disconnected")

    prompts = demo_prompts(n=16)
    with pytest.raises(ConnectionError):
        _run(demo_path, prompts, tmp_path, max_steps=4, checkpoint_every=2, callbacks=[Disconnect()])
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
    with pytest.raises(ValueError, match="reward_funcs"):  # other reward functions: another run, not this one
        _run(demo_path, prompts, tmp_path, max_steps=4, checkpoint_every=2, resume=True,
             reward_funcs=[tag_format()])
    result = _run(demo_path, prompts, tmp_path, max_steps=4, checkpoint_every=2, resume=True)
    assert [h["step"] for h in result.history if "loss" in h] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["settings"]["reward_funcs"] == ["length_penalty"]


def test_a_nan_during_training_is_named_with_its_prompt(demo_path, tmp_path):
    def flaky(completions, trainer_state, **kwargs):
        return [float("nan") if trainer_state.global_step == 1 and k == 0 else 0.5 for k in range(len(completions))]

    with pytest.raises(RewardError, match=r"'flaky' returned NaN for completion 0 .* at step 1 \(prompt .Give the"):
        _run(demo_path, demo_prompts(n=8), tmp_path, max_steps=3, reward_funcs=[flaky])


def test_rewards_that_cannot_tell_completions_apart_are_reported(demo_path, tmp_path, caplog):
    def always_one(completions, **kwargs):
        return [1.0] * len(completions)

    result = _run(demo_path, demo_prompts(n=8), tmp_path, max_steps=10, reward_funcs=[always_one])
    assert all(h["reward_zero_std_share"] == 1.0 for h in result.history if "loss" in h)
    assert "steps 1-10: every prompt's completions got the same reward (mean 1)" in caplog.text


def test_mean_reward_is_seeded_passes_trls_arguments_and_keeps_the_callers_random_state(demo_pair):
    import torch

    model, tokenizer = demo_pair
    held, reward = demo_prompts(n=3), [length_penalty(DEMO_REWARD_CHARS)]
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    first = mean_reward(model, tokenizer, held, reward, max_new_tokens=8)
    assert torch.equal(torch.rand(1), expected)  # the caller's random stream goes on as if nothing was sampled
    assert mean_reward(model, tokenizer, held, reward, max_new_tokens=8) == first  # seed 0 both times

    def reads_trls_arguments(completions, trainer_state, answer, completion_ids, **kwargs):
        return [float(trainer_state.global_step == 0 and bool(a) and isinstance(ids, list))
                for a, ids in zip(answer, completion_ids)]

    assert mean_reward(model, tokenizer, held, [reads_trls_arguments], max_new_tokens=4) == 1.0


def test_the_plan_command_prints_a_grpo_steps_estimate(capsys):
    from rslora_colab.cli import main

    assert main(["plan", "--model", "Qwen2.5-3B-Instruct", "--method", "grpo", "--rank", "32", "--seq", "512",
                 "--gpu", "T4"]) == 0
    out = capsys.readouterr().out
    assert "8 completions sampled together (4 per prompt), prompt 256 + completion 256 tokens" in out
    assert "KV cache                                  0.14 GiB" in out and "fits 14.74 GiB" in out
    assert main(["plan", "--model", "Qwen2.5-3B-Instruct", "--method", "grpo", "--seq", "32768",
                 "--max-completion-length", "16384", "--num-generations", "16", "--grad-accum", "64",
                 "--batch", "1", "--gpu", "T4"]) == 1
    assert "does not fit 14.74 GiB" in capsys.readouterr().out


def test_prompts_that_leave_no_room_for_the_completion_are_named_before_loading(demo_path, tmp_path, caplog):
    long = "Give the heading of every Python docs topic you know, one after another. " * 6
    rows = [{"prompt": "Hi", "answer": "x"}, {"prompt": long, "answer": "y"}]
    settings = dict(max_seq_length=64, max_completion_length=24, max_steps=1, batch_size=4)
    _run(demo_path, rows, tmp_path, **settings)
    assert "1 of 2 prompts are longer than 40 tokens (max_seq_length=64 - max_completion_length=24)" in caplog.text
    assert "(row 1); TRL does not cut them" in caplog.text
    with pytest.raises(ValueError, match="every prompt is longer than max_seq_length=64 minus max_completion_length"
                                         "=24 = 40 tokens: raise max_seq_length"):
        _run(demo_path, [{"prompt": long}], tmp_path / "all", **settings)


@pytest.mark.ddp
def test_grpo_trains_data_parallel_under_torchrun(tmp_path, demo_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1",
           "RSLORA_COLAB_DDP_TIMEOUT": "60"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "rslora_colab", "train", "--method", "grpo", "--max-steps", "4", "--sample", "",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "global batch 8" in proc.stdout and "x 2 processes" in proc.stdout
    saved = json.loads((out / "metrics.json").read_text())
    assert (saved["settings"]["world_size"], saved["settings"]["batch_size"], saved["settings"]["grad_accum"]) == (2, 4, 1)
    assert [h["step"] for h in saved["history"] if "reward" in h] == [1, 2, 3, 4]


def test_a_prompt_and_its_completions_are_logged_every_ten_steps(demo_path, tmp_path, caplog):
    import ast
    import logging

    caplog.set_level(logging.INFO, logger="rslora_colab")
    result = _run(demo_path, demo_prompts(n=16), tmp_path, max_steps=20)
    blocks = [r.getMessage() for r in caplog.records if r.name == "rslora_colab.train.grpo"
              and r.getMessage().startswith("step ")]
    assert [b.split(",")[0] for b in blocks] == ["step 10", "step 20"]
    lines = blocks[0].splitlines()
    assert lines[0].endswith(": 4 completions, reward (sum of length_penalty)") and len(lines) == 5
    prompt = ast.literal_eval(lines[0].split("prompt ", 1)[1].rsplit(": 4 completions", 1)[0])
    assert prompt in [row["prompt"][-1]["content"] for row in demo_prompts(n=16)]
    rewards = [float(line.split()[0]) for line in lines[1:]]
    assert all(0.0 <= r <= 1.0 for r in rewards)  # length_penalty(60) of each completion shown
    for line, reward in zip(lines[1:], rewards):  # the reward is that of the completion beside it
        text = ast.literal_eval(line.split(None, 1)[1])
        if not text.endswith("..."):
            assert reward == pytest.approx(length_penalty(60)(completions=[text])[0], abs=0.006)
    assert [h["step"] for h in result.history if "loss" in h] == list(range(1, 21))


def test_a_grpo_cli_run_killed_after_a_checkpoint_resumes_with_every_step_once(tmp_path, demo_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from rslora_colab import latest_valid_checkpoint
    from rslora_colab.demo import demo_data

    out, steps = tmp_path / "run", 30
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rslora_colab", "train", "--method", "grpo", "--max-steps", str(steps),
               "--rank", "16", "--checkpoint-every", "5", "--sample", "", "--out", str(out), "--resume"]

    def newest() -> int:
        return max((int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")), default=0)

    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    while newest() < 10 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # a step or two past checkpoint 10 (~0.15 s a step), or in the middle of writing 15
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL and not (out / "metrics.json").exists()
    killed_at = latest_valid_checkpoint(out).name
    assert killed_at in ("checkpoint-10", "checkpoint-15")

    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"resuming from {out / killed_at}" in final.stdout + final.stderr
    history = [h for h in json.loads((out / "metrics.json").read_text())["history"] if "loss" in h]
    assert [h["step"] for h in history] == list(range(1, steps + 1))  # every step once, in order
    assert all("reward" in h and "reward/length_penalty" in h for h in history)
    straight = quick_finetune(demo_path, demo_data("grpo"), r=16, method="grpo", **{
        **demo_training("grpo"), "max_steps": steps, "checkpoint_every": 5, "output_dir": str(tmp_path / "straight")})
    expected = [h for h in straight.history if "loss" in h]
    # the checkpoint restores the RNG, so the resumed run samples the completions a run never killed samples
    assert [h["reward"] for h in history] == pytest.approx([h["reward"] for h in expected], abs=1e-6)


def test_held_out_prompts_are_scored_before_during_and_after_training(demo_path, tmp_path):
    rows = demo_prompts()
    train, held = rows.select(range(64)), rows.select(range(64, 72))
    plain = _run(demo_path, train, tmp_path / "plain")
    result = _run(demo_path, train, tmp_path, eval_dataset=held, eval_every=10, save_best=True)
    evals = result.eval_history
    assert [h["step"] for h in evals] == [0, 10, 20, 30, 40]  # before the first step, every 10, at the end
    assert all({"eval_reward", "eval_reward/length_penalty", "eval_completion_length"} <= set(h) for h in evals)
    assert evals[0]["eval_reward"] < 0.4 and evals[-1]["eval_reward"] > evals[0]["eval_reward"] + 0.3
    # seeded apart from training: the training completions (and rewards) are those of a run without evaluation
    trained = [h["reward"] for h in result.history if "loss" in h]
    assert trained == pytest.approx([h["reward"] for h in plain.history if "loss" in h], abs=1e-6)
    # save_best: the adapter kept is the evaluation with the highest held-out reward (not a lower loss)
    best = max(evals[1:], key=lambda h: h["eval_reward"])
    assert result.adapter_step == best["step"] and result.best_eval == best
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (saved["first_eval_reward"], saved["best_eval_reward"]) == (evals[0]["eval_reward"], best["eval_reward"])
    assert [h["step"] for h in saved["history"] if "eval_reward" in h] == [0, 10, 20, 30, 40]
    assert (f"on 8 held-out prompts: reward {evals[0]['eval_reward']:.3f} (step 0) -> "
            f"{evals[-1]['eval_reward']:.3f} (step 40)") in result.report()
    axes = result.plot().axes  # the held-out reward beside the training reward
    assert "reward (held-out prompts)" in [line.get_label() for line in axes[1].lines]


def test_eval_fraction_holds_prompts_out_and_early_stopping_watches_the_held_out_reward(demo_path, tmp_path):
    result = _run(demo_path, demo_prompts(n=40), tmp_path, max_steps=12, eval_fraction=0.2, eval_every=2,
                  early_stopping_patience=2)
    assert result.settings["eval_rows"] == 8 and len(result.eval_dataset) == 8
    held = {str(row["prompt"]) for row in result.eval_dataset}
    assert len({str(row["prompt"]) for row in demo_prompts(n=40)} - held) == 32  # 8 of the 40 held out
    evals = result.eval_history
    assert evals[0]["step"] == 0 and all(h["step"] % 2 == 0 for h in evals)
    best = max(evals[1:], key=lambda h: h["eval_reward"])
    assert result.adapter_step == best["step"]  # early stopping keeps the best held-out reward's adapter
    trained = [h["step"] for h in result.history if "loss" in h]
    if trained[-1] < 12:  # stopped early (CPU lane: at step 10): two evaluations in a row did not beat the best
        assert evals[-1]["step"] == trained[-1] and evals[-3]["step"] == best["step"]


def test_a_resumed_grpo_run_evaluates_each_step_once_and_as_a_run_never_stopped(demo_path, tmp_path):
    from callbacks import StopAt

    train, held = demo_prompts(n=16), demo_prompts().select(range(64, 68))
    settings = {"max_steps": 6, "checkpoint_every": 2, "eval_every": 2, "eval_dataset": held}
    straight = _run(demo_path, train, tmp_path / "straight", **settings)
    _run(demo_path, train, tmp_path, callbacks=[StopAt(3)], **settings)  # cut off after step 3: checkpoint 2
    result = _run(demo_path, train, tmp_path, resume=True, **settings)
    assert [h["step"] for h in result.eval_history] == [0, 2, 4, 6]  # step 0 not again on resuming, step 2 once
    assert [h["eval_reward"] for h in result.eval_history] == pytest.approx(
        [h["eval_reward"] for h in straight.eval_history], abs=1e-6)
    assert [h["reward"] for h in result.history if "loss" in h] == pytest.approx(
        [h["reward"] for h in straight.history if "loss" in h], abs=1e-6)
