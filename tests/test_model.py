"""The network matches Fig. 4: shapes, embedding size, divisibility errors and the head swap."""

import pytest
import torch

from wbclib.model.network import MultiTaskUNet, count_parameters, load_matching


@pytest.mark.parametrize("size,width,depth", [(64, 8, 4), (96, 8, 4), (32, 4, 2), (48, 4, 3), (16, 4, 1)])
def test_output_shapes(size, width, depth):
    model = MultiTaskUNet(num_classes=5, base_width=width, depth=depth).eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        out = model(x)
    assert out.reconstruction.shape == (2, 3, size, size)
    assert out.mask_logits.shape == (2, 5, size, size)
    assert out.class_logits.shape == (2, 5)
    assert out.embedding.shape == (2, width * 2 ** (depth - 1))


def test_rectangular_input():
    model = MultiTaskUNet(num_classes=2, base_width=4, depth=2).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 48))
    assert out.mask_logits.shape == (1, 2, 32, 48)


def test_paper_geometry_at_384():
    """Defaults at 384 px: bottleneck 512 channels at 24x24, classifier branch at 12x12, 512-d embedding."""
    model = MultiTaskUNet().eval()
    seen = {}
    model.bottleneck.register_forward_hook(lambda m, i, o: seen.update(bottleneck=o.shape))
    model.classifier.down.register_forward_hook(lambda m, i, o: seen.update(branch=o.shape))
    with torch.no_grad():
        out = model(torch.rand(1, 3, 384, 384))
    assert seen["bottleneck"] == (1, 512, 24, 24)
    assert seen["branch"] == (1, 512, 12, 12)
    assert out.embedding.shape == (1, 512)
    assert 20e6 < count_parameters(model) < 25e6


def test_upsampling_not_transposed_convolution():
    model = MultiTaskUNet(base_width=4, depth=2)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.Upsample) for m in model.modules())


@pytest.mark.parametrize("size", [100, 90, 40])
def test_indivisible_size_is_a_clear_error(size):
    model = MultiTaskUNet(base_width=4, depth=4)
    with pytest.raises(ValueError, match=rf"{size}x{size}.*not divisible by 32"):
        model(torch.rand(1, 3, size, size))


def test_head_swap_between_class_counts():
    """A 2-class (CAM16) model starts a 5-class (WBC) one: everything but the class-specific layers loads."""
    torch.manual_seed(0)
    cam = MultiTaskUNet(num_classes=2, base_width=4, depth=2)
    wbc = MultiTaskUNet(num_classes=5, base_width=4, depth=2)
    fresh_fc = wbc.classifier.fc.weight.detach().clone()
    report = load_matching(wbc, cam.state_dict())
    skipped = {s.split(" ")[0] for s in report.skipped}
    assert skipped == {"classifier.fc.weight", "classifier.fc.bias", "mask_head.weight", "mask_head.bias"}
    assert "inc.0.weight" in report.loaded and "reconstruction_head.weight" in report.loaded
    assert torch.equal(wbc.inc[0].weight, cam.inc[0].weight)
    assert torch.equal(wbc.classifier.down[1][0].weight, cam.classifier.down[1][0].weight)
    assert torch.equal(wbc.classifier.fc.weight, fresh_fc)  # left as initialised
    assert len(report.loaded) + 4 == len(cam.state_dict())


def test_head_swap_reports_missing_and_unknown_keys():
    model = MultiTaskUNet(num_classes=2, base_width=4, depth=2)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("ups.")}
    state["extra.weight"] = torch.zeros(3)
    report = load_matching(MultiTaskUNet(num_classes=2, base_width=4, depth=2), state)
    assert any(s.startswith("extra.weight (not in model)") for s in report.skipped)
    assert any(s.startswith("ups.0") and "not in checkpoint" in s for s in report.skipped)


def _grads(model, loss_of) -> dict[str, float]:
    model.zero_grad(set_to_none=False)
    out = model(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    loss_of(out).backward()
    return {n: p.grad.abs().sum().item() for n, p in model.named_parameters()}


def test_each_head_trains_the_shared_encoder_and_only_its_own_branch():
    """Fig. 4's wiring: every loss reaches the shared encoder; reconstruction and masks do not reach the
    classifier branch; classification does not reach the decoder or the two image heads."""
    torch.manual_seed(0)
    model = MultiTaskUNet(num_classes=3, base_width=4, depth=2)
    every = _grads(model, lambda o: o.reconstruction.square().mean() + o.mask_logits.square().mean()
                   + o.class_logits.square().mean())
    assert all(g > 0 and g == g for g in every.values()), [n for n, g in every.items() if not g > 0]
    recon = _grads(model, lambda o: o.reconstruction.square().mean())
    cls = _grads(model, lambda o: o.class_logits.square().mean())
    for grads in (recon, cls):
        assert grads["inc.0.weight"] > 0 and grads["downs.0.1.0.weight"] > 0  # the shared encoder
    assert all(g == 0 for n, g in recon.items() if n.startswith(("classifier.", "mask_head.")))
    assert all(g == 0 for n, g in cls.items() if n.startswith(("ups.", "reconstruction_head.", "mask_head.")))
    assert all(g > 0 for n, g in cls.items() if n.startswith("classifier."))
