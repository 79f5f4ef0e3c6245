"""Non-finite values: every lowering puts NaN and +/-inf where torch or lax puts them, and where the two agree,
exactly there (forward and both gradients). docs/semantics.md, "Non-finite values", says why either oracle.

The two oracles differ in two places, both theirs: torch multiplies the weights by its zero padding (inf * 0 =
NaN) where lax skips the padding, and XLA:CPU's own depthwise convolution (lax, and jconv's xla lowering) spreads
a NaN input to every output channel. A jconv lowering may follow either; it may never add a NaN or inf that
neither has.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import jconv
from parity import accepted, jconv_forward_and_grads
from references import Case, torch_forward_and_grads
from test_parity import BIAS, cases

# xla is lax itself, the second oracle.
LOWERINGS = ("auto",) + tuple(name for name in jconv.LOWERING_NAMES if name != "xla")

VALUES = (np.nan, np.inf, -np.inf)
NAMES = ("output", "grad_input", "grad_weight", "grad_bias")


def _codes(a: np.ndarray) -> np.ndarray:
    """0 finite, 1 NaN, 2 +inf, 3 -inf."""
    return np.select([np.isnan(a), np.isposinf(a), np.isneginf(a)], [1, 2, 3], 0)


def check_nonfinite_parity(case: Case, lowering: str, x, w, b, seed: int = 0):
    """Forward and gradients of `lowering` against torch (float64) and lax (jconv's xla lowering)."""
    y_torch, *_ = torch_forward_and_grads(case, x, w, b, np.zeros(1))
    cotangent = np.random.default_rng(seed).standard_normal(y_torch.shape)
    torch_results = torch_forward_and_grads(case, x, w, b, cotangent)
    lax_results = jconv_forward_and_grads(case, "xla", x, w, b, cotangent)
    got = jconv_forward_and_grads(case, lowering, x, w, b, cotangent)
    for name, t, l, g in zip(NAMES, torch_results, lax_results, got):
        if t is None:
            continue
        ct, cl, cg = _codes(t), _codes(l), _codes(g)
        wrong = (cg != ct) & (cg != cl)
        assert not wrong.any(), (
            f"{name} ({lowering}): non-finite pattern differs from both torch and lax at {np.argwhere(wrong)[:5]} "
            f"(got codes {cg[wrong][:5]}, torch {ct[wrong][:5]}, lax {cl[wrong][:5]}; 1 NaN, 2 +inf, 3 -inf) for "
            f"{case}")
        finite = (cg == 0) & (ct == 0)
        np.testing.assert_allclose(g[finite], t[finite], rtol=1e-9, atol=1e-9,
                                   err_msg=f"{name} ({lowering}): finite values differ from torch for {case}")


@pytest.mark.parametrize("operand", ("input", "weight"))
@pytest.mark.parametrize("lowering", LOWERINGS)
def test_hypothesis_nonfinite_parity(lowering, operand):
    @settings(max_examples=6, deadline=None)
    @given(case=cases(**BIAS.get(lowering, {})), seed=st.integers(0, 2**16), value=st.sampled_from(VALUES),
           data=st.data())
    def check(case, seed, value, data):
        assume(accepted(case, lowering))
        x, w, b = case.arrays(seed)
        target = x if operand == "input" else w
        # Half the draws take the last position: an edge that some taps never read.
        last = data.draw(st.booleans())
        index = tuple(s - 1 if last else data.draw(st.integers(0, s - 1)) for s in target.shape)
        target[index] = value
        check_nonfinite_parity(case, lowering, x, w, b, seed)

    check()


def _conv(n=2, **kw) -> Case:
    return Case(**{**dict(n=n, transposed=False, batch=2, spatial=(7, 6)[:n] if n <= 2 else (4, 5, 6)), **kw})


# Each failed before the fix it names (found by a probe of the parity grid with NaN and inf values).
REGRESSIONS = [
    # grouped: the merged groups' block-diagonal kernel sent a NaN input to every group's outputs (the issue's
    # example: groups=4, a NaN in input channel 0, all 8 outputs NaN; torch and lax: channels 0-1).
    ("grouped", _conv(in_channels=8, out_channels=8, kernel=(3, 3), groups=4, padding=1), "input", np.nan, (0, 0, 3, 3)),
    ("auto", _conv(in_channels=8, out_channels=8, kernel=(3, 3), groups=4, padding=1), "input", np.inf, (1, 2, 0, 5)),
    # ... and an inf weight became NaN through the product with the identity.
    ("grouped", _conv(in_channels=8, out_channels=8, kernel=(3, 3), groups=4, padding=1), "weight", np.inf, (0, 0, 1, 1)),
    # taps: the weight gradient multiplied the last input position (never read by tap (0, 0)) by zero padding.
    ("taps", _conv(in_channels=3, out_channels=3, kernel=(3, 3), groups=3, padding=1), "input", np.nan, (1, 2, 6, 5)),
    # taps, the weight gradient from the padded output gradient (a batch of 8: one row block), dilated: where a tap
    # first reads (tap * dilation - padding) sets which positions it masks; scaled wrongly, the NaN at (1, 1),
    # which tap (2, 2) never reads, met the output gradient's padding (found by mutation testing).
    ("taps", _conv(batch=8, in_channels=3, out_channels=3, kernel=(3, 3), groups=3, dilation=(2, 2)), "input",
     np.nan, (0, 1, 1, 1)),
    # taps, the banded weight gradient (3x29 kernel; 40 outputs in tiles of 29): the last tile's positions past the
    # output must stay out of the products, or the NaN in the last column meets the output gradient's zeros
    # (mutation testing: `< o` -> `<= o` survived).
    ("taps", _conv(batch=1, in_channels=2, out_channels=2, groups=2, kernel=(3, 29), spatial=(5, 40),
                   padding=(1, 14)), "input", np.nan, (0, 0, 2, 39)),
    # taps: the input gradient multiplied an inf weight by the dilated output gradient's padding.
    ("taps", _conv(in_channels=3, out_channels=6, kernel=(3, 3), groups=3, padding=1), "weight", np.inf, (4, 0, 2, 2)),
    # phase: a sub-convolution padded its window, and the NaN weight met the padding (found by the hypothesis test).
    ("phase", Case(n=1, transposed=True, batch=1, in_channels=2, out_channels=2, spatial=(1,), kernel=(2,),
                   groups=2, bias=False), "weight", np.nan, (1, 0, 1)),
    # auto (phase, grouped 3-D): the same through a grouped sub-convolution's padded window.
    ("auto", Case(n=3, transposed=True, batch=1, in_channels=3, out_channels=3, spatial=(1, 2, 1), kernel=(2, 3, 2),
                  stride=(2, 1, 1), padding=(0, 3, 0), dilation=(1, 3, 1), groups=3, output_padding=(1, 2, 0),
                  bias=False), "weight", -np.inf, (2, 0, 1, 2, 1)),
    # dilated: the inner conv's zero extension met a NaN input.
    ("dilated", _conv(in_channels=2, out_channels=3, kernel=(3, 3), dilation=(2, 2), padding=1), "input", np.nan,
     (1, 1, 6, 5)),
    # pallas: the kernels' padded tiles met an inf weight.
    ("pallas", _conv(in_channels=3, out_channels=3, kernel=(3, 3), groups=3, padding=1), "weight", np.inf,
     (2, 0, 2, 2)),
    # im2col: the chunked weight gradient's rows that wrap past an output row read real inputs.
    ("im2col", _conv(in_channels=3, out_channels=4, kernel=(3, 3), padding=1), "input", -np.inf, (0, 1, 6, 5)),
]


@pytest.mark.parametrize("lowering,case,operand,value,index", REGRESSIONS,
                         ids=[f"{r[0]}-{r[2]}-{r[3]}-{i}" for i, r in enumerate(REGRESSIONS)])
def test_nonfinite_regressions(lowering, case, operand, value, index):
    x, w, b = case.arrays(1)
    (x if operand == "input" else w)[index] = value
    check_nonfinite_parity(case, lowering, x, w, b)


def test_grouped_nan_stays_in_its_group():
    """The issue's example, stated directly: a NaN in input channel 0 of a groups=4 conv makes output channels 0
    and 1 NaN and no others, forward and input gradient."""
    case = _conv(in_channels=8, out_channels=8, kernel=(3, 3), groups=4, padding=1, bias=False)
    x, w, _ = case.arrays(0)
    x[0, 0, 3, 3] = np.nan
    for lowering in ("auto", "grouped"):
        y, gx, gw, _ = jconv_forward_and_grads(case, lowering, x, w, None, np.ones((2, 8, 7, 6)))
        assert sorted(set(np.argwhere(np.isnan(y))[:, 1])) == [0, 1], lowering
        assert not np.isnan(gx).any(), lowering  # the cotangent is finite: no gradient w.r.t. x meets the NaN
        assert sorted(set(np.argwhere(np.isnan(gw))[:, 0])) == [0, 1], lowering
