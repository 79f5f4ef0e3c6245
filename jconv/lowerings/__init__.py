"""Lowerings: each module turns a ConvSpec and arrays into the convolution's output.

Every lowering module has the same interface:

    NAME: str                       the name users pass as lowering=...
    DETERMINISTIC: bool             bitwise-reproducible on every platform it runs on
    accepts(spec) -> str | None     None if it handles the spec, else the reason it does not
    lower(spec, x, w) -> y          x batched, in the spec's layout, already padded for non-zero padding modes
                                    (zeros padding is the lowering's job, from spec.lowering_padding); w in
                                    PyTorch's layout; y batched, in the spec's layout, without bias

Adding a lowering is one module here and one entry in jconv.dispatch.
"""
