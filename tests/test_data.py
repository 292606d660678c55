import json
import re

import pytest
from transformers import AutoTokenizer

from rslora_colab import (
    FinetuneConfig,
    add_rslora,
    demo_dataset,
    demo_preferences,
    detect_format,
    load_and_validate,
    quick_finetune,
)
from rslora_colab.data.lengths import token_lengths
from rslora_colab.load import runtime_of
from rslora_colab.settings import resolve_run
from rslora_colab.train import build_trainer, masked_preview


@pytest.mark.parametrize("fmt, expected", [("alpaca", "alpaca"), ("chat", "chat"), ("sharegpt", "sharegpt"),
                                           ("text", "text")])
def test_demo_formats_are_detected(fmt, expected):
    assert detect_format(demo_dataset(fmt).column_names) == expected


def _preview(demo_pair, rows, index=0):
    model, tokenizer = demo_pair
    model = add_rslora(model, r=8)
    dataset, fmt = load_and_validate(rows)
    config = FinetuneConfig(r=8, max_seq_length=256, output_dir="unused")
    trainer = build_trainer(model, tokenizer, dataset, fmt, resolve_run(config, runtime_of(model)))
    return masked_preview(trainer, index)


ANSWER = 'The "assert" statement'


@pytest.mark.parametrize("rows", [
    [{"instruction": "Give the heading of topic 'assert'.", "input": "", "output": ANSWER}],
    [{"instruction": "Give the heading of this topic.", "input": "assert", "output": ANSWER}],
    [{"messages": [{"role": "user", "content": "Heading of 'assert'?"}, {"role": "assistant", "content": ANSWER}]}],
    [{"conversations": [{"from": "human", "value": "Heading of 'assert'?"}, {"from": "gpt", "value": ANSWER}]}],
    [{"prompt": "Heading of 'assert'? ", "completion": ANSWER}],
], ids=["alpaca", "alpaca-input", "chat", "sharegpt", "prompt-completion"])
def test_only_the_response_is_trained(demo_pair, rows):
    full, trained = _preview(demo_pair, rows)
    assert "assert" in full.split(ANSWER)[0]  # the prompt is in the input ...
    assert trained.replace("<|im_end|>", "").strip() == ANSWER  # ... but only the answer is learned


def test_multi_turn_chat_trains_every_assistant_turn(demo_pair):
    rows = [{"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "First?"},
        {"role": "assistant", "content": "One."}, {"role": "user", "content": "Second?"},
        {"role": "assistant", "content": "Two."}]}]
    full, trained = _preview(demo_pair, rows)
    assert "Be brief." in full and "Second?" in full
    assert trained.replace("<|im_end|>", "|") == "One.|Two.|"


def test_plain_text_trains_every_token(demo_pair):
    full, trained = _preview(demo_pair, [{"text": "Assert statements insert debugging assertions."}])
    assert trained == full


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_bad_rows_are_named_by_file_line_and_field(tmp_path):
    path = _write_jsonl(tmp_path / "data.jsonl", [
        {"instruction": "ok", "output": "fine"},
        {"instruction": "no answer", "output": ""},
        {"instruction": 3, "output": "x"},
    ])
    with pytest.raises(ValueError) as err:
        load_and_validate(str(path))
    message = str(err.value)
    assert "data.jsonl line 2: field 'output' must be a non-empty string" in message
    assert "data.jsonl line 3: field 'instruction'" in message
    assert "2 problem(s)" in message


def test_invalid_json_line_is_named(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(ValueError, match=r"broken.jsonl line 2: not valid JSON"):
        load_and_validate(str(path))


@pytest.mark.parametrize("rows, match", [
    ([{"question": "q", "answer": "a"}], r"columns \['answer', 'question'\] match no known format"),
    ([{"messages": [{"role": "robot", "content": "hi"}]}], r"row 0: messages\[0\].role='robot'"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], "row 0: field 'messages' has no assistant turn"),
    ([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt"}]}], r"conversations\[1\].value"),
    ([{"prompt": "p", "chosen": "a", "rejected": "b"}], "preference data for DPO"),
    ([{"text": ""}], "row 0: field 'text' must be a non-empty string"),
    # an empty assistant turn is refused like an empty Alpaca output (it would teach the model to say nothing)
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}],
     r"row 0: messages\[1\].content is empty: an assistant turn needs text to learn from"),
    ([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": ""}]}],
     r"row 0: conversations\[1\].value is empty"),
])
def test_malformed_rows_raise_named_errors(rows, match):
    with pytest.raises(ValueError, match=match):
        load_and_validate(rows)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(ValueError, match="nope.jsonl: no such file"):
        load_and_validate(str(tmp_path / "nope.jsonl"))
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(ValueError, match="data.txt: unsupported file type"):
        load_and_validate(str(tmp_path / "data.txt"))


def test_a_folder_says_it_is_a_folder_and_names_the_files_in_it(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", [{"text": "hi"}])
    with pytest.raises(ValueError, match=rf"{tmp_path}: is a folder; pass one data file .* it holds train.jsonl; "
                                         rf"pass one of those, e.g. {tmp_path / 'train.jsonl'}"):
        load_and_validate(str(tmp_path))


@pytest.mark.parametrize("typo", ["./my_data", "../my_data", "~/my_data", "data/sub/my_data"])
def test_a_path_typo_is_not_sent_to_the_hub(typo, monkeypatch):
    import datasets

    def no_hub(*args, **kwargs):
        raise AssertionError("sent to the Hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    with pytest.raises(ValueError, match=f"{typo.split('/')[-1]}: no such file or folder"):
        load_and_validate(typo)


def test_a_jsonl_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"instruction": "hi", "output": "yo"}\n{"instruction": "a", "output": "b"}\n')
    dataset, fmt = load_and_validate(str(path))
    assert fmt == "alpaca" and dataset[0] == {"instruction": "hi", "output": "yo"}


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_other_file_types_load(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    rows = demo_dataset("alpaca", n=4)
    {".csv": rows.to_csv, ".parquet": rows.to_parquet, ".json": rows.to_json}[suffix](str(path))
    dataset, fmt = load_and_validate(str(path))
    assert fmt == "alpaca" and len(dataset) == 4


BAD_FILES = [
    ("latin1.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n',
     "latin1.jsonl line 2: not UTF-8 text (byte 0xe9 at column 14"),
    ("comma.jsonl", b'{"text": "ok"}\n{"text": "x",}\n', "comma.jsonl line 2: not valid JSON (Expecting property name"),
    ("list.jsonl", b'{"text": "ok"}\n["text"]\n', "list.jsonl line 2: expected a JSON object, got list"),
    ("broken.json", b'[{"text": "ok"},\n {"text": "x"},\n {"text": }\n]',
     "broken.json line 3: not valid JSON (Expecting value at column 11)"),
    ("latin1.json", b'[{"text": "ok"},\n {"text": "caf\xe9"}]', "latin1.json line 2: not UTF-8 text (byte 0xe9"),
    ("lines.json", b'{"text": "ok"}\n{"text": "x",}\n', "lines.json line 2: not valid JSON"),  # JSON Lines in .json
    ("strings.json", b'["a", "b"]', "strings.json: item 0 of the list is a str; expected one JSON object per row"),
    ("scalar.json", b'"just text"', "scalar.json: holds a single str; expected a list of JSON objects"),
    ("fields.csv", b'text,other\n"a",b\n"c",d,e\n', "fields.csv line 3: 3 fields, but the header has 2 (text, other)"),
    ("latin1.csv", b"text\ncaf\xe9\n", "latin1.csv line 2: not UTF-8 text (byte 0xe9 at column 4"),
    ("quote.csv", b'text\n"never closed\nmore\n', "quote.csv line 2: not valid CSV"),
    ("renamed.parquet", b"text\nnot parquet at all\n", "renamed.parquet: could not be read as a Parquet file"),
]
"""Files that cannot be read, and the start of the one-line error each must give: the file, and the line where
there is one."""


@pytest.mark.parametrize("name, content, message", BAD_FILES, ids=[name for name, _, _ in BAD_FILES])
def test_a_data_file_that_cannot_be_read_is_one_error_naming_it(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / message))) as err:
        load_and_validate(str(path))
    assert not isinstance(err.value, UnicodeError) and len(str(err.value).splitlines()) == 1
    # as eval data: the same error, before any model loads (the model id does not exist and there is no network)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / message))):
        quick_finetune("no-such-org/no-such-model", demo_dataset("text", n=4), eval_dataset=str(path),
                       output_dir=str(tmp_path / "run"))


def test_a_truncated_parquet_file_is_named_with_the_cause(tmp_path):
    path = tmp_path / "cut.parquet"
    demo_dataset(n=40).to_parquet(str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=re.escape(f"{path}: could not be read as a Parquet file (damaged, or another "
                                                   "format renamed?) (ArrowInvalid: ")):
        load_and_validate(str(path))


def test_bad_data_fails_before_the_model_loads(tmp_path):
    # the model id does not exist and there is no network: reaching the loader would fail differently
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"text": ""}])
    with pytest.raises(ValueError, match="bad.jsonl line 1"):
        quick_finetune("no-such-org/no-such-model", str(path), r=16)


LONG = "Explain, in the words of the Python manual and at length, " + "the assert statement and its uses " * 12
"""An instruction of about 90 demo tokens: at max_seq_length=64 nothing of the answer survives truncation."""


def _mixed_rows(long_every=2, n=12):
    return [{"instruction": LONG if i % long_every == 0 else f"Heading of topic {i}?", "input": "",
             "output": ANSWER} for i in range(n)]


def test_rows_whose_prompt_fills_max_seq_length_are_named_before_training(demo_path, tmp_path, capsys):
    result = quick_finetune(demo_path, _mixed_rows(), r=8, max_steps=2, batch_size=2, grad_accum=1,
                            max_seq_length=64, output_dir=str(tmp_path))
    printed = capsys.readouterr().out
    warning = next(line for line in printed.splitlines() if "WARNING" in line)
    assert "6 of 12 rows will be dropped by TRL: the prompt alone is max_seq_length=64 tokens or more" in warning
    assert "(row 0, row 2, row 4, row 6, row 8, ...)" in warning and "Raise max_seq_length" in warning
    assert printed.index("WARNING") < printed.index("loading")  # counted before the model loaded
    assert "on 6 of 12 alpaca rows" in printed  # and the trainer kept the other 6, as counted
    assert len(result.history) == 2


def test_data_with_no_row_left_after_truncation_fails_before_the_model_loads(demo_path, tmp_path):
    tokenizer_only = tmp_path / "tokenizer-only"  # no weights: reaching the loader would fail differently
    AutoTokenizer.from_pretrained(demo_path).save_pretrained(tokenizer_only)
    with pytest.raises(ValueError, match=r"dataset: every one of the 6 rows has a prompt of max_seq_length=64 tokens "
                                         r"or more.*Raise max_seq_length \(CLI: --seq\) above the longest prompt"):
        quick_finetune(str(tokenizer_only), _mixed_rows(long_every=1, n=6), r=8, max_seq_length=64,
                       output_dir=str(tmp_path / "out"))
    pairs = [{"prompt": LONG, "chosen": "yes", "rejected": "no"}] * 3
    with pytest.raises(ValueError, match="every one of the 3 pairs"):
        quick_finetune(str(tokenizer_only), pairs, r=8, method="dpo", max_seq_length=64,
                       output_dir=str(tmp_path / "dpo"))


@pytest.mark.parametrize("rows, method", [
    (demo_dataset("alpaca", n=6), "sft"),
    ([{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "First?"},
                    {"role": "assistant", "content": "One."}, {"role": "user", "content": LONG},
                    {"role": "assistant", "content": "Two."}]}], "sft"),
    (demo_dataset("text", n=6), "sft"),
    (demo_dataset("sharegpt", n=6), "sft"),
    ([{"prompt": "Heading of 'assert'? ", "completion": ANSWER}, {"prompt": LONG, "completion": ANSWER}], "sft"),
    (demo_preferences("chat", n=6), "dpo"),
    (demo_preferences("text", n=6), "dpo"),
], ids=["alpaca", "multi-turn-chat", "text", "sharegpt", "prompt-completion", "dpo-chat", "dpo-text"])
def test_token_lengths_are_what_trl_builds(demo_pair, rows, method):
    model, tokenizer = demo_pair
    model = add_rslora(model, r=8)
    dataset, fmt = load_and_validate(rows, method)
    config = FinetuneConfig(r=8, max_seq_length=4096, output_dir="unused", method=method)
    trainer = build_trainer(model, tokenizer, dataset, fmt, resolve_run(config, runtime_of(model)))
    lengths = token_lengths(dataset, fmt, tokenizer, method)
    built = trainer.train_dataset
    if method == "dpo":
        assert lengths.prompt == [len(r["prompt_ids"]) for r in built]
        assert lengths.total == [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"]))
                                 for r in built]
    else:
        assert lengths.total == [len(r["input_ids"]) for r in built]
        assert lengths.prompt == [next(i for i, label in enumerate(r["labels"]) if label != -100) for r in built]
    assert lengths.rows == list(range(len(dataset))) and not lengths.sampled


def test_big_datasets_are_measured_on_an_even_sample(demo_pair):
    dataset, fmt = load_and_validate(demo_dataset("text"))
    lengths = token_lengths(dataset, fmt, demo_pair[1], sample=40)
    assert lengths.sampled and len(lengths.rows) == 40 and lengths.rows[:3] == [0, 3, 7]
    assert lengths.scaled(10) == round(10 * 158 / 40)


@pytest.mark.parametrize("name, text, expected", [
    ("dup.jsonl", '{"text": "a"}\n{"text": "a", "text": "b"}\n', r"dup.jsonl line 2: the key 'text' appears twice"),
    ("surrogate.jsonl", '{"text": "a\\ud800b"}\n', r"surrogate.jsonl line 1: a \\ud800 escape that is half of a"),
    ("empty.jsonl", "", r"empty.jsonl: is empty \(no rows\)"),
    ("blank.jsonl", "\n  \n", r"blank.jsonl: is empty \(no rows\)"),
    ("long.jsonl", '{"text": "a", "n": ' + "1" * 5001 + "}\n", r"long.jsonl line 1: a value cannot be read \(Exceeds"),
    ("empty.json", "", r"empty.json: is empty \(no rows\)"),
    ("dup.json", '[{"text": "a", "text": "b"}]', r"dup.json: the key 'text' appears twice"),
], ids=["duplicate-key", "lone-surrogate", "empty-jsonl", "blank-jsonl", "5001-digits", "empty-json", "dup-json"])
def test_a_malformed_file_is_one_line_naming_the_file_the_line_and_the_cause(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=expected) as caught:
        load_and_validate(str(path))
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
