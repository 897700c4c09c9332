"""Shared fixtures: tiny real data (scikit-learn's digits, embedded in robustlab) and tiny models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


class DigitsNet(nn.Module):
    """A tiny CNN with normalisation inside, BatchNorm and Dropout (to test mode handling)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.3053).reshape(1, 1, 1, 1))
        self.register_buffer("std", torch.tensor(0.3760).reshape(1, 1, 1, 1))
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
            nn.Flatten(), nn.Dropout(0.1), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    for p in model.parameters():
        p.grad = None
    model.eval()
    return model


@pytest.fixture(scope="session")
def digits_train():
    import robustlab as rl

    return rl.data.load("digits", split="train")


@pytest.fixture(scope="session")
def digits_test():
    import robustlab as rl

    return rl.data.load("digits", split="test")


@pytest.fixture(scope="session")
def digits_model(digits_train) -> nn.Module:
    """A small CNN trained on digits (about 97% test accuracy), in eval mode."""
    # Dropout draws from the global generator: seed it for the whole training, so the session's
    # model is the same whichever test asks for it first.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _train(DigitsNet(), digits_train.images, digits_train.labels, epochs=15, seed=0)


@pytest.fixture()
def model(digits_model) -> nn.Module:
    """The session's digits model, reset to eval mode for each test."""
    return digits_model.eval()


@pytest.fixture(scope="session")
def batch(digits_test, digits_model):
    """16 correctly classified test digits (x, y)."""
    with torch.no_grad():
        pred = digits_model(digits_test.images[:64]).argmax(1)
    keep = (pred == digits_test.labels[:64]).nonzero().squeeze(1)[:16]
    return digits_test.images[keep].clone(), digits_test.labels[keep].clone()


# -- headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) for the page tests --

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


@pytest.fixture()
def browser(tmp_path):
    """A headless Chromium (skipped where Debian's chromium and chromium-driver are not installed)."""
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=opts)
    yield driver
    driver.quit()
