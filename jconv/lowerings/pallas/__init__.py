"""Hand-written Pallas kernels, one module per kernel family (kernel, wrapper, reference, BlockSizes)."""
