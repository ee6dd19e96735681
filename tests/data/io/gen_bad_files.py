#!/usr/bin/env python3
"""Writes the malformed-file corpus in bad/: each case is a file (or directory) plus a
sidecar <name>.expected holding a substring its error message must contain. The prefix
picks the loader: st_ safetensors, config_ config.json, tokenizer_ tokenizer.json,
spm_ tokenizer.model, index_ sharded checkpoint directory."""
import json
import os
import shutil
import struct
import sys


def safetensors_bytes(header, data=b"", raw_header=None):
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def main(out):
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)

    def case(name, content, expected):
        path = os.path.join(out, name)
        with open(path, "wb") as f:
            f.write(content if isinstance(content, bytes) else content.encode())
        with open(path + ".expected", "w") as f:
            f.write(expected)

    f32 = lambda shape, begin, end: {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}
    # safetensors
    case("st_empty.safetensors", b"", "file is empty")
    case("st_short.safetensors", b"\x01\x02\x03\x04\x05", "too short for the 8-byte")
    case("st_header_past_end.safetensors", struct.pack("<Q", 1000) + b"{}" + b"\0" * 40,
         "header length 1000 runs past the end of the file")
    case("st_bad_json.safetensors", safetensors_bytes(None, raw_header=b'{"a": {"dtype": "F32",'),
         "header is not valid JSON")
    case("st_header_not_object.safetensors", safetensors_bytes([1, 2]), "header JSON is not an object")
    case("st_truncated_data.safetensors", safetensors_bytes({"w": f32([4, 4], 0, 64)}, b"\0" * 10),
         "w: data_offsets [0, 64] run past the end of the data (10 bytes)")
    case("st_reversed_offsets.safetensors", safetensors_bytes({"w": f32([2], 8, 0)}, b"\0" * 8),
         "end before they begin")
    case("st_overlap.safetensors",
         safetensors_bytes({"a": f32([4], 0, 16), "b": f32([4], 8, 24)}, b"\0" * 24),
         "tensors 'a' and 'b' have overlapping data_offsets")
    case("st_shape_mismatch.safetensors", safetensors_bytes({"w": f32([3], 0, 8)}, b"\0" * 8),
         "span 8 bytes but shape [3] of F32 needs 12 bytes")
    case("st_unknown_dtype.safetensors",
         safetensors_bytes({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 1]}}, b"\0"),
         "unknown dtype 'Q4'")
    case("st_f8_dtype.safetensors",
         safetensors_bytes({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"\0\0"),
         "dtype F8_E4M3 is not supported")
    case("st_negative_shape.safetensors",
         safetensors_bytes({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
         "shape entries must be non-negative integers")
    case("st_missing_offsets.safetensors",
         safetensors_bytes({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4),
         "'data_offsets' must be an array [begin, end]")
    case("st_metadata_not_string.safetensors",
         safetensors_bytes({"__metadata__": {"format": 1}}), "__metadata__ value of 'format' is not a string")
    case("st_shape_overflow.safetensors",
         safetensors_bytes({"w": f32([2**62, 2**62], 0, 4)}, b"\0" * 4), "needs more than 2^64 bytes")
    case("st_entry_not_object.safetensors", safetensors_bytes({"w": 5}), "w: tensor entry is not an object")

    # config.json
    good = {"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4}
    case("config_bad_json.json", '{"model_type": "llama",\n "vocab_size": 100,\n oops}',
         "config_bad_json.json:3: config is not valid JSON")
    missing = dict(good)
    del missing["hidden_size"]
    case("config_missing_field.json", json.dumps(missing), "hidden_size: required field is missing")
    case("config_unsupported_arch.json", json.dumps(dict(good, model_type="gpt2")),
         "unsupported architecture 'gpt2'")
    case("config_wrong_type.json", json.dumps(dict(good, hidden_size="64")),
         "hidden_size: must be an integer, got string")
    case("config_bad_kv_heads.json", json.dumps(dict(good, num_key_value_heads=3)),
         "num_key_value_heads: must divide num_attention_heads (4), got 3")
    case("config_rope_yarn.json", json.dumps(dict(good, rope_scaling={"rope_type": "yarn", "factor": 4.0})),
         "rope scaling type 'yarn' is not supported")
    case("config_not_object.json", "[1, 2, 3]", "config must be a JSON object")

    # tokenizer.json
    vocab = {"a": 0, "b": 1, "ab": 2}
    def tokenizer(model=None, pre=None):
        return json.dumps({
            "version": "1.0", "added_tokens": [], "normalizer": None,
            "pre_tokenizer": pre if pre is not None else
                {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
            "post_processor": None, "decoder": {"type": "ByteLevel"},
            "model": model if model is not None else {"type": "BPE", "vocab": vocab, "merges": ["a b"]},
        })
    case("tokenizer_bad_json.json", '{"model": {"type": "BPE", "vocab": {', "tokenizer is not valid JSON")
    case("tokenizer_unknown_model.json", tokenizer(model={"type": "WordPiece", "vocab": vocab}),
         "model type 'WordPiece' is not supported")
    case("tokenizer_merge_unknown.json",
         tokenizer(model={"type": "BPE", "vocab": vocab, "merges": ["a z"]}),
         "merge 0 ('a' 'z') references a token that is not in the vocab")
    case("tokenizer_merge_result_unknown.json",
         tokenizer(model={"type": "BPE", "vocab": vocab, "merges": [["b", "a"]]}),
         "produces 'ba', which is not in the vocab")
    case("tokenizer_bad_merge_format.json",
         tokenizer(model={"type": "BPE", "vocab": vocab, "merges": ["ab"]}),
         "merge 'ab' is not two tokens separated by a space")
    case("tokenizer_bad_regex.json",
         tokenizer(pre={"type": "Split", "pattern": {"Regex": "\\w+"}, "behavior": "Isolated"}),
         "Split regex is not one of the supported patterns")
    case("tokenizer_metaspace.json",
         tokenizer(pre={"type": "Metaspace", "replacement": "\u2581"}),
         "pre-tokenizer type 'Metaspace' is not supported")
    case("tokenizer_bad_vocab_id.json",
         tokenizer(model={"type": "BPE", "vocab": {"a": -4}, "merges": []}),
         "vocab id of 'a' is not a non-negative integer")

    # tokenizer.model
    case("spm_empty.model", b"", "tokenizer.model is empty")
    case("spm_truncated.model", b"\x0a\xff\x01\x0a\x01a", "corrupt or truncated SentencePiece model")

    # sharded checkpoints
    index = {"metadata": {"total_size": 16}, "weight_map": {"w": "model-00001-of-00002.safetensors"}}
    d = os.path.join(out, "index_missing_shard")
    os.makedirs(d)
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    with open(d + ".expected", "w") as f:
        f.write("shard listed in the index is missing: model-00001-of-00002.safetensors")
    d = os.path.join(out, "index_wrong_shard")
    os.makedirs(d)
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {"w": "model-00001-of-00002.safetensors",
                                  "v": "model-00001-of-00002.safetensors"}}, f)
    with open(os.path.join(d, "model-00001-of-00002.safetensors"), "wb") as f:
        f.write(safetensors_bytes({"w": f32([4], 0, 16)}, b"\0" * 16))
    with open(d + ".expected", "w") as f:
        f.write("v: index maps the tensor to model-00001-of-00002.safetensors, which does not contain it")
    d = os.path.join(out, "index_bad_json")
    os.makedirs(d)
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        f.write('{"weight_map": ')
    with open(d + ".expected", "w") as f:
        f.write("index is not valid JSON")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bad")
