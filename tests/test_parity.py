"""Forward and gradient parity with torch.nn.functional, for every lowering on every case it accepts.

A new lowering registered in jconv.dispatch.LOWERINGS joins these tests automatically.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import jconv
from parity import accepted, assert_parity, build_spec, jconv_forward, torch_and_jconv
from references import Case, numpy_conv, numpy_conv_transpose, resolve_pads, torch_forward_and_grads

LOWERINGS = ("auto",) + jconv.LOWERING_NAMES


def _grid():
    cases = []
    for n in (1, 2, 3):
        sp = {1: (11,), 2: (9, 8), 3: (6, 5, 7)}[n]
        k3 = (3,) * n
        conv = dict(n=n, transposed=False, batch=2, spatial=sp)
        cases += [
            Case(**conv, in_channels=3, out_channels=4, kernel=k3, padding=1),
            Case(**conv, in_channels=3, out_channels=4, kernel=k3, stride=(2,) * n),
            Case(**conv, in_channels=3, out_channels=2, kernel=k3, dilation=(2,) * n, padding=2),
            Case(**conv, in_channels=4, out_channels=6, kernel=k3, groups=2, padding=1, stride=(2,) * n),
            Case(**conv, in_channels=4, out_channels=8, kernel=k3, groups=4, padding=1),  # multiplier 2
            Case(**conv, in_channels=3, out_channels=3, kernel=k3, groups=3, padding=2, dilation=(2,) * n),
            Case(**conv, in_channels=3, out_channels=3, kernel=(4,) * n, groups=3, padding="same",
                 dilation=(2,) * n),
            Case(**conv, in_channels=2, out_channels=3, kernel=(2,) * n, padding="same"),
            Case(**conv, in_channels=2, out_channels=3, kernel=k3, padding="valid", bias=False),
            Case(**conv, in_channels=2, out_channels=3, kernel=(1,) * n, stride=(3,) * n),
            Case(**conv, in_channels=2, out_channels=3, kernel=k3, padding=2, padding_mode="reflect"),
            Case(**conv, in_channels=2, out_channels=4, kernel=k3, padding=2, padding_mode="replicate", groups=2),
            Case(**conv, in_channels=2, out_channels=3, kernel=k3, padding=5, padding_mode="circular"),
            Case(**conv, in_channels=3, out_channels=3, kernel=(4,) * n, padding="same", padding_mode="reflect",
                 groups=3),
            Case(**conv, in_channels=3, out_channels=4, kernel=k3, padding=1, channels_last=True),
            Case(**conv, in_channels=4, out_channels=4, kernel=k3, groups=4, padding=1, channels_last=True,
                 stride=(2,) * n),
            Case(**dict(conv, batch=1), in_channels=3, out_channels=4, kernel=k3, padding=1, unbatched=True),
            Case(**dict(conv, batch=1), in_channels=3, out_channels=4, kernel=k3, padding=1, unbatched=True,
                 channels_last=True, padding_mode="circular"),
            # Groups too wide to merge into one dense conv (9 input channels > grouped.MERGE_MAX_IN_PER_GROUP).
            Case(**conv, in_channels=18, out_channels=4, kernel=k3, groups=2, padding=1),
            # A batch that the weight gradient's summed form cuts into ragged blocks (9 into 8 blocks of 2).
            Case(**dict(conv, batch=9), in_channels=2, out_channels=4, kernel=k3, groups=2, padding=1,
                 stride=(2,) + (1,) * (n - 1)),
            # Padding beyond the kernel's reach on the first axis only (its output is longer than its input): on
            # CPU the xla lowering pads that axis beforehand and folds the others' padding into the conv.
            Case(**conv, in_channels=3, out_channels=4, kernel=k3, padding=(3,) + (1,) * (n - 1)),
            Case(**conv, in_channels=4, out_channels=6, kernel=(2,) * n, groups=2, padding=(1,) + (0,) * (n - 1),
                 stride=(1,) * (n - 1) + (2,)),
        ]
        if n <= 2:  # more than 64 taps: the looped tap sum
            big = (9, 9) if n == 2 else (70,)
            cases += [Case(**dict(conv, spatial=(20, 19) if n == 2 else (90,)), in_channels=2, out_channels=4,
                           kernel=big, groups=2, stride=(2,) * n, padding=3)]
        if n >= 2:  # large kernels: a loop over kernel rows; rows of 27+ taps take the banded weight gradient
            lead = (1,) * (n - 2)
            cases += [
                Case(**dict(conv, spatial=(5,) * (n - 2) + (6, 40)), in_channels=2, out_channels=4,
                     kernel=lead + (3, 29), groups=2, stride=lead + (1, 2), padding=(0,) * (n - 2) + (1, 14),
                     dilation=lead + (2, 1)),
                Case(**dict(conv, spatial=(7, 8, 9)[:n]), in_channels=3, out_channels=3,
                     kernel=(9, 9) if n == 2 else (5, 5, 5), groups=3, padding=2, stride=(2,) + (1,) * (n - 1),
                     channels_last=True),
            ]
            cases += [  # more than 27 taps at stride 1: the summed weight gradient's loop over kernel rows
                Case(**conv, in_channels=3, out_channels=6, kernel=lead + (5, 7), groups=3, padding="same",
                     dilation=lead + (1, 2)),
                Case(**conv, in_channels=2, out_channels=3, kernel=(3, 2) + (1,) * (n - 2), stride=(1, 2) + (1,) * (n - 2),
                     padding=(2, 0) + (1,) * (n - 2), dilation=(1, 3) + (1,) * (n - 2)),
            ]
        tr = dict(n=n, transposed=True, batch=2, spatial={1: (7,), 2: (5, 6), 3: (4, 3, 5)}[n])
        cases += [
            Case(**tr, in_channels=3, out_channels=4, kernel=k3, stride=(2,) * n, padding=1,
                 output_padding=(1,) * n),
            Case(**tr, in_channels=3, out_channels=2, kernel=(2,) * n, stride=(3,) * n),
            Case(**tr, in_channels=2, out_channels=3, kernel=k3, stride=(2,) * n, dilation=(2,) * n,
                 output_padding=(1,) * n, padding=2),
            Case(**tr, in_channels=4, out_channels=6, kernel=k3, groups=2, stride=(2,) * n, padding=1),
            Case(**tr, in_channels=3, out_channels=6, kernel=(4,) * n, groups=3, stride=(2,) * n, padding=1),
            Case(**tr, in_channels=2, out_channels=2, kernel=(2,) * n, padding=1, dilation=(3,) * n,
                 output_padding=(2,) * n),  # output_padding < dilation with stride 1
            Case(**tr, in_channels=2, out_channels=3, kernel=k3, stride=(2,) * n, channels_last=True, bias=False),
            Case(**dict(tr, batch=1), in_channels=2, out_channels=3, kernel=k3, stride=(2,) * n, unbatched=True),
            # k = s: one tap per phase (grouped and channels-last; depthwise with a channel multiplier of 2).
            Case(**tr, in_channels=4, out_channels=6, kernel=(2,) * n, groups=2, stride=(2,) * n,
                 channels_last=True),
            Case(**tr, in_channels=3, out_channels=6, kernel=(3,) * n, groups=3, stride=(3,) * n),
        ]
        if n == 1:  # HiFi-GAN's upsampler: k = 2s, p = s/2
            cases += [Case(**tr, in_channels=4, out_channels=6, kernel=(8,), groups=2, stride=(4,), padding=2)]
    return cases


GRID = _grid()


def _eager_auto_cases():
    """The 1-D and 2-D cases on which auto runs eagerly: alternate ones, shifted by one between 1-D and 2-D, so
    that each kind of case the grid lists in both runs eagerly in exactly one of them (a test below checks it;
    eager auto was a third of the whole suite's time when it ran on all of them)."""
    eager = []
    for n in (1, 2):
        eager += [c for i, c in enumerate(c for c in GRID if c.n == n) if (i + n) % 2 == 0]
    return eager


EAGER_AUTO_CASES = _eager_auto_cases()


def _case_id(c: Case) -> str:
    kind = "tr" if c.transposed else "conv"
    extra = [f"g{c.groups}" if c.groups > 1 else "", f"s{c.stride[0]}" if max(c.stride) > 1 else "",
             f"d{max(c.dilation)}" if max(c.dilation) > 1 else "", f"p{c.padding}",
             c.padding_mode if c.padding_mode != "zeros" else "", "cl" if c.channels_last else "",
             "unb" if c.unbatched else "", "nob" if not c.bias else ""]
    return f"{kind}{c.n}d-k{c.kernel[0]}-" + "-".join(e for e in extra if e)


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("case", GRID, ids=_case_id)
def test_grid_parity_float64(case, lowering):
    if not accepted(case, lowering):
        pytest.skip(f"{lowering} does not accept this case")
    # auto runs eagerly on EAGER_AUTO_CASES, the way a user's first call runs (jconv's jitted core forward, then
    # its backward compiled separately), and jitted elsewhere: eager calls differ from jitted ones only in how the
    # programs are split (eagerly the 3-D cases took 115 s against 28 s as one program).
    assert_parity(case, lowering, jit=not (lowering == "auto" and case in EAGER_AUTO_CASES))


def test_eager_auto_runs_each_kind_of_1d_and_2d_case_once():
    def kind(c):  # a case without its dimension: per-axis tuples by their first entry
        first = lambda v: v[0] if isinstance(v, tuple) else v
        return tuple(first(getattr(c, f.name)) for f in dataclasses.fields(c) if f.name not in ("n", "spatial"))

    both = {kind(c) for c in GRID if c.n == 1} & {kind(c) for c in GRID if c.n == 2}
    eager = collections.Counter(kind(c) for c in EAGER_AUTO_CASES)
    assert len(both) >= 20 and all(eager[k] == 1 for k in both), {k: eager[k] for k in both}


def test_grid_covers_every_form_of_the_taps_lowering():
    """The grid above reaches each of taps' forms, so its parity checks guard all of them."""
    from jconv.lowerings import taps

    forward_forms, weight_forms = set(), set()
    for case in GRID:
        if not accepted(case, "taps"):
            continue
        x, w, b = case.arrays()
        spec = build_spec(case, "taps", jnp.asarray(x), jnp.asarray(w), None)
        forward_forms.add("rows" if taps._large_kernel_rows(spec) else
                          "unrolled" if math.prod(spec.kernel_size) <= taps.MAX_UNROLLED_TAPS else "per-tap loop")
        weight_forms.add((taps.weight_grad_form(spec), max(spec.stride) > 1, case.batch > taps.SUMMED_BLOCKS))
    assert forward_forms == {"unrolled", "rows", "per-tap loop"}, forward_forms
    assert {f[0] for f in weight_forms} == {"summed", "summed-loop", "banded", "per-tap-loop"}, weight_forms
    assert ("per-tap-loop", True, False) in weight_forms, weight_forms  # strided: the stride phases
    assert ("summed", True, True) in weight_forms, weight_forms  # strided, batch cut into ragged blocks


@pytest.mark.parametrize("case", [
    Case(n=2, transposed=False, batch=8, in_channels=3, out_channels=3, spatial=(9, 7), kernel=(3, 3), padding=1,
         groups=3),
    Case(n=2, transposed=False, batch=6, in_channels=2, out_channels=2, spatial=(8, 9), kernel=(5, 3),
         padding=(2, 1), dilation=(1, 2), groups=2, channels_last=True),
    Case(n=1, transposed=False, batch=8, in_channels=4, out_channels=4, spatial=(11,), kernel=(4,), padding=3,
         groups=4),
    Case(n=3, transposed=False, batch=5, in_channels=2, out_channels=2, spatial=(4, 5, 6), kernel=(2, 3, 2),
         padding=(1, 0, 1), groups=2, padding_mode="reflect"),
    Case(n=2, transposed=False, batch=8, in_channels=2, out_channels=2, spatial=(7, 7), kernel=(3, 3),
         padding="same", groups=2, padding_mode="circular", bias=False),
], ids=_case_id)
def test_taps_weight_gradient_from_the_padded_output_gradient(case):
    """At stride 1 with whole-batch blocks the unrolled summed weight gradient reads grad_input's padded output
    gradient instead of the padded input (taps._reads_the_padded_output_grad). The grid's batches are too small
    to take that form; these take it, checked against torch."""
    from jconv.lowerings import taps

    spec = build_spec(case, "taps", *map(jnp.asarray, case.arrays()[:2]), None)
    blocks = taps._summing_blocks(spec, case.batch)
    assert taps.weight_grad_form(spec) == "summed" and blocks.row_blocks == 1 and blocks.extra_batch == 0
    assert taps._reads_the_padded_output_grad(spec, blocks)
    assert_parity(case, "taps")


@pytest.mark.parametrize("case", [
    # Depthwise 3x31 with dilation 2 along the 31-tap row: dropping the dilation from the banded weight gradient
    # was off by ~60 here, and the grid's large kernels are dilated along their leading axis only.
    Case(n=2, transposed=False, batch=2, in_channels=2, out_channels=2, spatial=(6, 70), kernel=(3, 31),
         padding=(1, 30), dilation=(1, 2), groups=2),
    # Stride and dilation along the row, a channel multiplier, channels-last.
    Case(n=2, transposed=False, batch=3, in_channels=2, out_channels=4, spatial=(5, 80), kernel=(3, 27),
         stride=(1, 2), padding=(1, 13), dilation=(2, 3), groups=2, channels_last=True),
    Case(n=3, transposed=False, batch=2, in_channels=2, out_channels=2, spatial=(3, 4, 70), kernel=(2, 2, 28),
         padding=(0, 1, 27), dilation=(1, 1, 2), groups=2),
    # A stride along the leading axis: the input rows each leading tap reads are strided (mutation testing found
    # that dropping those strides changed nothing the other cases could see).
    Case(n=2, transposed=False, batch=2, in_channels=2, out_channels=2, spatial=(7, 60), kernel=(3, 29),
         stride=(2, 1), padding=(1, 28), dilation=(1, 2), groups=2),
], ids=_case_id)
def test_taps_banded_weight_gradient_with_dilation_along_the_row(case):
    """The banded weight gradient (kernel rows of BANDED_MIN_ROW or more taps) with the row's own dilation and
    stride varied, against torch."""
    from jconv.lowerings import taps

    spec = build_spec(case, "taps", *map(jnp.asarray, case.arrays()[:2]), None)
    assert taps.weight_grad_form(spec) == "banded" and spec.dilation[-1] > 1
    assert_parity(case, "taps")
    assert_parity(case, "auto")


def test_grid_covers_both_backward_forms_of_the_phase_lowering():
    """The grid reaches phase's matmul forward and gradients (both layouts) and its autodiff gradients (the
    conv-per-phase forward of ungrouped convs is forced in test_hypothesis_forced_forms_float64)."""
    from jconv.lowerings import phase

    forms = {(phase.gemm_grads(spec), phase.matmul_forward(spec), spec.channels_last)
             for case in GRID if accepted(case, "phase")
             for spec in [build_spec(case, "phase", *map(jnp.asarray, case.arrays()[:2]), None)]}
    assert {(True, True, False), (True, True, True), (False, False, False)} <= forms, forms


def test_grid_covers_merged_and_single_group_convs():
    """The grid reaches the grouped lowering's merged (block-diagonal) convs and its one-group-per-conv form."""
    from jconv.lowerings import grouped

    merged = {grouped.groups_per_conv(build_spec(case, "grouped", *map(jnp.asarray, case.arrays()[:2]), None))
              for case in GRID if accepted(case, "grouped")}
    assert 1 in merged and max(merged) > 1, merged


def test_merge_rule_leaves_large_and_over_padded_groups_one_per_conv():
    """Merging multiplies the weight gradient's work by the groups merged: only tiny groups gain, and a conv padded
    by more than half its window slows XLA's weight-gradient conv (docs/lowerings.md, "grouped")."""
    from jconv.lowerings import grouped

    def rule(x, w, **kw):
        return grouped.groups_per_conv(jconv.conv2d.build_spec(jnp.zeros(x), jnp.zeros(w), None, **kw))

    assert rule((1, 32, 7, 7), (32, 4, 3, 3), groups=8, padding=1) == 8
    assert rule((1, 32, 7, 7), (32, 4, 3, 3), groups=8, padding=2) == 1  # over-padded
    assert rule((8, 32, 56, 56), (32, 4, 3, 3), groups=8, padding=1) == 1  # large
    large = jconv.conv2d.build_spec(jnp.zeros((8, 32, 56, 56)), jnp.zeros((32, 4, 3, 3)), None, groups=8, padding=1)
    assert "merge-8" in grouped.variants(large)  # autotune can still merge where it measures faster


@st.composite
def cases(draw, transposed=None, groups=None, depthwise=None, pointwise=False, dilated=False, ndims=(1, 2, 3),
          channels_last=None, unit_stride=False):
    """Random valid configurations; the keyword arguments bias them towards what one lowering accepts."""
    n = draw(st.sampled_from(ndims))
    transposed = draw(st.booleans()) if transposed is None else transposed
    groups = draw(st.sampled_from((1, 1, 2, 3))) if groups is None else draw(groups)
    depthwise = draw(st.booleans()) if depthwise is None else depthwise
    cin_g = 1 if depthwise else draw(st.integers(1, 3))
    cout_g = draw(st.integers(1, 3))
    kmax = 1 if pointwise else 3 if n == 3 else 5
    kernel = tuple(draw(st.integers(1, kmax)) for _ in range(n))
    stride = tuple(draw(st.integers(1, 1 if unit_stride else 3)) for _ in range(n))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(n))
    if dilated:
        dilation = (draw(st.integers(2, 4)),) + dilation[1:]
        stride = tuple(1 if d > 1 else s for d, s in zip(dilation, stride))
    common = dict(n=n, transposed=transposed, batch=draw(st.integers(1, 2)), in_channels=groups * cin_g,
                  out_channels=groups * cout_g, kernel=kernel, stride=stride, dilation=dilation, groups=groups,
                  bias=draw(st.booleans()),
                  channels_last=draw(st.booleans()) if channels_last is None else channels_last)
    extent = 6 if n == 3 else 12
    if transposed:
        spatial = tuple(draw(st.integers(1, extent // 2)) for _ in range(n))
        output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
        # Keep every output length >= 1: (i - 1) * s - 2p + d * (k - 1) + op + 1 > 0.
        padding = tuple(draw(st.integers(0, ((i - 1) * s + d * (k - 1) + op) // 2))
                        for i, s, d, k, op in zip(spatial, stride, dilation, kernel, output_padding))
        return Case(**common, spatial=spatial, padding=padding, output_padding=output_padding)
    mode = draw(st.sampled_from(("zeros", "zeros", "reflect", "replicate", "circular")))
    pad_kind = draw(st.sampled_from(("int", "tuple", "same", "valid")))
    if pad_kind == "same":
        common["stride"] = stride = (1,) * n
        padding = "same"
    elif pad_kind == "valid":
        padding = "valid"
    elif pad_kind == "int":
        padding = draw(st.integers(0, 3))
    else:
        padding = tuple(draw(st.integers(0, 3)) for _ in range(n))
    pads = [max(lo_hi) for lo_hi in resolve_pads(Case(**common, spatial=(1,) * n, padding=padding))]
    spatial = []
    for k, d, p in zip(kernel, dilation, pads):
        low = max(1, d * (k - 1) + 1 - 2 * p, p + 1 if mode == "reflect" else 1, p if mode == "circular" else 1)
        spatial.append(draw(st.integers(low, max(low, extent))))
    return Case(**common, spatial=tuple(spatial), padding=padding, padding_mode=mode)


# Strategy bias per lowering, so that each one sees many configurations it accepts.
BIAS = {
    "taps": dict(transposed=False, groups=st.integers(2, 4), depthwise=True),
    "grouped": dict(transposed=False, groups=st.integers(2, 3), depthwise=False),
    "matmul": dict(transposed=False, groups=st.just(1), pointwise=True),
    "dilated": dict(transposed=False, dilated=True),
    "phase": dict(transposed=True),
    "planes": dict(transposed=False, ndims=(3,)),
    "im2col": dict(transposed=False, groups=st.just(1), unit_stride=True),
    "pallas": dict(transposed=False, groups=st.integers(2, 4), depthwise=True),
}


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_hypothesis_parity_float64(lowering):
    @given(case=cases(**BIAS.get(lowering, {})), seed=st.integers(0, 2**16))
    def check(case, seed):
        assume(accepted(case, lowering))
        assert_parity(case, lowering, seed=seed)

    check()


# Every named variant of a lowering (jconv.explain lists them), forced with lowering="<name>:<variant>" where
# the lowering's variants(spec) lists it, also where its rule would not take it (which runs autodiff through it):
# forward and gradients against torch. im2col's chunk-256B cuts even these small shapes into many chunks, a
# ragged last one, with taps reaching across chunk edges.
VARIANTS = {
    "taps:summed": BIAS["taps"], "taps:summed-loop": dict(BIAS["taps"], unit_stride=True),
    "taps:banded": dict(BIAS["taps"], ndims=(2, 3)), "taps:per-tap-loop": BIAS["taps"],
    "phase:matmul-forward": dict(transposed=True, groups=st.just(1)),
    "phase:gemm-grads": dict(transposed=True, groups=st.just(1)), "phase:autodiff": dict(transposed=True),
    "matmul:per-sample": dict(BIAS["matmul"], channels_last=False),
    "matmul:one-matmul": dict(BIAS["matmul"], channels_last=False),
    "grouped:merge-1": BIAS["grouped"], "grouped:merge-2": dict(BIAS["grouped"], groups=st.sampled_from([2, 4])),
    "im2col:chunk-256B": BIAS["im2col"],
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_hypothesis_variants_float64(variant):
    @settings(max_examples=8)
    @given(case=cases(**VARIANTS[variant]), seed=st.integers(0, 2**16))
    def check(case, seed):
        assume(accepted(case, variant))
        assert_parity(case, variant, seed=seed)

    check()


# Complex convolutions, as torch.nn.functional takes them: forward and gradients against torch in complex128, for
# every lowering that accepts complex arrays (all but pallas, whose refusal is tested below). Fewer examples than
# the float64 parity above: the lowerings have no complex-specific code, so these guard that the dtype passes
# through each of them, that no derivative rule drops a conjugate, and the gradient convention
# (parity.torch_and_jconv).
@pytest.mark.parametrize("lowering", [name for name in LOWERINGS if name != "pallas"])  # refuses: test below
def test_hypothesis_complex_parity(lowering):
    @settings(max_examples=8)
    @given(case=cases(**BIAS.get(lowering, {})), seed=st.integers(0, 2**16))
    def check(case, seed):
        assume(accepted(case, lowering, jnp.complex128))
        assert_parity(case, lowering, seed=seed, dtype=jnp.complex128)

    check()


def test_pallas_refuses_complex_and_auto_takes_another_lowering():
    x, w = jnp.zeros((2, 4, 8, 8), jnp.complex64), jnp.zeros((4, 1, 3, 3), jnp.complex64)
    with pytest.raises(ValueError, match="lowering='pallas' cannot handle this convolution: the kernels take real "
                                         "dtypes, but got complex64"):
        jconv.conv2d(x, w, groups=4, lowering="pallas")
    assert jconv.explain(jconv.conv2d, x, w, groups=4).lowering != "pallas"


@pytest.mark.parametrize("case", [c for c in GRID if c.n == 2][::4], ids=_case_id)
def test_complex64_matches_torch(case):
    """complex64 through auto against torch's complex128, at float32's precision."""
    expected, got = torch_and_jconv(case, "auto", dtype=jnp.complex64)
    for name, e, g in zip(("output", "grad_input", "grad_weight", "grad_bias"), expected, got):
        if e is not None:
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * np.abs(e).max(), err_msg=name)


@given(case=cases(), seed=st.integers(0, 100))
def test_numpy_reference_agrees_with_jconv(case, seed):
    """Independent of torch: jconv's forward against explicit tap loops in NumPy."""
    x, w, b = case.arrays(seed)
    ref = (numpy_conv_transpose if case.transposed else numpy_conv)(case, x, w, b)
    y = jconv_forward(case, "auto", x, w, b)
    np.testing.assert_allclose(y, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", [c for c in GRID if c.n == 2][::3], ids=_case_id)
def test_numpy_reference_agrees_with_torch(case):
    """The two oracles agree with each other, so a bug in either shows up."""
    x, w, b = case.arrays()
    ref = (numpy_conv_transpose if case.transposed else numpy_conv)(case, x, w, b)
    np.testing.assert_allclose(torch_forward_and_grads(case, x, w, b, np.zeros(1))[0], ref, rtol=1e-9, atol=1e-9)


@settings(max_examples=30)
@given(st.data())
def test_output_size_in_every_form_matches_torch(data):
    """output_size as spatial sizes or as the full output shape, batched or unbatched, anywhere in its valid range,
    with padding: the output torch's ConvTranspose module gives for it."""
    n = data.draw(st.integers(1, 2), label="n")
    stride = data.draw(st.tuples(*[st.integers(1, 3)] * n), label="stride")
    padding = data.draw(st.tuples(*[st.integers(0, 2)] * n), label="padding")
    dilation = data.draw(st.tuples(*[st.integers(1, 2)] * n), label="dilation")
    kernel = data.draw(st.tuples(*[st.integers(1, 4)] * n), label="kernel")
    spatial = data.draw(st.tuples(*[st.integers(2, 5)] * n), label="spatial")
    lo = [(i - 1) * s - 2 * p + d * (k - 1) + 1 for i, s, p, d, k in zip(spatial, stride, padding, dilation, kernel)]
    assume(min(lo) >= 1)
    sizes = tuple(data.draw(st.integers(m, m + s - 1)) for m, s in zip(lo, stride))
    batched = data.draw(st.booleans(), label="batched")
    full = data.draw(st.booleans(), label="full shape")
    leading = ((2,) if batched else ()) + (3,)
    x = np.random.default_rng(0).standard_normal(leading + spatial)
    module = getattr(torch.nn, f"ConvTranspose{n}d")(3, 4, kernel, stride, padding, dilation=dilation,
                                                      dtype=torch.float64)
    output_size = (leading[:-1] + (4,) + sizes) if full else sizes
    expected = module(torch.from_numpy(x), output_size=list(output_size)).detach().numpy()
    fn = getattr(jconv, f"conv_transpose{n}d")
    w, b = (jnp.asarray(p.detach().numpy()) for p in (module.weight, module.bias))
    got = fn(jnp.asarray(x), w, b, stride, padding, dilation=dilation, output_size=output_size)
    assert got.shape == expected.shape
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10, atol=1e-10)


def test_bad_output_size_element_names_the_op():
    with pytest.raises(TypeError, match=r"^conv_transpose1d: output_size must be an int or a tuple of ints, but got "
                                        r"11\.5"):
        jconv.conv_transpose1d(jnp.ones((1, 2, 5)), jnp.ones((2, 3, 3)), stride=2, output_size=(11.5,))
