"""Training: checkpoint schedule, determinism for a seed, and that the proxy learns a separable task."""

from __future__ import annotations

import torch

from auditor.models.architectures import Conv4, SmallResNet, choose_architecture
from auditor.models.train import TrainSettings, checkpoint_epochs, predict, train_model


def _toy(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes: bright top half vs bright bottom half (8x8, one channel)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randint(0, 60, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    x[y == 0, :, :4] += 180
    x[y == 1, :, 4:] += 180
    return x, y


def test_checkpoint_epochs_are_even_and_end_at_last_epoch() -> None:
    assert checkpoint_epochs(20, 5) == [4, 8, 12, 16, 20]
    assert checkpoint_epochs(3, 5) == [1, 2, 3]
    assert checkpoint_epochs(10, 1) == [10]


def test_architecture_choice_by_native_size() -> None:
    assert choose_architecture(28, 3) == "conv4"
    assert choose_architecture(105, 1) == "conv4"  # Omniglot: grey-scale characters
    assert choose_architecture(84, 3) == "resnet"  # Mini-ImageNet: natural colour images


def test_training_is_deterministic_and_learns() -> None:
    x, y = _toy()
    settings = TrainSettings(epochs=6, batch_size=16, learning_rate=0.05, checkpoints=3, seed=7)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = Conv4(1, 2, image_size=8, width=16)
        runs.append(train_model(model, x, y, settings, progress=False))
    assert [c.epoch for c in runs[0].checkpoints] == [2, 4, 6]
    for a, b in zip(runs[0].checkpoints, runs[1].checkpoints, strict=True):
        assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    model = Conv4(1, 2, image_size=8, width=16)
    model.load_state_dict(runs[0].checkpoints[-1].state)
    probs, embeddings = predict(model, x)
    assert (probs.argmax(1) == y.numpy()).mean() > 0.9
    assert embeddings.shape == (len(x), 16)


def test_small_resnet_forward_shapes() -> None:
    model = SmallResNet(3, 5, image_size=32)
    out = model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 5)
    assert model.embed(torch.zeros(2, 3, 32, 32)).shape == (2, model.embedding_dim)
