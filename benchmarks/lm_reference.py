"""Reference tokens for tests/test_lm.py: HF transformers (torch, float32) on the embedded
SmolLM2-135M-Instruct GGUF, greedy 32-token continuations of three prompts with their top logits,
plus tokenizer ids of a multilingual text.

Run in a separate venv (never a dependency of the package or its tests):
    python3 -m venv /tmp/hf && /tmp/hf/bin/pip install torch transformers gguf
    /tmp/hf/bin/python benchmarks/lm_reference.py --model-dir DIR_OF_GGUF > tests/lm_reference.json
"""
import argparse
import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
STEPS = 32
TOP = 5
PROMPTS = [
    {"text": "The capital of France is", "chat": False},
    {"text": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n", "chat": False},
    {"text": "Give me three tips for staying healthy.", "chat": True},
]
TOKENIZER_TEXTS = [
    "Hello, world! 12345 don't   spaces\n\ttabs",
    "Grüße aus München — ça va? Ελληνικά, русский, 日本語のテキスト, 한국어 🤖🎉",
    "<|im_start|>user\nHi there<|im_end|>\n",
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    options = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(options.model_dir, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(options.model_dir, gguf_file=GGUF,
                                                 torch_dtype=torch.float32)
    model.eval()
    cases = []
    for prompt in PROMPTS:
        if prompt["chat"]:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt["text"]}],
                                                add_generation_prompt=True)
            if hasattr(ids, "keys"):
                ids = ids["input_ids"]
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": prompt["text"]}],
                                                     add_generation_prompt=True, tokenize=False)
        else:
            ids = tokenizer.encode(prompt["text"], add_special_tokens=False)
            rendered = prompt["text"]
        tokens = list(ids)
        generated, top_ids, top_logits = [], [], []
        with torch.no_grad():
            for _ in range(STEPS):
                logits = model(torch.tensor([tokens])).logits[0, -1].float()
                values, indices = torch.topk(logits, TOP)
                top_ids.append(indices.tolist())
                top_logits.append([round(v, 4) for v in values.tolist()])
                nxt = int(torch.argmax(logits))
                generated.append(nxt)
                tokens.append(nxt)
        cases.append({"prompt": prompt["text"], "chat": prompt["chat"], "rendered": rendered,
                      "prompt_ids": list(ids), "greedy_ids": generated, "top_ids": top_ids,
                      "top_logits": top_logits, "text": tokenizer.decode(generated)})
    texts = [{"text": t, "ids": tokenizer.encode(t, add_special_tokens=False)} for t in TOKENIZER_TEXTS]
    print(json.dumps({"model": GGUF, "source": "transformers (torch float32) on the GGUF",
                      "steps": STEPS, "prompts": cases, "tokenizer": texts}, indent=1))


if __name__ == "__main__":
    main()
