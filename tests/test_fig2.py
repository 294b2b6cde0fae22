"""Figure 2 (tensam.reports.fig2): direction normalisation, 1-D profiles and the R2-drop
radius."""

import numpy as np
import pytest
import torch
from toys import covid

from tensam.cores import core_groups
from tensam.reports import fig2

TS = np.linspace(-0.2, 0.2, 9)


def rescaled_copy(task, model, scales):
    """The same Tucker map with G_k -> c_k G_k (prod_k c_k = 1)."""
    twin = covid(rank=(3, 2, 3))[1]
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        for core, c in zip(twin.cores(), scales, strict=True):
            core.mul_(c)
    return twin


@pytest.fixture(scope="module")
def setup():
    task, model = covid(rank=(3, 2, 3))
    return task, model, rescaled_copy(task, model, (4.0, 0.5, 0.25, 2.0))


def cores_of(model):
    return [c.detach() for g in core_groups(model) for c in g.cores]


def curve(task, model, kind: str):
    cores = cores_of(model)
    return fig2.profile(task, model, fig2.normalize(fig2.random_direction(cores, 0), cores, kind),
                        TS)


def test_core_normalisation_is_invariant_to_core_rescaling(setup):
    task, model, twin = setup
    torch.testing.assert_close(model(), twin())
    curves = [curve(task, m, "core") for m in (model, twin)]
    for key in ("loss", "r2_heldout", "r2_observed"):
        np.testing.assert_allclose(curves[0][key], curves[1][key], rtol=1e-4)


def test_global_normalisation_sees_the_rescaling(setup):
    task, model, twin = setup
    curves = [curve(task, m, "global") for m in (model, twin)]
    assert curves[0]["loss"][4] == pytest.approx(curves[1]["loss"][4], rel=1e-5)
    assert not np.allclose(curves[0]["loss"], curves[1]["loss"], rtol=1e-3)


def test_profile_restores_the_weights_and_starts_at_w(setup):
    task, model, _ = setup
    before = [c.clone() for c in cores_of(model)]
    direction = fig2.normalize(fig2.random_direction(before, 3), before, "global")
    assert torch.stack(torch._foreach_norm(direction)).norm() == pytest.approx(1.0, rel=1e-5)
    curve = fig2.profile(task, model, direction, TS)
    for a, b in zip(before, cores_of(model), strict=True):
        assert torch.equal(a, b)
    assert curve["loss"][4] == pytest.approx(task.loss(model, None).item(), rel=1e-6)
    assert curve["r2_heldout"][4] == pytest.approx(task.evaluate(model)["r2_heldout"], rel=1e-6)


def test_random_direction_is_the_same_for_every_model(setup):
    _, model, twin = setup
    for a, b in zip(fig2.random_direction(cores_of(model), 5),
                    fig2.random_direction(cores_of(twin), 5), strict=True):
        assert torch.equal(a, b)


def test_drop_radius_on_known_curves():
    ts = np.linspace(-1, 1, 201)
    assert fig2.drop_radius(ts, 1 - ts**2, 0.01) == pytest.approx(0.1, abs=1e-3)
    # asymmetric: the nearer side counts
    assert fig2.drop_radius(ts, 1 - np.where(ts < 0, 4, 1) * ts**2, 0.01) == pytest.approx(
        0.05, abs=1e-3)
    assert fig2.drop_radius(ts, 1 + 0 * ts, 0.01) == float("inf")


def test_normalize_rejects_unknown_kind(setup):
    _, model, _ = setup
    with pytest.raises(ValueError, match="normalization='filter'"):
        fig2.normalize(cores_of(model), cores_of(model), "filter")
