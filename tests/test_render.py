"""Cameras, the volume renderer and the voxel field, checked against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from scoredistill.scene.cameras import (
    Camera,
    camera_rays,
    circular_distance,
    pixel_rays,
    project,
    ring_cameras,
    sample_cameras,
)
from scoredistill.scene.field3d import VoxelField, field_grid
from scoredistill.scene.render import ray_box, render, render_batch, render_rays

pytestmark = pytest.mark.usefixtures("one_thread")


def _constant_field(g: int, sigma: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    field = torch.full((4, g, g, g), 0.5, dtype=dtype)
    field[0] = sigma
    return field


# ---------------------------------------------------------------------- cameras
def test_camera_positions_follow_the_documented_convention():
    cases = {0.0: (0, 0, 1), 90.0: (1, 0, 0), 180.0: (0, 0, -1), 270.0: (-1, 0, 0)}
    for az, xyz in cases.items():
        pos = Camera(az, 0.0, 2.0).position(torch.float64)
        torch.testing.assert_close(pos, 2.0 * torch.tensor(xyz, dtype=torch.float64))
    above = Camera(0.0, 30.0, 1.0).position(torch.float64)
    assert above[1] == pytest.approx(0.5)  # sin 30 deg: positive elevation is above (y up)


def test_image_orientation_right_is_right_and_up_is_up():
    cam, h, w = Camera(0.0, 0.0), 32, 32  # looking at the front, down -z
    pts = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]], dtype=torch.float64)
    uv, depth = project(pts, cam, h, w)
    assert uv[0, 0] > w / 2 and uv[0, 1] == pytest.approx(h / 2)  # +x appears on the right
    assert uv[1, 1] < h / 2 and uv[1, 0] == pytest.approx(w / 2)  # +y appears at the top
    assert bool((depth > 0).all())


def test_projection_round_trips_through_pixel_rays():
    rng = torch.Generator().manual_seed(0)
    g = 8
    c = -1.0 + (2.0 * torch.arange(g, dtype=torch.float64) + 1.0) / g
    pts = torch.cartesian_prod(c, c, c)  # every voxel centre, (x, y, z)
    for cam in sample_cameras(5, rng, elevation_range=(-60.0, 60.0), radius_range=(2.5, 4.0)):
        uv, _ = project(pts, cam, 24, 32)
        origins, dirs = pixel_rays(cam, uv, 24, 32, dtype=torch.float64)
        rel = pts - origins
        miss = (rel - (rel * dirs).sum(-1, keepdim=True) * dirs).norm(dim=-1)
        assert float(miss.max()) < 1e-12  # float64 rounding over O(1) coordinates


def test_pixel_centre_rays_match_pixel_rays_and_are_unit():
    cams = ring_cameras(3, elevation=20.0)
    origins, dirs = camera_rays(cams, 4, 6, dtype=torch.float64)
    assert origins.shape == dirs.shape == (3, 4, 6, 3)
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(3, 4, 6, dtype=torch.float64))
    _, d = pixel_rays(cams[1], torch.tensor([[2.5, 1.5]]), 4, 6, dtype=torch.float64)
    torch.testing.assert_close(d[0], dirs[1, 1, 2])  # (u, v) = (col + .5, row + .5)


def test_a_single_voxel_renders_where_it_projects():
    """End to end: grid indexing [c, k, j, i] <-> world (x_i, y_j, z_k) <-> image (u, v)."""
    g, size = 8, 48
    i, j, k = 1, 5, 2  # asymmetric, so any axis flip moves the blob far away
    field = torch.zeros(4, g, g, g, dtype=torch.float64)
    field[0, k, j, i] = 50.0
    centre = torch.tensor([[-1.0 + (2 * n + 1) / g for n in (i, j, k)]], dtype=torch.float64)
    for cam in [Camera(30.0, 20.0), Camera(200.0, -25.0), Camera(300.0, 50.0)]:
        origins, dirs = camera_rays([cam], size, size, dtype=torch.float64)
        _, opacity = render_rays(field, origins.reshape(-1, 3), dirs.reshape(-1, 3), 96)
        row, col = divmod(int(opacity.argmax()), size)
        uv = project(centre, cam, size, size)[0][0]
        # the most opaque pixel is the one whose centre is nearest the projection (+-1 pixel:
        # the blob's peak is sharp but the sampling along the ray is discrete)
        assert abs(col + 0.5 - float(uv[0])) <= 1.0 and abs(row + 0.5 - float(uv[1])) <= 1.0


def test_sample_cameras_is_deterministic_and_in_range():
    a = sample_cameras(20, torch.Generator().manual_seed(3), (-30.0, 30.0), (0.0, 10.0), (2.0, 3.0))
    b = sample_cameras(20, torch.Generator().manual_seed(3), (-30.0, 30.0), (0.0, 10.0), (2.0, 3.0))
    assert a == b
    assert all(-30 <= c.azimuth <= 30 and 0 <= c.elevation <= 10 and 2 <= c.radius <= 3 for c in a)
    with pytest.raises(ValueError, match="elevation"):
        Camera(0.0, 90.0)


def test_circular_distance():
    d = circular_distance(torch.tensor([350.0, 10.0, -90.0, 180.0]), torch.tensor(0.0))
    torch.testing.assert_close(d, torch.tensor([10.0, 10.0, 90.0, 180.0]))


# ---------------------------------------------------------------------- transmittance
def test_constant_density_gives_exact_transmittance():
    """A box of constant density: T = exp(-sigma L) exactly (the integrand is constant)."""
    sigma, size = 0.7, 16
    cam = Camera(0.0, 0.0, 3.0)
    origins, dirs = camera_rays([cam], size, size, dtype=torch.float64)
    o, d = origins[0, 6:10, 6:10].reshape(-1, 3), dirs[0, 6:10, 6:10].reshape(-1, 3)
    # central rays enter through the face z = +1 and leave through z = -1
    chord = 2.0 / d[:, 2].abs()
    _, opacity = render_rays(_constant_field(4, sigma), o, d, n_samples=7)
    torch.testing.assert_close(1 - opacity, torch.exp(-sigma * chord), rtol=1e-12, atol=0)


@pytest.mark.parametrize("tilt", [0.0, 0.3])
def test_slab_transmittance_up_to_quadrature_error(tilt: float):
    """Voxels k in [a, b) at density sigma: the trilinear profile integrates to sigma (b-a) 2/G
    across the slab; along a ray with direction cosine |d_z| the optical depth is that / |d_z|.
    The midpoint rule is exact on linear pieces; each of the 4 kinks (slope change sigma G / 2)
    costs at most slope * delta^2 / 8, so |error in tau| <= sigma G delta^2 / 4."""
    g, a, b, sigma, n = 16, 5, 9, 3.0, 200
    field = torch.zeros(4, g, g, g, dtype=torch.float64)
    field[0, a:b] = sigma
    d = torch.tensor([[tilt, 0.1, -1.0]], dtype=torch.float64)
    d = d / d.norm()
    o = torch.tensor([[0.05, -0.1, 0.0]], dtype=torch.float64) - 3.0 * d
    _, opacity = render_rays(field, o, d, n_samples=n)
    near, far = ray_box(o, d)
    tau_exact = sigma * (b - a) * (2.0 / g) / float(d[0, 2].abs())
    delta = float(far - near) / n
    bound = sigma * g * delta**2 / 4
    tau = -math.log(1 - float(opacity))
    assert abs(tau - tau_exact) <= bound + 1e-12
    assert bound < 1e-2 * tau_exact  # the check is not vacuous


def test_background_shows_through_an_empty_field():
    field = torch.zeros(4, 4, 4, 4)
    img = render(field, Camera(40.0, 10.0), 5, 7, 8, background=(0.1, 0.2, 0.3))
    assert img.shape == (3, 5, 7)
    torch.testing.assert_close(img, torch.tensor([0.1, 0.2, 0.3])[:, None, None].expand(3, 5, 7))


# ---------------------------------------------------------------------- gradients and batching
def test_render_gradients_match_finite_differences():
    rng = torch.Generator().manual_seed(0)
    field = torch.rand(4, 4, 4, 4, generator=rng, dtype=torch.float64)
    field[0] *= 3.0
    field.requires_grad_(True)
    cams = [Camera(25.0, 15.0, 2.5), Camera(160.0, -20.0, 2.5)]

    def fn(f: torch.Tensor) -> torch.Tensor:
        stratified = torch.Generator().manual_seed(1)  # same jitter on every call
        return render_batch(f, cams, 3, 3, 12, stratified, background=0.3)

    assert torch.autograd.gradcheck(fn, (field,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_batch_equals_single_renders():
    field = torch.rand(4, 6, 6, 6, generator=torch.Generator().manual_seed(2))
    cams = ring_cameras(3, 10.0)
    batch = render_batch(field, cams, 8, 8, 16)
    singles = torch.stack([render(field, c, 8, 8, 16) for c in cams])
    torch.testing.assert_close(batch, singles)


def test_stratified_sampling_is_deterministic_under_rng():
    field = torch.rand(4, 6, 6, 6, generator=torch.Generator().manual_seed(2))
    cams = ring_cameras(2)
    a = render_batch(field, cams, 8, 8, 16, torch.Generator().manual_seed(5))
    b = render_batch(field, cams, 8, 8, 16, torch.Generator().manual_seed(5))
    c = render_batch(field, cams, 8, 8, 16, torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_field_shape_is_checked():
    with pytest.raises(ValueError, match="4, G, G, G"):
        render(torch.zeros(3, 4, 4, 4), Camera(0.0), 4, 4)


# ---------------------------------------------------------------------- the voxel field
def test_voxel_field_forward_shape_range_and_gradients():
    field = VoxelField(8, image_size=12, n_samples=16, rng=torch.Generator().manual_seed(0))
    x = field(ring_cameras(3))
    assert x.shape == (3, 3, 12, 12)
    assert float(x.detach().min()) >= -1.0 and float(x.detach().max()) <= 1.0
    x.square().sum().backward()
    assert field.density_raw.grad is not None and field.colour_raw.grad is not None
    assert float(field.density_raw.grad.abs().sum()) > 0


@pytest.mark.parametrize("activation", ["softplus", "exp"])
def test_from_grid_reproduces_the_grid(activation: str):
    target = torch.rand(4, 6, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target[0] *= 30.0
    f = VoxelField.from_grid(target, density_activation=activation)
    grid = f.grid().double()
    torch.testing.assert_close(grid[0], target[0], rtol=1e-5, atol=1e-6)  # float32 storage
    torch.testing.assert_close(grid[1:], target[1:].clamp(1e-4, 1 - 1e-4), rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in f.parameters())
    torch.testing.assert_close(field_grid(f), f.grid())


def test_voxel_field_init_and_errors():
    rng_a, rng_b = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    a, b = VoxelField(4, rng=rng_a), VoxelField(4, rng=rng_b)
    torch.testing.assert_close(a.grid(), b.grid())
    const = VoxelField(4, init="constant", init_density=0.2)
    torch.testing.assert_close(const.grid()[0], torch.full((4, 4, 4), 0.2))
    torch.testing.assert_close(const.grid()[1:], torch.full((3, 4, 4, 4), 0.5))
    with pytest.raises(ValueError, match="density_activation"):
        VoxelField(4, density_activation="relu")
    with pytest.raises(ValueError, match="init"):
        VoxelField(4, init="zeros")


def test_total_variation_closed_forms_and_its_descent():
    const = VoxelField(5, init="constant", init_density=0.7)
    assert float(const.total_variation().detach()) == 0.0
    c = 0.1
    ramp = torch.zeros(4, 5, 5, 5, dtype=torch.float64)
    ramp[0] = 2.0  # constant density: its opacity does not vary
    ramp[1:] = 0.3 + c * torch.arange(5, dtype=torch.float64).reshape(1, 5, 1, 1)
    f = VoxelField.from_grid(ramp)
    # 3 colour channels of 4 step by c along the first axis; the others do not vary: 3 c^2 / 4
    torch.testing.assert_close(float(f.total_variation()), 0.75 * c**2, rtol=1e-5, atol=0)
    density = torch.zeros(4, 2, 2, 2, dtype=torch.float64)
    density[1:] = 0.5
    density[0, 1] = 3.0  # one opacity step along axis 1: (1 - exp(-3 * voxel_size))^2 / 4
    g = VoxelField.from_grid(density)
    step = 1 - math.exp(-3.0 * g.voxel_size)
    torch.testing.assert_close(float(g.total_variation()), step**2 / 4, rtol=1e-5, atol=0)
    field = VoxelField(6, rng=torch.Generator().manual_seed(0))  # noise: a rough grid
    opt, before = torch.optim.Adam(field.parameters(), lr=0.05), float(field.total_variation())
    for _ in range(20):
        opt.zero_grad()
        field.total_variation().backward()
        opt.step()
    assert float(field.total_variation()) < 0.2 * before
