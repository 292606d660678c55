"""How far each way of merging an rsLoRA adapter lands from the model as trained (4-bit base + adapter).

    OMP_NUM_THREADS=1 python bench/measure_merge.py

Results and the machine they were measured on: docs/dpo_chat_export.md.
"""

import tempfile

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from rslora_colab import add_rslora, demo_model, load_model, save
from rslora_colab.save import save_adapter


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def main() -> None:
    torch.set_num_threads(1)
    path = demo_model()
    model, tokenizer = load_model(path, max_seq_length=256)
    model = add_rslora(model, r=16)  # scale 4
    generator = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # an adapter that changes the logits, as a trained one does
            param.data = torch.randn(param.shape, generator=generator) * 0.02
    ids = tokenizer(["The assert statement is used for debugging assertions in a program."],
                    return_tensors="pt").input_ids
    trained = logits(model, ids)
    with model.disable_adapter():
        base = logits(model, ids)
    rows = [("adapter's own effect (trained vs base)", trained, base)]
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(model, tokenizer, f"{tmp}/adapter")
        save(model, f"{tmp}/kit", how="merged_16bit", tokenizer=tokenizer)
        kit = AutoModelForCausalLM.from_pretrained(f"{tmp}/kit", dtype=torch.float32)
        rows.append(("kit: dequantized NF4 base + adapter, saved fp16", logits(kit, ids), trained))
        for dtype in (torch.float32, torch.bfloat16):
            deq, _ = load_model(path, max_seq_length=256)
            deq = PeftModel.from_pretrained(deq.dequantize(dtype=dtype).to(dtype), f"{tmp}/adapter").merge_and_unload()
            rows.append((f"dequantized NF4 base + adapter, {str(dtype)[6:]}", logits(deq.float(), ids), trained))
        original = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        original = PeftModel.from_pretrained(original, f"{tmp}/adapter").merge_and_unload()
        rows.append(("original unquantized base + adapter, fp32", logits(original, ids), trained))
        naive, _ = load_model(path, max_seq_length=256)
        naive = PeftModel.from_pretrained(naive, f"{tmp}/adapter").merge_and_unload()  # PEFT re-quantizes to NF4
        rows.append(("PEFT merge_and_unload into the 4-bit layers", logits(naive, ids), trained))
    print(f"\nlogits of the trained model span {trained.min():.2f} .. {trained.max():.2f}")
    print(f"{'merge':<50} max |logit difference|")
    for label, a, b in rows:
        print(f"{label:<50} {(a - b).abs().max().item():.2g}")


if __name__ == "__main__":
    main()
