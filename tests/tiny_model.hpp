// The model shape the tests build on: 2 layers, hidden 32, 4 query / 2 key-value heads of 8
// (GQA, so every path that repeats k/v is exercised), MLP 48. Tests set what differs.
#pragma once

#include <cstdint>

#include "core/io/hf_config.hpp"

namespace hl::testing {

inline io::ModelConfig tiny_model_config(int64_t vocab_size, int64_t max_positions = 512) {
  io::ModelConfig config;
  config.model_type = "llama";
  config.vocab_size = vocab_size;
  config.hidden_size = 32;
  config.intermediate_size = 48;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = 8;
  config.max_position_embeddings = max_positions;
  return config;
}

}  // namespace hl::testing
