#!/usr/bin/env python3
"""Writes tiny random Hugging Face models and their reference logits for our parity test.

For each architecture (Llama, Llama-3 style with rope scaling and GQA, Mistral with a
sliding window, Qwen2 with q/k/v biases) it saves a model with `transformers`, random
token ids, and the logits transformers computes in float32 and bfloat16. It also trains a
small byte-level BPE tokenizer with `tokenizers` and records the ids it gives for texts
with unicode, digits and whitespace runs. tests/model/hf_parity_test.cpp reads them all
(HL_PARITY_DIR=<out>).
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file


def tiny(kind):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config
    common = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  rms_norm_eps=1e-5, tie_word_embeddings=False)
    if kind == "llama":
        return LlamaConfig(**{**common, "num_key_value_heads": 4})
    if kind == "llama3":
        return LlamaConfig(**common, rope_theta=500000.0,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 64})
    if kind == "mistral":
        return MistralConfig(**common, sliding_window=16)
    if kind == "qwen2":
        return Qwen2Config(**{**common, "tie_word_embeddings": True})
    raise ValueError(kind)


def main(out):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    for kind in ["llama", "llama3", "mistral", "qwen2"]:
        config = tiny(kind)
        config._attn_implementation = "eager"
        model = AutoModelForCausalLM.from_config(config).float().eval()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.1)
        path = os.path.join(out, kind)
        model.save_pretrained(path, safe_serialization=True)
        ids = torch.randint(0, config.vocab_size, (2, 40))
        with torch.no_grad():
            fp32 = model(ids).logits
            bf16 = model.to(torch.bfloat16)(ids).logits.float()
        save_file({"input_ids": ids.contiguous(), "logits_float32": fp32.contiguous(),
                   "logits_bfloat16": bf16.contiguous()}, os.path.join(path, "expected.safetensors"))
        print(f"{kind}: saved", flush=True)

    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    corpus = [
        "The quick brown fox jumps over the lazy dog 1234567 times.",
        "Grüße aus Köln! 東京は晴れ。 Ünïcödé   with    runs of spaces\n\n\tand tabs.",
        "def f(x):\n    return x ** 2  # 3.14159 and 42,000,000",
    ] * 50
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|bos|>", "<|eos|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok_dir = os.path.join(out, "tokenizer")
    os.makedirs(tok_dir, exist_ok=True)
    tok.save(os.path.join(tok_dir, "tokenizer.json"))
    texts = ["Hello world 2024!", "  leading spaces and 1,234.5678 numbers",
             "Grüße 東京 émoji 🙂 mixed\n\n  lines\t\ttabs", "x=10;y=200;z=3000", "<|bos|>special"]
    cases = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in texts]
    with open(os.path.join(tok_dir, "expected.json"), "w") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
    print("tokenizer: saved", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "parity")
