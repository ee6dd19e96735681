// Anchors the shared LibTorch precompiled header (and keeps static libraries non-empty).
